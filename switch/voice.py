"""The node's voice: which brain, recogniser and synthesiser its calls share.

Built once per node from the settings. The default (``agent = demo``) needs no key
and no network: the scripted demo agent, pocketsphinx with a language model built
from the agent's own phrases, and espeak-ng. ``agent = none`` answers with the
greeting chime only (the signalling benchmark uses it).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from actors.agent import AgentBrain
from actors.conversation import Voice
from media.asr import OpenAITranscriber, PocketSphinxRecognizer
from media.session import VadConfig
from media.speech import SpeechRecognizer, SpeechSynthesizer
from media.tts import EspeakSynthesizer, OpenAISpeech
from switch.agents import DEMO_AGENT_PATH, OpenAIChatAgent, ScriptedAgent
from switch.config import ConfigError, Settings
from switch.trunking.trunks import AGENT_NAME

log = logging.getLogger("voxswitch.voice")

SYSTEM_PROMPT = (
    "You are a friendly phone agent. Answer in one or two short spoken sentences, "
    "without lists, markup or emojis. Use the tools to hang up when the caller is "
    "done, to transfer to a person when asked, or to send DTMF digits."
)
OPENAI_GREETING = "Hello! How can I help you today?"


def build_brain(settings: Settings) -> AgentBrain:
    agent = settings.agent
    if agent == "openai":
        return OpenAIChatAgent(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key or None,
            model=settings.llm_model,
            system_prompt=SYSTEM_PROMPT,
            greeting=OPENAI_GREETING,
        )
    path = DEMO_AGENT_PATH if agent == "demo" else Path(agent)
    try:
        return ScriptedAgent.from_file(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"agent: {exc}") from exc


def build_voice(settings: Settings) -> Voice | None:
    if settings.agent == "none":
        return None
    brain = build_brain(settings)
    recognizer: SpeechRecognizer
    if settings.asr == "openai":
        recognizer = OpenAITranscriber(
            settings.asr_base_url, settings.asr_api_key or None, model=settings.asr_model
        )
    else:
        recognizer = PocketSphinxRecognizer(
            phrases=brain.phrases(), pool_size=settings.asr_pool_size
        )
    synthesizer: SpeechSynthesizer
    if settings.tts == "openai":
        synthesizer = OpenAISpeech(
            settings.tts_base_url,
            settings.tts_api_key or None,
            model=settings.tts_model,
            voice=settings.tts_voice,
        )
    else:
        synthesizer = EspeakSynthesizer()
    return Voice(
        recognizer=recognizer,
        synthesizer=synthesizer,
        brain=brain,
        barge_in_min_s=settings.barge_in_min_ms / 1000.0,
    )




def build_voices(settings: Settings) -> dict[str, Voice | None]:
    """Every agent a call may name: ``default`` (the ``agent`` setting), ``none`` (the
    greeting only), and each ``<name>.yaml`` in ``agents_dir`` (a scripted agent
    sharing the default's speech synthesis; its own recogniser, tuned to its phrases,
    unless speech recognition is a shared service)."""
    default = build_voice(settings)
    voices: dict[str, Voice | None] = {"default": default, "none": None}
    if not settings.agents_dir:
        return voices
    folder = Path(settings.agents_dir)
    if not folder.is_dir():
        raise ConfigError(f"agents_dir: {folder} is not a directory")
    synthesizer = default.synthesizer if default is not None else EspeakSynthesizer()
    for path in sorted(folder.glob("*.yaml")):
        name = path.stem
        if not re.match(AGENT_NAME, name) or name in voices:
            raise ConfigError(f"agents_dir: {path.name}: agent names are letters, digits, _ -")
        try:
            brain = ScriptedAgent.from_file(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"agents_dir: {path.name}: {exc}") from exc
        recognizer: SpeechRecognizer
        if default is not None and settings.asr == "openai":
            recognizer = default.recognizer
        else:
            recognizer = PocketSphinxRecognizer(phrases=brain.phrases(), pool_size=1)
        voices[name] = Voice(
            recognizer=recognizer,
            synthesizer=synthesizer,
            brain=brain,
            barge_in_min_s=settings.barge_in_min_ms / 1000.0,
        )
    log.info("agents: %s", ", ".join(voices))
    return voices


def vad_config(settings: Settings) -> VadConfig:
    return VadConfig(
        aggressiveness=settings.vad_aggressiveness,
        start_ms=settings.vad_start_ms,
        stop_ms=settings.vad_stop_ms,
    )
