"""Pronunciations for words the recogniser's dictionary lacks: brand and place names.

An agent's own names ("Brightwick Dental", "Kelvaro Air") are the words callers say
most, and cmudict knows few of them; a word with no pronunciation cannot be heard at
all. :func:`guess_pronunciation` guesses one in ARPAbet (the phone set of
pocketsphinx's en-us model), in two ways, cheapest first:

1. **Compound**: most made-up names are glued from English words (bright + wick,
   sky + vanta); split the word into dictionary words, fewest pieces first, and join
   their pronunciations.
2. **Letter-to-sound rules** for what is left: a small hand-written table of English
   spellings (longest spelling first: ``tch``, ``igh``, ``ee``, ``ck``, ...), a silent
   final ``e`` that lengthens the vowel before it (``-ake``, ``-ine``), ``c``/``g``
   soft before ``e i y``, doubled consonants said once.

A guess is a guess: good enough for the language model to keep the word (so a caller
saying it is not heard as something else), not a linguist's transcription.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["PHONES", "guess_pronunciation", "letter_to_sound"]

# The en-us acoustic model's phones (cmudict's set without stress marks).
_PHONES = "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T"
PHONES = frozenset((_PHONES + " TH UH UW V W Y Z ZH").split())

VOWELS = frozenset("aeiouy")
_LONG = {"a": "EY", "e": "IY", "i": "AY", "o": "OW", "u": "UW", "y": "AY"}
_SHORT = {"a": "AE", "e": "EH", "i": "IH", "o": "AA", "u": "AH", "y": "IH"}

# Spellings read as a unit, longest first. Vowel teams before single vowels; an ``r``
# after a vowel colours it (``ar`` AA R, ``er`` ER).
_UNITS: dict[str, str] = {
    "tch": "CH", "sch": "S K", "igh": "AY", "ough": "AO", "augh": "AO", "eigh": "EY",
    "tion": "SH AH N", "sion": "ZH AH N", "ture": "CH ER", "ph": "F", "sh": "SH",
    "ch": "CH", "th": "TH", "wh": "W", "rh": "R", "ck": "K", "ng": "NG", "qu": "K W", "gh": "",
    "ee": "IY", "ea": "IY", "oo": "UW", "ou": "AW", "ow": "OW", "oi": "OY", "oy": "OY",
    "ai": "EY", "ay": "EY", "au": "AO", "aw": "AO", "ei": "EY", "ey": "EY", "oa": "OW",
    "ue": "UW", "ew": "UW", "ie": "IY", "air": "EH R", "ear": "IH R", "eer": "IH R",
    "oor": "AO R", "our": "AW R", "ar": "AA R", "er": "ER", "ir": "ER", "ur": "ER",
    "or": "AO R", "yr": "ER", "x": "K S", "j": "JH", "v": "V", "z": "Z", "w": "W",
    "f": "F", "h": "HH", "k": "K", "l": "L", "m": "M", "n": "N", "p": "P", "b": "B",
    "d": "D", "t": "T", "r": "R", "s": "S", "q": "K",
}  # fmt: skip
_LONGEST = max(len(unit) for unit in _UNITS)
_MIN_PIECE = 3  # compound pieces: "a", "in", "st" would split anything
# A split's cost: a dictionary word 2, a stretch the rules read 2 + its letters. So
# "sky|vanta" (2 + 7) beats reading "skyvanta" by rules (10), while "z|orb|latt"
# (3 + 2 + 6) loses to reading "zorblatt" whole (10).
_WORD_COST, _STRETCH_COST = 2, 2


def _vowel_at(word: str, i: int) -> bool:
    """Is ``word[i]`` a vowel letter (``y`` only after a consonant or at the end)?"""
    if not 0 <= i < len(word):
        return False
    if word[i] == "y":
        return i > 0 and word[i - 1] not in VOWELS
    return word[i] in VOWELS


def _magic_e(word: str, i: int) -> bool:
    """A vowel made long by a silent final ``e`` one consonant on: ``lake``, ``vine``."""
    final_e = len(word) >= 3 and i == len(word) - 3 and word.endswith("e")
    return final_e and not _vowel_at(word, i + 1)


def letter_to_sound(word: str) -> str:
    """ARPAbet for a lower-case word of letters, by spelling rules alone."""
    phones: list[str] = []
    has_other_vowel = sum(_vowel_at(word, j) for j in range(len(word))) > 1
    i = 0
    while i < len(word):
        c = word[i]
        if i == 0 and word[:2] in ("kn", "wr", "gn"):  # a silent first letter
            i += 1
            continue
        if c == "e" and i == len(word) - 1 and has_other_vowel:  # silent final e
            break
        if c == "a" and i == len(word) - 1 and has_other_vowel:  # Gemma, Lucca: AH
            phones.append("AH")
            break
        if c == "y" and i == 0:
            phones.append("Y")
            i += 1
            continue
        if c == "y" and i == len(word) - 1 and _vowel_at(word, i):  # sky AY, Kelly IY
            phones.append("IY" if has_other_vowel else "AY")
            break
        if i > 0 and c == word[i - 1] and c not in VOWELS:  # doubled consonants: once
            i += 1
            continue
        if c in VOWELS and _vowel_at(word, i) and _magic_e(word, i):
            phones.append(_LONG[c])
            i += 1
            continue
        size = next((n for n in range(min(_LONGEST, len(word) - i), 1, -1)
                     if word[i : i + n] in _UNITS), 1)  # fmt: skip
        if size == 1 and c in "cg":  # soft before e, i, y: city, gem; else cat, gum
            soft = word[i + 1 : i + 2] in ("e", "i", "y")
            phones.append(("S" if c == "c" else "JH") if soft else ("K" if c == "c" else "G"))
        elif word[i : i + size] in _UNITS:
            phones.extend(_UNITS[word[i : i + size]].split())
        elif c in _SHORT:
            phones.append(_SHORT[c])
        i += size  # anything else (an apostrophe, a digit) is not said
    return " ".join(phones)


def guess_pronunciation(word: str, known: Callable[[str], str | None]) -> str | None:
    """ARPAbet for ``word``, from ``known`` (a word's dictionary phones, or None) where it
    is a compound of dictionary words, else by rules; None for a word with no letters
    to say (or letters the English rules do not read)."""
    letters = "".join(c for c in word.lower() if c.isalpha())
    if not letters or not letters.isascii():
        return None
    found = known(letters)
    if found is not None:
        return found
    phones: list[str] = []
    for piece, in_dictionary in _cheapest_split(letters, known):
        phones.append(known(piece) or "" if in_dictionary else letter_to_sound(piece))
    return " ".join(p for p in phones if p) or None


def _cheapest_split(word: str, known: Callable[[str], str | None]) -> list[tuple[str, bool]]:
    """``word`` cut into dictionary words (True) and stretches the rules read (False),
    at the least cost (see :data:`_WORD_COST`)."""

    @functools.cache
    def best(start: int) -> tuple[int, tuple[tuple[str, bool], ...]]:
        if start == len(word):
            return 0, ()
        options = []
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end]
            listed = end - start >= _MIN_PIECE and known(piece) is not None
            rest_cost, rest = best(end)
            cost = _WORD_COST if listed else _STRETCH_COST + len(piece)
            options.append((rest_cost + cost, ((piece, listed), *rest)))
        return min(options, key=lambda option: (option[0], len(option[1])))

    return list(best(0)[1])
