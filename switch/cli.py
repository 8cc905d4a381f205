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
    return 2


if __name__ == "__main__":
    sys.exit(main())
