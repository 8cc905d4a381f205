"""Which found entries a caller's question is answered from (pure).

A caller's paraphrase of a two-phrasing FAQ often lands on the right entry at a
similarity well under what a near-copy of the question scores, while an off-topic
question can score as high against some entry by chance. One absolute threshold
cannot tell these apart; how far the best entry stands ahead of the others can.
The rule:

- the best entry at or above ``min_similarity`` is an answer (with every other hit
  that clears it, as before);
- under it, the best entry is still the answer when it clearly leads: its similarity
  at least :data:`FLOOR_SHARE` of ``min_similarity`` *and* its fused score (vector and
  keyword ranks agreeing) ahead of the runner-up by :data:`LEAD`;
- anything else is no answer (the agent's fallback).

Questions are normalised first: lower case, no punctuation, no spoken fillers
("um", "uh") — recognisers and typists differ in exactly these, and a capital
letter or a comma must not change which entry wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from switch.knowledge.entries import Hit

FLOOR_SHARE = 2 / 3  # of min_similarity: the least a leading entry may score
LEAD = 0.15  # fused-score lead over the runner-up that makes a weaker match an answer

_FILLERS = frozenset({"um", "umm", "uh", "uhh", "uhm", "er", "erm", "hmm", "mm", "ah"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def normalise_question(text: str) -> str:
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    return " ".join(w for w in words if w not in _FILLERS)


def accepted(hits: Sequence[Hit], min_similarity: float) -> list[Hit]:
    """``hits`` best first (by fused score) → those the caller is answered from."""
    if not hits:
        return []
    top = hits[0]
    if top.similarity >= min_similarity:
        return [h for h in hits if h.similarity >= min_similarity]
    runner_up = hits[1].score if len(hits) > 1 else 0.0
    if top.similarity >= FLOOR_SHARE * min_similarity and top.score - runner_up >= LEAD:
        return [top]
    return []
