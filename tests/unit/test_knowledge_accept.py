"""Which found entries a question is answered from: margin and agreement, not one
absolute similarity; the question normalised first (switch/knowledge/accept.py)."""

from __future__ import annotations

from switch.knowledge.accept import accepted, normalise_question
from switch.knowledge.entries import Hit, KnowledgeEntry


def hit(entry_id: str, score: float, similarity: float) -> Hit:
    return Hit(KnowledgeEntry(entry_id, entry_id, f"about {entry_id}"), score, similarity)


def test_case_punctuation_and_fillers_do_not_change_the_question() -> None:
    assert normalise_question("Um, what TIME do you… uh, open?") == "what time do you open"
    assert normalise_question("What’s the latest?") == normalise_question("what's the latest")
    assert normalise_question("uh um") == ""


def test_over_the_threshold_is_an_answer_as_before() -> None:
    hits = [hit("hours", 1.0, 0.62), hit("address", 0.9, 0.50), hit("menu", 0.4, 0.30)]
    assert [h.entry.id for h in accepted(hits, 0.45)] == ["hours", "address"]


def test_a_weaker_match_that_clearly_leads_is_an_answer() -> None:
    leading = [hit("prices", 1.0, 0.32), hit("menu", 0.5, 0.20)]
    assert [h.entry.id for h in accepted(leading, 0.45)] == ["prices"]
    assert [h.entry.id for h in accepted(leading[:1], 0.45)] == ["prices"]


def test_a_weak_match_without_a_lead_or_too_weak_is_no_answer() -> None:
    close = [hit("hours", 1.0, 0.36), hit("address", 0.94, 0.37)]  # which? neither
    assert accepted(close, 0.45) == []
    far_but_weak = [hit("contact", 1.0, 0.18), hit("hours", 0.3, 0.1)]  # off-topic
    assert accepted(far_but_weak, 0.45) == []
    assert accepted([], 0.45) == []
