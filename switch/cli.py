"""``voxswitch`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any, NoReturn

from switch.config import ConfigError, load_settings, settings_fields
from switch.logs import configure_logging


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxswitch", description="Telephony softswitch for voice AI"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node")
    db = sub.add_parser("db", help="the call-record database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    migrate = db_sub.add_parser("migrate", help="create or upgrade the tables")
    migrate.add_argument(
        "--postgres-dsn", dest="postgres_dsn", default=None, help="env VOXSWITCH_POSTGRES_DSN"
    )
    apikey = sub.add_parser("apikey", help="API keys of the control API")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_sub.add_parser("create", help="make a key (printed once, stored hashed)")
    create.add_argument("--name", required=True, help="who or what uses it")
    create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        help="calls:read, calls:write or admin (repeat for several; default admin)",
    )
    create.add_argument(
        "--api-keys-file", dest="api_keys_file", default=None, help="env VOXSWITCH_API_KEYS_FILE"
    )
    worker = sub.add_parser("worker", help="run a Celery worker for the batch jobs")
    worker.add_argument("--concurrency", type=int, default=1, help="pool processes (default 1)")
    worker.add_argument("--beat", action="store_true", help="also run the jobs' schedule")
    jobs = sub.add_parser("jobs", help="the batch jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_sub.add_parser("list", help="the jobs there are")
    for verb, text in (("run", "run a job once, here (what a CronJob calls)"),
                       ("enqueue", "hand a job to the workers; prints its task id")):  # fmt: skip
        job = jobs_sub.add_parser(verb, help=text)
        job.add_argument("name", help="archive, transcribe, retention or daily_report")
        job.add_argument("--call-id", dest="job_call_id", help="transcribe: this call")
        job.add_argument("--limit", dest="job_limit", type=int, help="transcribe: N calls")
        job.add_argument("--days", dest="job_days", type=int, help="retention: days kept")
        job.add_argument("--day", dest="job_day", help="daily_report: YYYY-MM-DD (yesterday)")
        _add_settings(job)
    kb = sub.add_parser("kb", help="the agents' knowledge bases (embedded or Weaviate)")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    for verb, text, arg in (
        ("load", "chunk, embed and upsert files (Markdown, text, CSV, JSON, YAML)", "FILE|DIR"),
        ("search", "what a call asking this finds", "WORDS"),
        ("list", "the entries", None),
        ("remove", "delete entries by id", "ID"),
    ):
        command = kb_sub.add_parser(verb, help=text)
        if arg is not None:
            command.add_argument("kb_args", nargs="+", metavar=arg)
        command.add_argument(
            "--agent", dest="kb_agent", default="default", help="whose knowledge (default)"
        )
        command.add_argument("-k", dest="kb_k", type=int, default=3, help="search: hits shown")
        if verb == "load":
            command.add_argument(
                "--create", dest="kb_create", action="store_true",
                help="a knowledge base for an agent this configuration does not have yet",
            )  # fmt: skip
        _add_settings(command, skip=("agent",))  # --agent names the knowledge's agent here
    doctor = sub.add_parser(
        "doctor", help="the risky settings of a configuration, one line each (exit 1: critical)"
    )
    for command in (serve, worker, doctor):
        _add_settings(command)
    from switch.eval.command import add_parser as add_eval

    add_eval(sub)
    return parser


def _add_settings(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    parser.add_argument("--config", help="TOML config file (env VOXSWITCH_CONFIG)")
    for f in settings_fields():
        if f.name in skip:
            continue
        help_text = f.metadata.get("help", "")
        if f.name == "inbound_routes":  # one route a flag, repeated: a list
            parser.add_argument(
                "--inbound-route", dest=f.name, action="append", metavar="PATTERN=AGENT",
                help=f"{help_text} (env VOXSWITCH_INBOUND_ROUTES)",
            )  # fmt: skip
            continue
        default = f.default if f.name != "rtp_ports" else "20000-29999"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            help=f"{help_text} (default {default!s}; env VOXSWITCH_{f.name.upper()})",
        )


def _settings(args: argparse.Namespace) -> Any:
    names = {f.name for f in settings_fields()}
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    return load_settings(cli, config_file=args.config)


def _logging(settings: Any) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.name)


def _leave(code: int) -> NoReturn:
    """Exit once the node has stopped, without joining leftover threads: a thread still
    blocked in a backend's call (a Weaviate query that its client retries with backoff
    for a minute while the server is down) must not keep a drained node alive. The
    node has closed and flushed what it writes by now; the logs are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    needs_settings = getattr(args, "jobs_command", "") in ("run", "enqueue") or args.command == "kb"
    if args.command in ("serve", "worker", "doctor") or needs_settings:
        try:
            settings = _settings(args)
        except ConfigError as exc:
            print(f"voxswitch: {exc}", file=sys.stderr)
            return 2
    if args.command == "worker":
        return _worker(settings, args.concurrency, args.beat)
    if args.command == "doctor":
        return _doctor(settings, args)
    if args.command == "jobs":
        return _jobs(args, settings if args.jobs_command != "list" else None)
    if args.command == "serve":
        _logging(settings)
        # One BLAS thread: a node's numpy work is small (a question's embedding, media
        # frames); a second BLAS thread only competes with the loop and the media
        # workers for the cores (measured: knowledge lookup p95 33 → 25 ms).
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from switch.node import run_node

        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            _leave(int(asyncio.run(run_node(settings))))
        _leave(int(uvloop.run(run_node(settings))))
    if args.command == "kb":
        from switch.knowledge.commands import run_kb_command

        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s %(message)s")
        return run_kb_command(settings, args.kb_command, args.kb_agent,
                              getattr(args, "kb_args", []), args.kb_k,
                              create=getattr(args, "kb_create", False))  # fmt: skip
    if args.command == "eval":
        from switch.eval.command import run_eval_command

        return run_eval_command(args)
    if args.command == "db":
        return _db_migrate(args.postgres_dsn)
    if args.command == "apikey":
        return _apikey_create(args.name, tuple(args.scopes or ["admin"]), args.api_keys_file)
    return 2


