"""Which offline recogniser should hear telephone callers: accuracy against cost.

Every spoken line of the shipped eval suites (loadtest/suites: pizza, outage, bank,
airline), rendered as ``voxswitch eval`` renders it (the case's voice, telephone band,
noise; loadtest/asr_audio.py), goes through each recogniser of
loadtest/asr_engines.py; so do 20 clips of line noise or silence with nobody talking.
Each recogniser gets each suite's agent phrases the way the node gives them (its
language model or prompt). Printed as Markdown:

- WER (normalised both sides: loadtest/asr_score.py) and the share of lines whose
  content words were all heard;
- prompt echoes (4+ words of the prompt the caller did not say) and, on the noise
  clips, transcripts that are not empty;
- wall time per utterance (mean, p95) and CPU seconds per second of audio at the
  runtime's default threads, and again with one thread (on ``--timing-lines`` lines);
- model size and licences.

    python -m loadtest.asr_compare [--only NAME[,NAME]|all] [--lines N] [--timing-lines K]
                                   [--level-db DB]

The default run takes ~18 min on 2 busy cores (Moonshine alone ~5 min). Per-line transcripts go to
loadtest/out/asr-compare/run-<time>.json (and the table to run-<time>.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from loadtest.asr_audio import CACHE_DIR, SUITES, Clip, load_audio_set
from loadtest.asr_engines import ENGINES, OPTIONAL, Engine, ModelInfo
from loadtest.asr_score import heard_all_content, normalise, prompt_echo, word_errors

DEFAULT_TIMING_LINES = 24
CONDITIONS = ("piper clean", "piper noisy", "espeak clean", "espeak noisy")


@dataclass
class Heard:
    id: str
    text: str
    wall_s: float
    cpu_s: float
    echo: bool


@dataclass
class Run:
    name: str
    info: ModelInfo | None = None
    heard: list[Heard] = field(default_factory=list)  # default threads: all clips
    one_thread: list[Heard] = field(default_factory=list)  # 1 thread: the timing lines
    load_s: float = 0.0
    error: str = ""


# --------------------------------------------------------------------------- phrases


def suite_phrases(names: Sequence[str] = SUITES) -> dict[str, list[str]]:
    """Each suite's agent phrases as the node builds them: the agent's patterns and
    lines, then what callers say about its knowledge (agent file and knowledge files)."""
    from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
    from switch.eval.suite import load_suite
    from switch.knowledge.entries import phrases_of
    from switch.knowledge.loaders import files_under, load_file

    out: dict[str, list[str]] = {}
    for name in names:
        agent = load_suite(Path(__file__).parent / "suites" / f"{name}.yaml").agent
        path = agent.agents_dir / f"{agent.name}.yaml" if agent.agents_dir else DEMO_AGENT_PATH
        entries = load_file(path)
        entries += [e for k in agent.knowledge for f in files_under(k) for e in load_file(f)]
        out[name] = ScriptedAgent.from_file(path).phrases() + phrases_of(entries)
    return out


# --------------------------------------------------------------------------- running


def _child_cpu_s(pid: int) -> float:
    """User + system CPU of a live process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_s(engine: Engine) -> float:
    return time.process_time() + sum(_child_cpu_s(p) for p in engine.child_pids())


def _suite_of(clip: Clip, index: int) -> str:
    # Noise clips go to each agent in turn, so each prompt or LM meets line noise.
    return SUITES[index % len(SUITES)] if clip.line.noise_only else clip.line.suite


