"""The ``aoc`` command: one entry point for every process of the system."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType

from aoc import (
    eventloop,
    logs,
    places_cli,
    safety,
    settings_help,
    show_config,
    startup,
    tls,
    tokens_cli,
)
from aoc.config import Settings
from aoc.parts import StopFailed
from storage.base import StoreUnavailable

log = logging.getLogger("aoc")


def _parser(*, documented: bool = True) -> argparse.ArgumentParser:
    """The ``aoc`` command line; ``documented``: with the settings each --help lists.

    The lists are only read for --help: building them (from the settings'
    source) is left out of every other start.
    """
    # argparse only: these modules' heavy imports are their own, made when a command runs.
    from aoc import bootstrap, manage, simulate

    parser = argparse.ArgumentParser(prog="aoc", description="AOC ambulance tracking backend")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {settings_help.version()}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run Mosquitto, Redis and `aoc serve` under supervision")
    commands.add_parser("serve", help="bridge + HTTP API + Socket.IO in one process")
    bridge = commands.add_parser("bridge", help="the MQTT bridge alone (scale-out)")
    bridge.add_argument(
        "--retire",
        action="store_true",
        help="take this bridge (AOC_MQTT_CLIENT_ID), once stopped, out of its share group for "
        "good: store what its sessions and its spool hold, then end the sessions (scaling "
        "down; README, Several bridges)",
    )
    bridge.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --retire: give up (exit 1, the sessions kept) after this long (default 600)",
    )
    bridge.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="with --retire: leave this share group too (an earlier AOC_SHARE_GROUP; repeatable)",
    )
    commands.add_parser("api", help="the HTTP API and legacy shim alone (scale-out)")
    commands.add_parser("realtime", help="a Socket.IO server alone (scale-out, via Redis)")
    simulate.add_parser(commands)
    manage.add_parsers(commands)
    bootstrap.add_parser(commands)
    tls.add_parser(commands)
    tokens_cli.add_parser(commands)
    places_cli.add_parser(commands)
    show_config.add_parser(commands)
    _add_bench(commands)
    if documented:  # last: every command's --help names its settings
        settings_help.document(parser, commands)
    return parser


def _bench_suite() -> ModuleType | None:
    """``bench.suite`` of the clone this ``aoc`` runs from; None for an installed ``aoc``.

    The harness (``bench/``, and the ``tests/services.py`` it starts servers
    with) is not packaged: it is found next to the ``aoc`` package, appended
    to the path so that it never shadows an installed module.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "suite.py").is_file():
        return None
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from bench import suite

    return suite


def _bench(args: argparse.Namespace, _settings: Settings) -> int:
    suite = _bench_suite()
    if suite is None:
        print("aoc bench runs from a clone of the repository (bench/ is not installed)")
        return 2
    return int(suite.main(args))


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    suite = _bench_suite()
    if suite is not None:
        suite.add_parser(commands)
        return
    commands.add_parser("bench", help="benchmarks: only from a clone of the repository")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, read settings once, configure logging, run the command."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    asks_help = any(arg in ("-h", "--help") for arg in arguments)
    args = _parser(documented=asks_help).parse_args(arguments)
    try:
        settings = _settings(args.command)
        # Never refused: `aoc tls init` makes what a safe configuration needs,
        # `aoc config` shows what production mode would refuse.
        # `aoc bench` starts servers of its own, with settings of its own.
        unrefused = {"tls": tls.command, "config": show_config.command, "bench": _bench}
        if args.command in unrefused:
            return unrefused[args.command](args, settings)
        safety.check(settings, args.command)
        try:
            return eventloop.run(_run(args, settings), command=args.command) or 0
        except StoreUnavailable as exc:  # the management commands' audit log and tokens
            where = startup.setting(settings, "store_url", settings.resolved_store_url)
            raise startup.Unreachable(where, exc) from exc
    except safety.ConfigError as exc:
        return _refuse(exc)
    except startup.Unreachable as exc:
        return _unreachable(exc)
    except KeyboardInterrupt:
        return 130
    except StopFailed as exc:  # its tracebacks are logged already
        logging.getLogger("aoc").error("exiting with an error: %s", exc)
        return 1


def _settings(command: str) -> Settings:
    """Read the settings and configure logging; ``ConfigError`` if a value is invalid."""
    loaded = startup.load(command)
    settings = loaded.settings  # with errors: the valid values, for the log level
    logs.configure(level=settings.log_level, fmt=settings.log_format, process=command)
    for line in loaded.ignored:
        log.warning("%s", line)
    if loaded.errors:
        log.debug("invalid settings", exc_info=loaded.detail)
        raise safety.ConfigError("\n".join(loaded.errors))
    return settings


def _refuse(exc: safety.ConfigError) -> int:
    """A configuration error: one line per problem on stderr; no restart can cure it."""
    print(exc, file=sys.stderr)
    return startup.EXIT_CONFIG


def _unreachable(exc: startup.Unreachable) -> int:
    """A dependency that did not answer at start: one line; a later restart may find it."""
    log.debug("cannot start", exc_info=exc)
    print(f"cannot start: {exc}", file=sys.stderr)
    return startup.EXIT_UNREACHABLE


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
    managed = {"token": tokens_cli.run, "places": places_cli.run}
    if args.command in managed:
        return await managed[args.command](args, settings)
    if args.command == "up":
        from aoc.supervise import up

        return await up(settings)
    from aoc import lifecycle

    runners: dict[str, Callable[[Settings], Awaitable[int | None]]] = {
        "serve": lifecycle.serve,
        "bridge": (
            functools.partial(_retire, args) if getattr(args, "retire", False)
            else lifecycle.run_bridge
        ),
        "api": lifecycle.run_api,
        "realtime": lifecycle.run_realtime,
    }
    return await runners[args.command](settings)


async def _retire(args: argparse.Namespace, settings: Settings) -> int:
    """`aoc bridge --retire`: one line saying what the member's sessions held, or what is left."""
    from aoc import lifecycle

    try:
        retired = await lifecycle.retire_bridge(
            settings,
            timeout=args.timeout if args.timeout is not None else lifecycle.RETIRE_TIMEOUT_S,
            leaving=tuple(args.group),
        )
    except lifecycle.RetireIncomplete as exc:
        print(f"cannot retire bridge {settings.mqtt_client_id}: {exc}", file=sys.stderr)
        return 1
    if settings.mqtt_client_id in retired.absent:
        print(
            f"warning: the broker had no session for bridge {settings.mqtt_client_id} "
            "(session present: False): nothing to retire; is AOC_MQTT_CLIENT_ID the member's?",
            file=sys.stderr,
        )
        return 0
    print(
        f"retired bridge {settings.mqtt_client_id}: {retired.taken} queued message(s) stored or "
        "dead-lettered, its spool emptied, its sessions ended"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
