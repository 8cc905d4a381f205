"""Questions callers ask the demo agent in their own words, none of them a phrase of the
agent's file or knowledge base, with the entry that answers each: the voice question set
of the knowledge-base tests (tests/e2e/test_knowledge.py) and its benchmark."""

from __future__ import annotations

PARAPHRASES: list[tuple[str, str]] = [
    ("is it possible to get a pizza brought to my house", "delivery"),
    ("can you drive the food over to my place", "delivery"),
    ("until what time can I come in tonight", "hours"),
    ("are you still open on sunday evening", "hours"),
    ("which street is the shop on", "address"),
    ("how would I get to your restaurant", "address"),
    ("how expensive is a big pizza", "prices"),
    ("what would a medium pizza set me back", "prices"),
    ("can I use my credit card at the door", "payment"),
    ("is cash okay", "payment"),
    ("I never got my food", "order_status"),
    ("my order still has not come", "order_status"),
    ("anything for people who do not eat meat", "vegetarian"),
    ("is there a pizza without cheese for vegans", "vegetarian"),
    ("how can I reach you by email", "contact"),
    ("I would like to make a complaint", "contact"),
    ("can I pick up a pizza myself", "ordering"),
    ("I would like to get a pizza please", "ordering"),
    ("where can I find you online", "contact"),
    ("when do you close on saturday", "hours"),
]