async def _pass(
    engine: Engine, clips: Sequence[Clip], phrases: dict[str, list[str]], threads: int
) -> tuple[list[Heard], float]:
    started = time.perf_counter()
    await engine.open(phrases, threads)
    try:
        await engine.transcribe(clips[0].pcm, _suite_of(clips[0], 0))  # warm-up, not timed
        load_s = time.perf_counter() - started
        heard: list[Heard] = []
        for i, clip in enumerate(clips):
            suite = _suite_of(clip, i)
            cpu, wall = _cpu_s(engine), time.perf_counter()
            text = await engine.transcribe(clip.pcm, suite)
            wall, cpu = time.perf_counter() - wall, _cpu_s(engine) - cpu
            echo = prompt_echo(text, engine.prompt(suite), clip.line.text)
            heard.append(Heard(clip.line.id, text, wall, cpu, echo))
        return heard, load_s
    finally:
        await engine.close()


async def run_engine(
    name: str, clips: Sequence[Clip], timing: Sequence[Clip], phrases: dict[str, list[str]]
) -> Run:
    run = Run(name)
    try:
        engine = ENGINES[name]()
        run.info = engine.info
        run.heard, run.load_s = await _pass(engine, clips, phrases, threads=0)
        if timing and not engine.single_threaded:
            run.one_thread, _ = await _pass(engine, timing, phrases, threads=1)
        elif timing:  # one core whatever the setting: the default-threads figures hold
            wanted = {c.line.id for c in timing}
            run.one_thread = [h for h in run.heard if h.id in wanted]
    except (RuntimeError, OSError, ImportError, ValueError) as exc:
        run.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return run


# --------------------------------------------------------------------------- figures


def _condition(clip: Clip) -> str:
    voice = "piper" if clip.line.voice.startswith("piper") else "espeak"
    return f"{voice} {'clean' if clip.line.noise_db is None else 'noisy'}"


def _wer(pairs: Sequence[tuple[Clip, Heard]]) -> float:
    errors = words = 0
    for clip, heard in pairs:
        e, n = word_errors(clip.line.text, heard.text)
        errors, words = errors + e, words + n
    return 100.0 * errors / max(1, words)


def _cost(heard: Sequence[Heard], seconds: dict[str, float]) -> tuple[float, float, float]:
    """(mean wall s, p95 wall s, CPU s per audio s)."""
    if not heard:
        return float("nan"), float("nan"), float("nan")
    walls = np.array([h.wall_s for h in heard])
    audio = sum(seconds[h.id] for h in heard)
    return float(walls.mean()), float(np.percentile(walls, 95)), sum(h.cpu_s for h in heard) / audio


def tables(runs: Sequence[Run], clips: Sequence[Clip]) -> str:
    by_id = {c.line.id: c for c in clips}
    seconds = {c.line.id: c.seconds for c in clips}
    main = [
        "| recogniser | WER % | lines all heard | echoes (lines) | noise: text / echo "
        "| mean s | p95 s | CPU s per audio s | 1 thread: mean s | 1 thread: CPU s/s "
        "| load s | model MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    detail = ["| recogniser | " + " | ".join(f"WER {c}" for c in CONDITIONS) + " |",
              "|---|" + "--:|" * len(CONDITIONS)]  # fmt: skip
    about = ["| recogniser | model | packages | licences |", "|---|---|---|---|"]
    for run in runs:
        if run.error:
            main.append(f"| {run.name} | skipped: {run.error} |" + " |" * 11)
            continue
        speech = [(by_id[h.id], h) for h in run.heard if not by_id[h.id].line.noise_only]
        noise = [h for h in run.heard if by_id[h.id].line.noise_only]
        heard = sum(heard_all_content(c.line.text, h.text) for c, h in speech)
        echoes = sum(h.echo for _, h in speech)
        noisy_text = sum(bool(normalise(h.text)) for h in noise)
        mean, p95, cpu = _cost([h for _, h in speech], seconds)
        mean1, _, cpu1 = _cost(run.one_thread, seconds)
        size = run.info.size_mb if run.info else float("nan")
        main.append(
            f"| {run.name} | {_wer(speech):.1f} | {heard}/{len(speech)} | {echoes} "
            f"| {noisy_text}/{len(noise)} / {sum(h.echo for h in noise)} | {mean:.2f} "
            f"| {p95:.2f} | {cpu:.3f} | {mean1:.2f} | {cpu1:.3f} | {run.load_s:.1f} | {size:.0f} |"
        )
        cells = []
        for condition in CONDITIONS:
            group = [(c, h) for c, h in speech if _condition(c) == condition]
            cells.append(f"{_wer(group):.1f} ({len(group)})" if group else "-")
        detail.append(f"| {run.name} | " + " | ".join(cells) + " |")
        if run.info:
            about.append(f"| {run.name} | {run.info.model} | {run.info.packages} "
                         f"| {run.info.licence} |")  # fmt: skip
    return "\n".join([*main, "", *detail, "", *about])


