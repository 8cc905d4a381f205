"""The knowledge base by voice: paraphrased questions asked through real phone calls.

Each question of :data:`loadtest.paraphrases.PARAPHRASES` is one baresip call to a node
running the demo agent: the phone's microphone says the question (a person-like neural
voice by default, or espeak-ng at 150 wpm: ``loadtest/caller.py``) a second after the
call is answered, over the greeting (barge-in), and the call's record says what the
recogniser heard and which knowledge entry the agent answered from. The
score is the share of questions answered from the right entry; the same questions as
text (no recognition) are scored too, so a miss is placed: the words or the lookup.

    python -m loadtest.knowledge_voice [--asr whisper] [--caller-voice espeak]
                                       [--weaviate] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtest.baresip import RATE, Baresip
from loadtest.caller import CALLER_VOICES, CallerVoice, say
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.paraphrases import PARAPHRASES

LEAD_S = 1.0  # after the answer, before the caller speaks (over the greeting)
ANSWER_WAIT_S = 12.0


@dataclass
class Asked:
    question: str
    expected: str
    heard: str
    answered_from: list[str]
    error: str | None = None
    asr_s: float | None = None  # the recogniser's time for the question
    latency_s: float | None = None  # end of the question -> the answer's first packet

    @property
    def right(self) -> bool:
        return self.answered_from[:1] == [self.expected]


def _microphone(question: str, voice: CallerVoice) -> npt.NDArray[np.int16]:
    speech = say(question, voice)
    lead = np.zeros(round(LEAD_S * RATE), dtype=np.int16)
    tail = np.zeros(round(20 * RATE), dtype=np.int16)
    return np.concatenate([lead, speech, tail])


def ask(
    node: NodeProcess,
    baresip: str,
    workdir: Path,
    question: str,
    expected: str,
    voice: CallerVoice = "piper",
) -> Asked:
    """One call: dial, say the question, wait for the agent's answer, hang up."""
    phone = Baresip(baresip, workdir, microphone=_microphone(question, voice))
    log_from = len(node.stderr_text())
    records_before = len(node.records())
    try:
        phone.dial(f"sip:agent@{node.host}:{node.sip_port}")
        if phone.wait_for(r"Call established: sip:agent@", timeout_s=10) is None:
            return Asked(question, expected, "", [], "call not established")
        deadline = time.monotonic() + ANSWER_WAIT_S
        while "turn 1: agent:" not in node.stderr_text()[log_from:]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        phone.command("/hangup")
        phone.wait_for(r"terminated|session closed", timeout_s=5)
    finally:
        phone.quit()
    deadline = time.monotonic() + 10
    while len(node.records()) <= records_before and time.monotonic() < deadline:
        time.sleep(0.1)
    new = node.records()[records_before:]
    if not new:
        return Asked(question, expected, "", [], "no call record")
    record: dict[str, Any] = dict(new[0])
    turns = [t for t in record.get("turns", []) if t.get("source") == "speech"]
    if not turns:
        return Asked(question, expected, "", [], "nothing recognised")
    turn = turns[0]
    return Asked(
        question,
        expected,
        str(turn["caller"]),
        list(turn.get("knowledge") or []),
        turn.get("knowledge_error"),
        turn.get("asr_s"),
        turn.get("latency_s"),
    )


def ask_all(
    node: NodeProcess,
    baresip: str,
    workdir: Path,
    voice: CallerVoice = "piper",
    limit: int | None = None,
) -> list[Asked]:
    """The voice question set, one call per question, one call at a time."""
    questions = PARAPHRASES[:limit] if limit else PARAPHRASES
    return [
        ask(node, baresip, workdir / f"phone-{i}", q, e, voice)
        for i, (q, e) in enumerate(questions)
    ]


def run(
    baresip: str,
    workdir: Path,
    env: dict[str, str],
    voice: CallerVoice = "piper",
    limit: int | None = None,
) -> list[Asked]:
    factory = NodeFactory(workdir, env)
    try:
        node = factory.start("kb-voice", NodeOptions(max_call_duration_s=60, media_timeout_s=0))
        return ask_all(node, baresip, workdir, voice, limit)
    finally:
        factory.stop_all()


def text_score(env: dict[str, str]) -> int:
    """The same questions as text through the same lookup (no speech recognition)."""
    from switch.agents import DEMO_AGENT_PATH
    from switch.knowledge import KnowledgeBase, open_store
    from switch.knowledge.loaders import load_file

    async def score() -> int:
        kb = KnowledgeBase(
            open_store(
                weaviate_url=env.get("VOXSWITCH_WEAVIATE_URL", ""),
                weaviate_grpc_port=int(env.get("VOXSWITCH_WEAVIATE_GRPC_PORT", "50051")),
                collection=env.get("VOXSWITCH_KB_COLLECTION", ""),
            )
        )
        try:
            await kb.add("default", load_file(DEMO_AGENT_PATH))
            right = 0
            for question, expected in PARAPHRASES:
                hits = await kb.search("default", question)
                right += bool(hits) and hits[0].entry.id == expected
            return right
        finally:
            await kb.aclose()

    return asyncio.run(score())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weaviate", action="store_true", help="the node uses Weaviate")
    parser.add_argument("--asr", choices=("pocketsphinx", "whisper"), default="pocketsphinx")
    parser.add_argument("--caller-voice", choices=CALLER_VOICES, default="piper")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    baresip = shutil.which("baresip")
    if baresip is None:
        raise SystemExit("baresip not found: deploy/local/install-test-deps.sh")
    env: dict[str, str] = {}
    if args.weaviate:
        from loadtest.services import services_env

        services = services_env()
        env = {k: services[k] for k in ("VOXSWITCH_WEAVIATE_URL", "VOXSWITCH_WEAVIATE_GRPC_PORT")}
        env["VOXSWITCH_KB_COLLECTION"] = f"Kbvoice{os.getpid()}"
    env["VOXSWITCH_ASR"] = args.asr
    if args.asr == "whisper":
        env["VOXSWITCH_ASR_POOL_SIZE"] = "1"  # one caller at a time: all cores per decode
    with tempfile.TemporaryDirectory(prefix="kb-voice-") as tmp:
        asked = run(baresip, Path(tmp), env, args.caller_voice, args.limit)
    for a in asked:
        mark = "right" if a.right else "WRONG"
        print(
            f"{mark}  {a.expected:12} got {a.answered_from!s:16} heard {a.heard!r}"
            f"  (asked {a.question!r}){' ' + a.error if a.error else ''}"
        )
    right = sum(a.right for a in asked)
    asr = [a.asr_s for a in asked if a.asr_s is not None]
    latency = [a.latency_s for a in asked if a.latency_s is not None]
    print(
        json.dumps(
            {
                "questions": len(asked),
                "right_by_voice": right,
                "right_by_text": text_score(env),
                "store": "weaviate" if args.weaviate else "embedded",
                "asr": args.asr,
                "caller_voice": args.caller_voice,
                "asr_s_p50": round(float(np.median(asr)), 3) if asr else None,
                "turn_latency_s_p50": round(float(np.median(latency)), 3) if latency else None,
                "turn_latency_s_max": round(max(latency), 3) if latency else None,
            }
        )
    )


if __name__ == "__main__":
    main()
