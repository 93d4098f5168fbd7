"""`aoc simulate`: a fleet of simulated ambulances, each on its own device account.

The parser is here, the fleet in ``sim.fleet``: that package is imported only
when the command runs, so that parsing the command line (which every process
does) never loads the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aoc import bootstrap, credentials, manage, tls
from aoc.config import Settings

if TYPE_CHECKING:
    from sim.dispatch import Dispatcher
    from sim.fleet import SimStats

# Long enough for `aoc up` to restart its broker, short enough to notice a wrong port.
GIVE_UP_AFTER = 30.0


def _number(
    kind: Callable[[str], float], check: Callable[[float], bool], what: str
) -> Callable[[str], float]:
    """An argparse type: ``kind`` of the text, refused unless finite and ``check`` holds."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and check(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


POSITIVE_INT = _number(int, lambda v: v >= 1, "a whole number of at least 1")
POSITIVE = _number(float, lambda v: v > 0, "a number above 0")
NOT_NEGATIVE = _number(float, lambda v: v >= 0, "a number of at least 0")
ANY_NUMBER = _number(float, lambda v: True, "a number")
PROBABILITY = _number(float, lambda v: 0 <= v <= 1, "a probability between 0 and 1")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `aoc simulate` on the ``aoc`` command's subcommands."""
    sim = commands.add_parser("simulate", help="publish realistic device traffic over MQTT")
    sim.set_defaults(simulate_parser=sim)
    # The defaults are the fleet whose accounts `aoc up` makes at first start.
    sim.add_argument(
        "--ambulances", type=POSITIVE_INT, default=bootstrap.SIMULATOR_AMBULANCES,
        help="number of vehicles (default: %(default)s)",
    )
    sim.add_argument(
        "--rate", type=POSITIVE, default=1.0,
        help="tracking points per second each (default: %(default)s)",
    )
    sim.add_argument(
        "--duration", type=NOT_NEGATIVE, default=None, help="seconds (default: until Ctrl-C)"
    )
    sim.add_argument(
        "--snap-every", type=ANY_NUMBER, default=30.0,
        help="seconds between snapshots; 0: none (default: %(default)s)",
    )
    sim.add_argument(
        "--crash-probability", type=PROBABILITY, default=0.0005,
        help="per point (default: %(default)s)",
    )
    sim.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    sim.add_argument(
        "--prefix", default=bootstrap.SIMULATOR_PREFIX,
        help="ambulance id prefix (default: %(default)s)",
    )
    sim.add_argument(
        "--give-up-after", type=POSITIVE, default=GIVE_UP_AFTER, metavar="SECONDS",
        help="stop with exit code 1 when the broker stays unreachable this long "
        "(default: %(default)s)",
    )
    sim.add_argument(
        "--progress-every", type=NOT_NEGATIVE, default=10.0, metavar="SECONDS",
        help="when stderr is not a terminal, a progress line this often; 0: none "
        "(on a terminal the line is live; default: %(default)s)",
    )
    sim.add_argument(
        "--time-scale", type=POSITIVE, default=1.0, metavar="FACTOR",
        help="simulated seconds per second: the vehicles move this much faster, the speeds "
        "they report stay their own, so ETAs run long (default: %(default)s)",
    )
    places = sim.add_argument_group(
        "dispatch between places",
        # Broken by hand: the subcommands' help keeps the description's lines as they are.
        "With --places the ambulances start parked at stations and drive to hospitals\n"
        "and back; before each trip its destination is set through the HTTP API, with\n"
        "a dispatch token. The summary adds the destinations set and, read from the API\n"
        "at the end, the fleet's arrivals, enters and active alarms.",
    )
    places.add_argument(
        "--places", type=Path, default=None, metavar="FILE.geojson",
        help="drive between the places of this GeoJSON file "
        "(e.g. examples/places/chiang-mai.geojson)",
    )
    places.add_argument(
        "--import-places", action="store_true",
        help="first POST the file to /api/v1/places (needs --places)",
    )
    places.add_argument(
        "--api-url", default=None, metavar="URL",
        help="the HTTP API (default: AOC_PUBLIC_URL, else http://127.0.0.1:<AOC_HTTP_PORT>)",
    )
    places.add_argument(
        "--token", default=None,
        help="a dispatch token (default: api_token of the credentials file `aoc up` writes)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the simulation ``args`` describe; the exit code.

    0: everything was sent; 1: some publishes or connections failed (the
    summary says how many), the broker stayed unreachable or refused an
    account (one line says so); 2: arguments, or a credentials file, that do
    not allow a run.
    """
    from sim import fleet  # noqa: PLC0415 (see the module's docstring)

    try:  # what argparse cannot check alone: the ids that prefix and count make
        fleet.check_arguments(
            ambulances=args.ambulances, rate=args.rate, duration=args.duration,
            crash_probability=args.crash_probability, id_prefix=args.prefix,
        )
    except ValueError as exc:
        args.simulate_parser.error(str(exc))  # usage and exit code 2, as argparse's own
    places = None
    if args.places is not None:
        from sim.places import load_places  # noqa: PLC0415 (as sim.fleet)

        try:
            places = load_places(args.places)
        except ValueError as exc:
            args.simulate_parser.error(str(exc))
    elif args.import_places:
        args.simulate_parser.error("--import-places needs --places")
    try:
        dispatcher = _dispatcher(args, settings) if places is not None else None
    except credentials.CredentialsError as exc:
        print(f"aoc simulate: {exc}", file=sys.stderr)
        return 2
    if dispatcher is not None and args.import_places:
        await dispatcher.import_places(json.loads(args.places.read_text()))
    started = datetime.now(UTC)
    try:
        # Each simulated device logs in with its own account (from the credentials file).
        passwords = await manage.simulator_passwords(
            settings, fleet.ambulance_ids(args.prefix, args.ambulances)
        )
    except manage.ManageError as exc:
        print(f"aoc simulate: {exc}", file=sys.stderr)
        return exc.exit_code
    stats = fleet.SimStats()
    try:
        await fleet.simulate(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            ambulances=args.ambulances,
            rate=args.rate,
            duration=args.duration,
            passwords=passwords,
            snap_every=args.snap_every,
            crash_probability=args.crash_probability,
            seed=args.seed,
            id_prefix=args.prefix,
            tls=tls.client_context(settings),
            give_up_after=args.give_up_after,
            progress_every=args.progress_every,
            stats=stats,
            places=places,
            time_scale=args.time_scale,
            dispatcher=dispatcher,
        )
    except fleet.AccountRefused as exc:
        path = settings.resolved_credentials_file
        hint = (
            f"the passwords come from {path}"
            if passwords is not None
            else f"without {path} (`aoc up` writes it) the devices connect anonymously"
        )
        print(f"aoc simulate: {exc}; {hint}", file=sys.stderr)
        return 1
    except fleet.BrokerUnreachable as exc:
        if stats.sent:  # it ran a while before the broker went away
            _summary(stats)
        print(f"aoc simulate: {exc}; giving up", file=sys.stderr)
        return 1
    except asyncio.CancelledError:  # Ctrl-C: what was sent until then, and the exit code 130
        _summary(stats, dispatcher)
        raise
    if dispatcher is not None:
        await asyncio.sleep(_SETTLE)
        await dispatcher.read_back(fleet.ambulance_ids(args.prefix, args.ambulances), started)
    _summary(stats, dispatcher)
    return 1 if stats.errors else 0


# How long the bridge gets to store the last points before the events are read back.
_SETTLE = 1.0


def _dispatcher(args: argparse.Namespace, settings: Settings) -> Dispatcher | None:
    """The API client of --places; None (said once) without a token to dispatch with."""
    from sim.dispatch import Dispatcher  # noqa: PLC0415 (as sim.fleet)

    token = args.token
    path = settings.resolved_credentials_file
    if token is None and path.exists():
        token = credentials.load(path).data.get("api_token")
    if not token:
        print(
            f"aoc simulate: no dispatch token (--token, or api_token in {path}): "
            "the ambulances drive between the places without destinations",
            file=sys.stderr,
        )
        return None
    # Not listed among the command's settings: AOC_HTTP_PORT is the services' own, and a
    # bad value falls back to the default here (the --api-url help names it).
    url = args.api_url or settings.public_url or f"http://127.0.0.1:{settings.http_port}"
    return Dispatcher(url, str(token))


def _summary(stats: SimStats, dispatcher: Dispatcher | None = None) -> None:
    # "done:" tells the summary from the last progress line, which may read the same.
    print(f"[simulate] done: {stats}", file=sys.stderr)
    if dispatcher is not None:
        print(f"[simulate] dispatch: {dispatcher.stats}", file=sys.stderr)
