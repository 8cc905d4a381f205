"""When a scripted agent may act on what it heard (pure).

Hanging up, transferring and sending DTMF end or move the call: a mishearing there
costs the caller the call, where a wrong answer costs a turn. So an intent acts at once
only when the agent is *sure* — keypad input, a near-exact match of one of its
patterns, or a close paraphrase of one by meaning — and otherwise, when it is merely
*likely*, the agent asks first ("Do you want me to put you through to a person?") and
acts on a yes. A no, or anything else, is a new turn: the question is simply dropped.

The agent keeps no state between turns: a confirmation pending is read back from the
conversation (its last line is the confirmation question of one intent).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from actors.agent import ChatMessage

SURE_WORDS = 0.85  # lexical score: all of a pattern's words and little else
SURE_MEANING = 0.70  # cosine of a pattern to a run of the words said: a close paraphrase
LIKELY_MEANING = 0.55  # cosine to a pattern: worth asking about

Certainty = Literal["sure", "likely"]

CONFIRM = {
    "transfer": "Do you want me to put you through to a person?",
    "hang_up": "Do you want to end the call?",
    "send_dtmf": "Do you want me to enter that on the keypad?",
}
DECLINED = "Okay. What else can I help you with?"

_WORD = re.compile(r"[a-z']+")
_YES = frozenset({
    "yes", "yeah", "yep", "yup", "sure", "please", "ok", "okay", "correct", "right",
    "absolutely", "definitely", "certainly", "affirmative",
})  # fmt: skip
_NO = frozenset({"no", "nope", "nah", "not", "don't", "dont", "cancel", "wait", "stop", "never"})


def certainty(
    words_score: float, meaning_score: float | None, threshold: float
) -> Certainty | None:
    """How sure an intent is from its best lexical score (``ScriptedAgent.match``) and
    its best cosine to a pattern (None: no embedder); None: not this intent at all."""
    meaning = meaning_score if meaning_score is not None else 0.0
    if words_score >= SURE_WORDS or meaning >= SURE_MEANING:
        return "sure"
    if words_score >= threshold or meaning >= LIKELY_MEANING:
        return "likely"
    return None


def confirmation_of(action: str | None) -> str:
    return CONFIRM.get(action or "", "Do you want me to do that?")


def pending(history: Sequence[ChatMessage], intents: dict[str, str | None]) -> str | None:
    """The intent whose confirmation the agent asked last (``intents``: id → action),
    if its last line was one; the caller's answer is the turn being taken now."""
    if not history or history[-1].role != "assistant":
        return None
    last = history[-1].content.strip()
    asked = [i for i, action in intents.items() if last.endswith(confirmation_of(action))]
    # Two intents with one action (two transfer targets): which was asked is ambiguous
    # from the words alone, so neither is taken on a bare yes.
    return asked[0] if len(asked) == 1 else None


def yes_or_no(text: str) -> bool | None:
    """A short answer to a yes/no question: True, False, or None (something else)."""
    words = _WORD.findall(text.lower())
    if not words or len(words) > 6:
        return None
    no, yes = any(w in _NO for w in words), any(w in _YES for w in words)
    if no != yes:
        return yes
    return None
