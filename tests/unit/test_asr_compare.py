"""The recogniser benchmark's pure parts: text normalisation, WER, heard lines, prompt
echoes, gain normalisation and Moonshine's token table (loadtest/asr_score.py,
loadtest/asr_engines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.asr_engines import GAIN_TARGET_RMS, normalised_gain, read_moonshine_tokens
from loadtest.asr_score import (
    content_words,
    edit_distance,
    heard_all_content,
    normalise,
    number_words,
    prompt_echo,
    word_errors,
)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Are you open on a Sunday, like around 10?", "are you open on a sunday like around ten"),
        (
            "It's $20 after 3:30, the 2nd time",
            "it's twenty dollars after three thirty the second time",
        ),
        ("7:05 or 9:00", "seven oh five or nine"),
        ("10% off, 1,250 of them", "ten percent off one thousand two hundred fifty of them"),
        ("a two-week trip", "a two week trip"),
        ("um, do you do a crust that's, uh, safe", "do you do a crust that's safe"),
        ("Uh-huh.", "uhhuh"),
        ("OK, alright", "okay all right"),
        ("account 0442", "account zero four four two"),
        ("the 21st", "the twenty first"),
        ("the 40th", "the fortieth"),
    ],
)
def test_normalise_spells_numbers_and_drops_punctuation_and_fillers(text: str, words: str) -> None:
    assert normalise(text) == words.split()


def test_number_words_up_to_a_million() -> None:
    assert number_words(0) == ["zero"]
    assert number_words(115) == ["one", "hundred", "fifteen"]
    assert number_words(2000) == ["two", "thousand"]
    assert number_words(1_000_001) == ["one", "zero", "zero", "zero", "zero", "zero", "one"]


def test_edit_distance_counts_substitutions_insertions_deletions() -> None:
    assert edit_distance([], []) == 0
    assert edit_distance(["a", "b", "c"], []) == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c", "d"], ["a", "x", "c", "d", "e"]) == 2


def test_word_errors_compare_normalised_text() -> None:
    said = "are you open on a Sunday morning, like around ten"
    assert word_errors(said, "Are you open on a Sunday morning like around 10?") == (0, 10)
    assert word_errors(said, "") == (10, 10)
    assert word_errors(
        "hey what time do you guys shut tonight", "Hey, what time do you guys shed tonight?"
    ) == (1, 8)


def test_a_line_is_heard_when_all_its_content_words_are() -> None:
    said = "what's the latest I can come by on a Friday night"
    assert content_words(said) == ["latest", "come", "friday", "night"]
    assert heard_all_content(said, "What's the latest that can come by on a Friday night?")
    assert not heard_all_content(said, "What's the latest I can combat on a Friday night?")
    # A line of function words only ("okay") needs something heard.
    assert heard_all_content("okay", "Okay.")
    assert not heard_all_content("okay", "")


def test_prompt_echo_is_four_prompt_words_in_a_row_not_said() -> None:
    prompt = "We offer interest-free payment plans over 6 or 12 months. Call us any time."
    assert prompt_echo("We offer interest-free payment plans over 6.", prompt, "can I pay in parts")
    # The caller's own words that happen to be in the prompt are no echo.
    said = "do you offer interest free payment plans"
    assert not prompt_echo("Do you offer interest-free payment plans?", prompt, said)
    assert not prompt_echo("payment plans", prompt, "")
    assert not prompt_echo("We offer interest free payment plans", "", "")


def test_gain_normalisation_brings_speech_to_the_target_within_limits() -> None:
    t = np.arange(8000) / 8000
    quiet = (300 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)  # about -43 dBFS: +20 dB cap
    louder = normalised_gain(quiet)
    assert np.sqrt(np.mean(louder.astype(np.float64) ** 2)) == pytest.approx(2121, rel=0.02)
    mid = (2000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    level = np.sqrt(np.mean(normalised_gain(mid).astype(np.float64) ** 2))
    assert level == pytest.approx(GAIN_TARGET_RMS, rel=0.02)
    assert normalised_gain(np.zeros(800, dtype=np.int16)).tolist() == [0] * 800
    assert normalised_gain(np.zeros(10, dtype=np.int16)).size == 10  # under one frame: as is


def test_moonshine_token_table_reads_short_and_long_entries() -> None:
    long = b"x" * 200
    data = (
        bytes([5]) + b"<unk>" + bytes([3]) + b"<s>" + bytes([0x80 | (200 & 0x7F), 200 >> 7]) + long
    )
    assert read_moonshine_tokens(data) == [b"<unk>", b"<s>", long]