def header(argv: Sequence[str], clips: Sequence[Clip], load: tuple[float, ...]) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    speech = [c for c in clips if not c.line.noise_only]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"`python -m loadtest.asr_compare {shlex.join(argv)}`, {now}; {platform.node()}: "
        f"{os.cpu_count()} cores, {cpu}; load average {' / '.join(f'{x:.2f}' for x in load)} "
        f"(1/5/15 min) at the start, {' / '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"at the end. {len(speech)} lines ({sum(c.seconds for c in speech):.0f} s of audio), "
        f"{len(clips) - len(speech)} noise-only clips."
    )


# --------------------------------------------------------------------------- main


def scaled(clip: Clip, db: float) -> Clip:
    """The clip ``db`` louder (negative: quieter), clipped to int16."""
    pcm = np.round(clip.pcm.astype(np.float64) * 10 ** (db / 20)).clip(-32768, 32767)
    return Clip(clip.line, pcm.astype(np.int16))


def _spread(items: Sequence[Clip], n: int) -> list[Clip]:
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[round(i)] for i in np.linspace(0, len(items) - 1, n)]


def _names(text: str) -> list[str]:
    if text == "all":
        return list(ENGINES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown recogniser {', '.join(unknown)} (choose from {', '.join(ENGINES)})"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.asr_compare",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--only", type=_names, default=[n for n in ENGINES if n not in OPTIONAL],
                        help="comma-separated recognisers, or all (default: all but "
                             f"{', '.join(sorted(OPTIONAL))})")  # fmt: skip
    parser.add_argument("--lines", type=int, default=0,
                        help="use N lines spread over the suites (default: all)")  # fmt: skip
    parser.add_argument("--timing-lines", type=int, default=DEFAULT_TIMING_LINES,
                        help="lines timed again with one thread (0: none)")  # fmt: skip
    parser.add_argument("--level-db", type=float, default=0.0,
                        help="scale every clip by DB first (-15: a quiet line)")  # fmt: skip
    parser.add_argument("--refresh-audio", action="store_true",
                        help="render the lines again instead of using the cache")  # fmt: skip
    args = parser.parse_args(argv)
    load = os.getloadavg()
    everything = load_audio_set(refresh=args.refresh_audio)
    if args.level_db:
        everything = [scaled(c, args.level_db) for c in everything]
    speech = _spread([c for c in everything if not c.line.noise_only], args.lines)
    clips = speech + [c for c in everything if c.line.noise_only]
    timing = _spread(speech, args.timing_lines) if args.timing_lines > 0 else []
    phrases = suite_phrases()
    runs: list[Run] = []
    for name in args.only:
        started = time.perf_counter()
        runs.append(asyncio.run(run_engine(name, clips, timing, phrases)))
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    report = header(sys.argv[1:] if argv is None else argv, clips, load) + "\n\n"
    report += tables(runs, clips)
    print(report)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / f"run-{stamp}.md").write_text(report + "\n")
    texts = {c.line.id: c.line.text for c in clips}
    detail = [{**asdict(r), "info": asdict(r.info) if r.info else None} for r in runs]
    (CACHE_DIR / f"run-{stamp}.json").write_text(json.dumps({"said": texts, "runs": detail},
                                                            indent=1))  # fmt: skip
    return 0 if all(not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
