"""``voxswitch`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from switch.config import ConfigError, load_settings, settings_fields


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
    serve.add_argument("--config", help="TOML config file (env VOXSWITCH_CONFIG)")
    for f in settings_fields():
        help_text = f.metadata.get("help", "")
        default = f.default if f.name != "rtp_ports" else "20000-29999"
        serve.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            help=f"{help_text} (default {default!s}; env VOXSWITCH_{f.name.upper()})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        skip = ("command", "config")
        cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in skip}
        try:
            settings = load_settings(cli, config_file=args.config)
        except ConfigError as exc:
            print(f"voxswitch: {exc}", file=sys.stderr)
            return 2
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        from switch.node import run_node

        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return int(asyncio.run(run_node(settings)))
        return int(uvloop.run(run_node(settings)))
    if args.command == "db":
        return _db_migrate(args.postgres_dsn)
    if args.command == "apikey":
        return _apikey_create(args.name, tuple(args.scopes or ["admin"]), args.api_keys_file)
    return 2


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
