"""`aoc simulate`: a fleet of simulated ambulances, each on its own device account."""

from __future__ import annotations

import argparse
import sys

from aoc import manage, tls
from aoc.config import Settings
from sim.fleet import AccountRefused, ambulance_ids, simulate


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the simulation ``args`` describe; the exit code (one line on stderr if not 0)."""
    try:
        # Each simulated device logs in with its own account (from the credentials file).
        passwords = await manage.simulator_passwords(
            settings, ambulance_ids(args.prefix, args.ambulances)
        )
    except manage.ManageError as exc:
        print(f"aoc simulate: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        stats = await simulate(
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
        )
    except AccountRefused as exc:
        path = settings.resolved_credentials_file
        hint = (
            f"the passwords come from {path}"
            if passwords is not None
            else f"without {path} (`aoc up` writes it) the devices connect anonymously"
        )
        print(f"aoc simulate: {exc}; {hint}", file=sys.stderr)
        return 1
    print(stats, file=sys.stderr)
    return 0