def _doctor(settings: Any, args: argparse.Namespace) -> int:
    from switch.doctor import check, exit_code, observe, report

    names = {f.name for f in settings_fields()}
    given = [k for k, v in vars(args).items() if k in names and v is not None]
    findings = check(settings, observe(settings, given, args.config))
    print("\n".join(report(findings)))
    return exit_code(findings)


def _worker(settings: Any, concurrency: int, beat: bool) -> int:
    from switch.jobs import JobError
    from switch.jobs.worker import run_worker

    _logging(settings)
    try:
        run_worker(settings, concurrency, beat)
    except JobError as exc:
        print(f"voxswitch worker: {exc}", file=sys.stderr)
        return 2
    return 0


def _jobs(args: argparse.Namespace, settings: Any) -> int:
    import json

    from switch.jobs import JOBS, JobError

    if args.jobs_command == "list":
        for job in JOBS.values():
            print(f"{job.name:14} {job.summary}")
        return 0
    given = {"call_id": args.job_call_id, "limit": args.job_limit, "days": args.job_days,
             "day": args.job_day}  # fmt: skip
    options = {name: value for name, value in given.items() if value is not None}
    what = f"voxswitch jobs {args.jobs_command} {args.name}"
    try:
        if args.jobs_command == "enqueue":
            from switch.jobs.worker import enqueue

            print(enqueue(settings, args.name, options))
            return 0
        from switch.jobs.context import run_in_context

        _logging(settings)
        result = asyncio.run(run_in_context(settings, args.name, **options))
    except JobError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a service down: one line, and a CronJob tries again
        print(f"{what}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1, default=str))
    return 0


def _apikey_create(name: str, scopes: tuple[str, ...], path: str | None) -> int:
    from control_api.keys import ApiKeys

    settings = load_settings({"api_keys_file": path})
    try:
        token = ApiKeys(settings.api_keys_file or None).create(name, scopes)
    except ValueError as exc:
        print(f"voxswitch apikey create: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _db_migrate(dsn: str | None) -> int:
    settings = load_settings({"postgres_dsn": dsn})
    if not settings.postgres_dsn:
        print("voxswitch db migrate: set --postgres-dsn or VOXSWITCH_POSTGRES_DSN", file=sys.stderr)
        return 2

    async def run() -> list[str]:
        import asyncpg

        from switch.backbone.sinks import migrate

        connection = await asyncpg.connect(settings.postgres_dsn, timeout=10)
        try:
            return await migrate(connection)
        finally:
            await connection.close()

    try:
        applied = asyncio.run(run())
    except (TimeoutError, OSError) as exc:
        print(f"voxswitch db migrate: cannot reach PostgreSQL: {exc}", file=sys.stderr)
        return 1
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
