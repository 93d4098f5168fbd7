"""The ``aoc`` command: one entry point for every process of the system."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from aoc import logs, safety, settings_help, show_config, tls, tokens_cli
from aoc.config import Settings
from aoc.parts import StopFailed


def _parser() -> argparse.ArgumentParser:
    # argparse only: these modules' heavy imports are their own, made when a command runs.
    from aoc import bootstrap, manage, simulate

    parser = argparse.ArgumentParser(prog="aoc", description="AOC ambulance tracking backend")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {settings_help.version()}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run Mosquitto, Redis and `aoc serve` under supervision")
    commands.add_parser("serve", help="bridge + HTTP API + Socket.IO in one process")
    commands.add_parser("bridge", help="the MQTT bridge alone (scale-out)")
    commands.add_parser("api", help="the HTTP API and legacy shim alone (scale-out)")
    commands.add_parser("realtime", help="a Socket.IO server alone (scale-out, via Redis)")
    simulate.add_parser(commands)
    manage.add_parsers(commands)
    bootstrap.add_parser(commands)
    tls.add_parser(commands)
    tokens_cli.add_parser(commands)
    show_config.add_parser(commands)
    settings_help.document(parser, commands)  # last: every command's --help names its settings
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, read settings once, configure logging, run the command."""
    args = _parser().parse_args(argv)
    settings = Settings()
    logs.configure(level=settings.log_level, fmt=settings.log_format, process=args.command)
    # `aoc tls init` makes what a safe configuration needs: it is never refused.
    if args.command == "tls":
        return tls.command(args, settings)
    if args.command == "config":  # shows what is wrong rather than refusing it
        return show_config.command(args, settings)
    try:
        safety.check(settings, args.command)
    except safety.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, settings)) or 0
    except KeyboardInterrupt:
        return 130
    except StopFailed as exc:  # its tracebacks are logged already
        logging.getLogger("aoc").error("exiting with an error: %s", exc)
        return 1


async def _run(args: argparse.Namespace, settings: Settings) -> int | None:
    # Imports are local: `aoc simulate` starts fast and needs no storage driver
    # unless it creates accounts, and the runtime commands never import the
    # simulator (the `sim` package).
    if args.command in ("device", "dashboard"):
        from aoc import manage

        return await manage.run(args, settings)
    if args.command == "accounts":
        from aoc import bootstrap

        return await bootstrap.command(args, settings)
    if args.command == "simulate":
        from aoc import simulate

        return await simulate.run(args, settings)
    if args.command == "token":
        return await tokens_cli.run(args, settings)
    if args.command == "up":
        from aoc.supervise import up

        return await up(settings)
    from aoc import lifecycle

    runners = {
        "serve": lifecycle.serve,
        "bridge": lifecycle.run_bridge,
        "api": lifecycle.run_api,
        "realtime": lifecycle.run_realtime,
    }
    await runners[args.command](settings)
    return None


if __name__ == "__main__":
    sys.exit(main())
