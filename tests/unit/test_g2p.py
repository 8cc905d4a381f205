"""Pronunciations for words cmudict lacks (media/g2p.py): an agent's brand and place
names reach pocketsphinx's dictionary instead of being dropped, and can be heard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.asr import PocketSphinxRecognizer, build_dictionary
from media.g2p import PHONES, guess_pronunciation, letter_to_sound
from media.tts import EspeakSynthesizer

SMALL = {"sky": "S K AY", "lark": "L AA R K", "north": "N AO R TH", "field": "F IY L D"}


@pytest.mark.parametrize(
    ("word", "phones"),
    [
        ("make", "M EY K"),  # a silent final e makes the vowel long
        ("shine", "SH AY N"),
        ("city", "S IH T IY"),  # soft c; a final y after another vowel is IY
        ("sky", "S K AY"),  # ...and AY when it is the only one
        ("knox", "N AA K S"),  # silent k
        ("brightwick", "B R AY T W IH K"),  # igh, ck
        ("gemma", "JH EH M AH"),
        ("zorblatt", "Z AO R B L AE T"),  # doubled consonants said once
    ],
)
def test_letter_to_sound(word: str, phones: str) -> None:
    assert letter_to_sound(word) == phones


def test_compounds_are_read_from_their_dictionary_words() -> None:
    assert guess_pronunciation("Skylark", SMALL.get) == "S K AY L AA R K"
    assert guess_pronunciation("northfield", SMALL.get) == "N AO R TH F IY L D"
    assert guess_pronunciation("skyvanta", SMALL.get) == "S K AY V AE N T AH"  # sky + rules
    assert guess_pronunciation("zorblatt", SMALL.get) == letter_to_sound("zorblatt")
    assert guess_pronunciation("'", SMALL.get) is None


@given(st.from_regex(r"[a-z][a-z']{0,24}", fullmatch=True))
def test_any_word_gets_phones_of_the_acoustic_model(word: str) -> None:
    phones = guess_pronunciation(word, SMALL.get)
    assert phones is None or set(phones.split()) <= PHONES


def test_brand_names_are_in_the_recognisers_dictionary() -> None:
    text = build_dictionary(["Brightwick", "kelvaro", "skyvanta", "Northfield", "dental"])
    heads = {line.split()[0] for line in text.splitlines()}
    assert {"brightwick", "kelvaro", "skyvanta", "northfield", "dental"} <= heads


async def test_a_made_up_brand_name_is_heard() -> None:
    phrases = [
        "thanks for calling brightwick dental", "is brightwick dental open on sunday",
        "book a cleaning at brightwick", "what are your opening hours", "talk to a person",
    ] * 3  # fmt: skip
    recognizer = PocketSphinxRecognizer(phrases, pool_size=1)
    tts = EspeakSynthesizer(rate_wpm=130)
    heard: list[str] = []
    try:
        # eSpeak's audio differs slightly run to run, and the decode with it (measured:
        # the name heard in 10 of 12 runs of this sentence): the best of three.
        for _ in range(3):
            speech = await tts.synthesize("thanks for calling brightwick dental")
            silence = np.zeros(2400, dtype=np.int16)
            heard.append(
                (await recognizer.transcribe(np.concatenate([silence, speech, silence]))).text
            )
            if "brightwick" in heard[-1]:
                break
    finally:
        await tts.aclose()
        await recognizer.aclose()
    assert "brightwick" in heard[-1], heard
