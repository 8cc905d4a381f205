"""The node's voice: which brain, recogniser and synthesiser its calls share.

Built once per node from the settings. The default (``agent = demo``) needs no key
and no network: the scripted demo agent, pocketsphinx with a language model built
from the agent's own phrases (or, with ``asr = whisper``, Whisper prompted with them),
and espeak-ng. ``agent = none`` answers with the
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
from media.speech import SpeechError, SpeechRecognizer, SpeechSynthesizer
from media.tts import EspeakSynthesizer, OpenAISpeech
from media.whisper import WhisperModel
from switch.agents import DEMO_AGENT_PATH, AgentConfigError, OpenAIChatAgent, ScriptedAgent
from switch.config import ConfigError, Settings
from switch.knowledge import KnowledgeBase, KnowledgeError, KnowledgeUnavailable
from switch.knowledge.entries import KnowledgeEntry, phrases_of
from switch.knowledge.loaders import load_file
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
    except AgentConfigError as exc:  # names the file, and the line when it could be read
        raise ConfigError(str(exc) if exc.line else f"agent: {exc}") from None


def _agent_file(settings: Settings) -> Path | None:
    if settings.agent in ("none", "openai"):
        return None
    return DEMO_AGENT_PATH if settings.agent == "demo" else Path(settings.agent)


async def attach_knowledge(
    knowledge: KnowledgeBase, name: str, brain: AgentBrain, agent_file: Path | None
) -> list[KnowledgeEntry]:
    """Load the agent file's own knowledge into the base (idempotent: same ids) and give
    the brain the base, with what callers say about its entries for the recogniser.
    Returns the file's entries still to load when the base is down now (the node
    retries them), else []."""
    own = load_file(agent_file) if agent_file is not None else []
    pending: list[KnowledgeEntry] = []
    try:
        if own:
            await knowledge.add(name, own)
        listed, _ = await knowledge.entries(name, 0, 5000)
    except KnowledgeUnavailable as exc:
        log.warning("knowledge base for agent %s unavailable at start (%s): retrying", name, exc)
        listed, pending = own, own
    if isinstance(brain, ScriptedAgent | OpenAIChatAgent):
        brain.use_knowledge(knowledge, name, phrases_of(listed))
    return pending


async def build_voices(
    settings: Settings, knowledge: KnowledgeBase | None = None
) -> tuple[dict[str, Voice | None], dict[str, list[KnowledgeEntry]]]:
    """Every agent a call may name: ``default`` (the ``agent`` setting), ``none`` (the
    greeting only), and each ``<name>.yaml`` in ``agents_dir`` (a scripted agent
    sharing the default's speech synthesis; its own recogniser, tuned to its phrases
    and its knowledge, unless speech recognition is a shared service). With
    ``knowledge``, each agent answers from its entries there; the second value holds
    the agent files' entries the knowledge base could not take yet."""
    brains: dict[str, tuple[AgentBrain, Path | None]] = {}
    if settings.agent != "none":
        brains["default"] = (build_brain(settings), _agent_file(settings))
    if settings.agents_dir:
        folder = Path(settings.agents_dir)
        if not folder.is_dir():
            raise ConfigError(f"agents_dir: {folder} is not a directory")
        for path in sorted(folder.glob("*.yaml")):
            name = path.stem
            if not re.match(AGENT_NAME, name) or name in ("default", "none", *brains):
                raise ConfigError(f"agents_dir: {path.name}: agent names are letters, digits, _ -")
            try:
                brains[name] = (ScriptedAgent.from_file(path), path)
            except AgentConfigError as exc:  # "agents/x.yaml:12: field: problem"
                raise ConfigError(str(exc)) from None
    pending: dict[str, list[KnowledgeEntry]] = {}
    if knowledge is not None:
        for name, (brain, agent_file) in brains.items():
            try:
                if left := await attach_knowledge(knowledge, name, brain, agent_file):
                    pending[name] = left
            except KnowledgeError as exc:
                raise ConfigError(f"agent {name}: knowledge: {exc}") from exc
    synthesizer = _synthesizer(settings)
    shared = _recognizer(settings, None) if settings.asr == "openai" else None
    whisper = (
        WhisperModel(settings.whisper_model_dir, settings.asr_pool_size)
        if settings.asr == "whisper"
        else None
    )
    voices: dict[str, Voice | None] = {"default": None, "none": None}
    for name, (brain, _) in brains.items():
        pool = settings.asr_pool_size if name == "default" else 1
        if whisper is not None:  # one model; each agent its own prompt
            recognizer: SpeechRecognizer = whisper.recognizer(brain.phrases())
        else:
            recognizer = shared or _recognizer(settings, brain, pool)
        voices[name] = Voice(
            recognizer=recognizer,
            synthesizer=synthesizer,
            brain=brain,
            barge_in_min_s=settings.barge_in_min_ms / 1000.0,
        )
    if whisper is not None:
        try:
            await whisper.warm_up()  # ~1 s now, not at the first caller's question
        except SpeechError as exc:
            raise ConfigError(str(exc)) from None
    if settings.agents_dir:
        log.info("agents: %s", ", ".join(voices))
    return voices, pending


def _recognizer(settings: Settings, brain: AgentBrain | None, pool: int = 1) -> SpeechRecognizer:
    if settings.asr == "openai":
        return OpenAITranscriber(
            settings.asr_base_url, settings.asr_api_key or None, model=settings.asr_model
        )
    assert brain is not None
    return PocketSphinxRecognizer(phrases=brain.phrases(), pool_size=pool)


def _synthesizer(settings: Settings) -> SpeechSynthesizer:
    if settings.tts == "openai":
        return OpenAISpeech(
            settings.tts_base_url,
            settings.tts_api_key or None,
            model=settings.tts_model,
            voice=settings.tts_voice,
        )
    return EspeakSynthesizer()


def vad_config(settings: Settings) -> VadConfig:
    return VadConfig(
        aggressiveness=settings.vad_aggressiveness,
        start_ms=settings.vad_start_ms,
        stop_ms=settings.vad_stop_ms,
    )
