"""``voxswitch eval SUITE``: run a suite, print progress, write the report, exit 0 only
when the suite's pass mark holds (1: it does not; 2: a bad suite or a run that could
not start). Ctrl-C writes what finished."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from switch.eval.errors import EvalError

if TYPE_CHECKING:  # the run's modules load speech and numpy: only when a run starts
    from switch.eval.runner import Outcome
    from switch.eval.suite import Suite


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = sub.add_parser("eval", help="test an agent with simulated callers over SIP")
    command.add_argument("suite", help="the suite file (docs/eval-suites.md)")
    command.add_argument("--target", help="a node already running: its SIP URI "
                         "(default: a throwaway node started for the suite)")  # fmt: skip
    command.add_argument("--api", help="with --target: that node's API URL, to grade from its "
                         "call records (without it: from what the caller heard, "
                         "transcribed offline with Whisper)")  # fmt: skip
    command.add_argument("--api-key", default="", help="with --api: a key that reads calls")
    command.add_argument("--node-args", default="", help="more settings for the throwaway "
                         "node, e.g. \"--asr whisper\"")  # fmt: skip
    command.add_argument("--calls-at-once", type=int, default=1)
    command.add_argument("--case", action="append", default=[], metavar="ID_OR_TAG",
                         help="run only the cases with this id or tag (repeat for more)")
    command.add_argument("--typed", action="store_true", help="type each line to the agent "
                         "(POST /v1/agents/NAME/reply) instead of calling: the lookup and "
                         "intents without a recogniser; needs our node")  # fmt: skip
    command.add_argument("--report", type=Path, default=None, help="the report's folder")


def only_cases(suite: Suite, wanted: list[str]) -> Suite:
    """The suite with only the cases named (by id or tag); all of them for none."""
    if not wanted:
        return suite
    cases = tuple(c for c in suite.cases if c.id in wanted or set(c.tags) & set(wanted))
    if not cases:
        raise EvalError(f"--case {' '.join(wanted)}: no case has that id or tag")
    return dataclasses.replace(suite, cases=cases)


def run_eval_command(args: argparse.Namespace) -> int:
    from switch.eval.runner import write_report
    from switch.eval.suite import SuiteError, load_suite
    from switch.eval.voices import check_voices

    try:
        suite = only_cases(load_suite(args.suite), args.case)
        check_voices(suite.cases)
    except (SuiteError, EvalError) as exc:
        print(f"voxswitch eval: {exc}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = args.report or Path(f"eval-{suite.path.stem}-{stamp}")
    outcomes: list[Outcome] = []

    def progress(outcome: Outcome) -> None:
        outcomes.append(outcome)
        mark = "right" if outcome.verdict.passed else "WRONG"
        why = f"  ({'; '.join(outcome.verdict.why)[:100]})" if not outcome.verdict.passed else ""
        print(f"[{len(outcomes):>3}/{len(suite.cases)}] {outcome.case.id}: {mark}{why}",
              flush=True)  # fmt: skip

    try:
        asyncio.run(_run(suite, args, progress))
    except KeyboardInterrupt:
        print("voxswitch eval: interrupted; the report holds what finished", file=sys.stderr)
    except EvalError as exc:
        print(f"voxswitch eval: {exc}", file=sys.stderr)
        return 2
    order = {case.id: i for i, case in enumerate(suite.cases)}
    totals = write_report(report, suite, sorted(outcomes, key=lambda o: order[o.case.id]))
    print(f"{totals['right']}/{totals['cases']} right, turn p50 {totals['turn_latency_p50_s']} s,"
          f" wrong actions {totals['wrong_actions']}: {'PASS' if totals['passed'] else 'FAIL'}"
          f" (report in {report})")  # fmt: skip
    return 0 if totals["passed"] else 1


async def _run(suite: Suite, args: argparse.Namespace, progress: Callable[[Outcome], None]) -> None:
    from switch.eval.node import ThrowawayNode
    from switch.eval.runner import Api, Judge, run_suite
    from switch.eval.typed import run_typed
    from switch.eval.voices import speak

    at_once = args.calls_at_once
    if args.typed and args.target and not args.api:
        raise EvalError("--typed needs our node: --api with --target, or no --target")
    if args.target and args.api:
        api = Api(args.api.rstrip("/"), args.api_key)
        if args.typed:
            await run_typed(suite, api, calls_at_once=at_once, progress=progress)
            return
        await run_suite(suite, args.target, Judge(api=api), speak, calls_at_once=at_once,
                        progress=progress)  # fmt: skip
    elif args.target:  # a foreign target: grade from what the caller heard
        from switch.eval.heard import WhisperEar, suite_entries

        ear = WhisperEar()
        try:
            judge = Judge(ear=ear, entries=suite_entries(suite))
            await run_suite(suite, args.target, judge, speak, calls_at_once=at_once,
                            progress=progress)  # fmt: skip
        finally:
            await ear.aclose()
    else:
        with tempfile.TemporaryDirectory(prefix="voxswitch-eval-") as folder:
            async with ThrowawayNode(suite, Path(folder), shlex.split(args.node_args)) as node:
                api = Api(node.api_url, node.key)
                if args.typed:
                    await run_typed(suite, api, calls_at_once=at_once, progress=progress)
                    return
                await run_suite(suite, node.sip_uri, Judge(api=api), speak, calls_at_once=at_once,
                                progress=progress)  # fmt: skip
