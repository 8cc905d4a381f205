"""Scoring a recogniser's transcript against what the caller said (pure functions).

Both texts are normalised the same way before they are compared: lower case, no
punctuation, hyphens split, numbers spelled out (``30`` -> thirty, ``$20`` -> twenty
dollars, ``3:30`` -> three thirty, ``2nd`` -> second), fillers (um, uh) dropped, and a
few spellings merged (ok -> okay). Word error rate is the word-level edit distance over
the reference's length; a line's *content words* are its words less the function words
(``the``, ``do``, ``you``…), and a line counts as heard when every one of them appears
in the transcript, in any order: what a lookup by meaning needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from media.asr import ONES_WORDS
from media.asr import number_words as spoken_number

__all__ = [
    "content_words",
    "edit_distance",
    "heard_all_content",
    "normalise",
    "number_words",
    "prompt_echo",
    "word_errors",
]

_ONES = ONES_WORDS
_ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip

FILLERS = frozenset({"um", "uh", "er", "erm", "ah", "hmm", "mm"})
SPELLINGS = {"ok": "okay", "alright": "all right"}
_BACKCHANNEL = re.compile(r"\b(?:uh[- ]huh|mm[- ]hmm|mhm)\b")  # one word, not "uh" + "huh"
# Words that carry no content for a lookup by meaning (pronouns, articles, auxiliaries,
# prepositions, discourse words): a line is "heard" when all its *other* words are.
_FUNCTION_TEXT = """
a an the and or but so if of to in on at by for with from as about into over out up
i me my mine we us our you your yours he him his she her it its they them their this that
these those there here what which who whom whose when where why how
is am are was were be been being do does did doing done have has had having
can could will would shall should may might must just like really very well
yeah yes no not hi hey oh okay uhhuh right um uh get got gonna going
i'm i'd i've i'll it's that's what's there's here's where's when's how's who's
we're we've we'll we'd you're you've you'll you'd they're they've let's
"""
FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())

_TOKEN = re.compile(r"\$?\d+(?:[.,:]\d+)*(?:st|nd|rd|th|%)?|[a-z]+(?:['’][a-z]+)*")


def number_words(n: int) -> list[str]:
    """0..999999 as spoken (``1205`` -> one thousand two hundred five); the node's own
    reading below a thousand (media/asr.py), digit by digit from a million."""
    if n < 1000:
        return spoken_number(n)
    if n < 1_000_000:
        rest = n % 1000
        return [*number_words(n // 1000), "thousand"] + (number_words(rest) if rest else [])
    return spoken_number(n)


def _ordinal(words: list[str]) -> list[str]:
    last = words[-1]
    if last in _ORDINALS:
        return [*words[:-1], _ORDINALS[last]]
    if last.endswith("y"):
        return [*words[:-1], last[:-1] + "ieth"]
    return [*words[:-1], last + "th"]


def _spoken_number(token: str) -> list[str]:
    """A numeric token as words: ``$20`` ``3:30`` ``2nd`` ``10%`` ``1,000`` ``4.5``."""
    dollars = token.startswith("$")
    token = token.lstrip("$")
    suffix = ""
    for end in ("st", "nd", "rd", "th", "%"):
        if token.endswith(end):
            token, suffix = token[: -len(end)], end
            break
    if ":" in token:  # a time: 3:30 -> three thirty, 7:00 -> seven, 9:05 -> nine oh five
        hours, _, minutes = token.partition(":")
        words = number_words(int(hours))
        m = int(minutes) if minutes.isdigit() else 0
        if m:
            words += (["oh"] if m < 10 else []) + number_words(m)
        return words
    whole, _, fraction = token.replace(",", "").partition(".")
    if len(whole) > 1 and whole.startswith("0"):  # an account number: digit by digit
        words = [_ONES[int(d)] for d in whole]
    else:
        words = number_words(int(whole))
    if fraction:
        words += ["point", *(_ONES[int(d)] for d in fraction)]
    if suffix in ("st", "nd", "rd", "th"):
        words = _ordinal(words)
    elif suffix == "%":
        words.append("percent")
    if dollars:
        words.append("dollars")
    return words


def normalise(text: str) -> list[str]:
    """The words of ``text`` as both sides are compared (see the module's doc)."""
    text = text.lower().replace("’", "'").replace("&", " and ")
    text = _BACKCHANNEL.sub("uhhuh", text)
    words: list[str] = []
    for token in _TOKEN.findall(text.replace("-", " ")):
        if token[0].isdigit() or token[0] == "$":
            words += _spoken_number(token)
            continue
        token = SPELLINGS.get(token, token)
        if token in FILLERS:
            continue
        words += token.split()
    return words


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (r != h)))  # fmt: skip
        previous = current
    return previous[-1]


def word_errors(reference: str, transcript: str) -> tuple[int, int]:
    """(errors, reference words) after normalising both: WER is their ratio summed
    over lines."""
    ref, hyp = normalise(reference), normalise(transcript)
    return edit_distance(ref, hyp), len(ref)


def content_words(text: str) -> list[str]:
    return [w for w in normalise(text) if w not in FUNCTION_WORDS]


def heard_all_content(reference: str, transcript: str) -> bool:
    """Whether every content word of the reference is in the transcript (a line with
    none, such as "okay", needs the transcript to be non-empty)."""
    wanted = content_words(reference)
    heard = set(normalise(transcript))
    if not wanted:
        return bool(heard) or not normalise(reference)
    return all(w in heard for w in wanted)


def prompt_echo(transcript: str, prompt: str, reference: str = "", n: int = 4) -> bool:
    """Whether the transcript repeats ``n`` or more words in a row of the recogniser's
    prompt that the caller did not say: Whisper continuing its prompt instead of
    transcribing."""
    hyp, said = normalise(transcript), normalise(reference)
    if len(hyp) < n or not prompt:
        return False
    prompt_grams = _grams(normalise(prompt), n)
    said_grams = _grams(said, n)
    return any(g in prompt_grams and g not in said_grams for g in _grams(hyp, n))


def _grams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
