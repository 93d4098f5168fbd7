"""``aoc places import|list|remove``: hospitals, stations and other places, in the document store.

``import FILE.geojson`` upserts the file's places (``--replace``: and removes
the stored ones it does not name); ``remove ID`` stores a tombstone, never
deletes. Every change is recorded in the audit log with ``AOC_OPERATOR``
(else the OS user) as the actor. ``--json`` prints one JSON document on
stdout; errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aoc.config import Settings


def add_parser(commands: Any) -> None:
    """Register ``aoc places`` on the ``aoc`` command's subparsers."""
    places = commands.add_parser("places", help="manage places (hospitals, stations, areas)")
    actions = places.add_subparsers(dest="places_command", required=True)
    load = actions.add_parser("import", help="add or update the places of a GeoJSON file")
    load.add_argument("file", type=Path, help="a GeoJSON FeatureCollection or Feature")
    load.add_argument(
        "--replace", action="store_true", help="also remove the stored places the file lacks"
    )
    listing = actions.add_parser("list", help="the live places")
    listing.add_argument("--kind", default=None, help="only this kind (e.g. hospital)")
    remove = actions.add_parser("remove", help="remove a place (kept as a tombstone)")
    remove.add_argument("id")
    for sub in (load, listing, remove):
        sub.add_argument("--json", action="store_true", help="print JSON")


def _print(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)


def _read(path: Path) -> object:
    """The parsed file; ``ValueError`` saying why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``aoc places <action>``; exit status 1 (one line on stderr) when it cannot."""
    # Local imports: the parser is built on every `aoc` start, the store and shapely only here.
    from aoc import audit  # noqa: PLC0415
    from bridge import places_store  # noqa: PLC0415
    from bridge.places import place_feature, places_from_geojson  # noqa: PLC0415
    from storage import open_document_store  # noqa: PLC0415

    try:
        # Parsed before the store opens: a bad file changes nothing.
        parsed = places_from_geojson(_read(args.file)) if args.places_command == "import" else []
    except ValueError as exc:  # PlaceError is one
        print(f"aoc places import: {exc}", file=sys.stderr)
        return 1
    actor = audit.operator(settings.operator)
    store = open_document_store(settings.resolved_store_url, database=settings.mongodb_database)
    async with store:
        if args.places_command == "import":
            result = await places_store.import_places(
                store, parsed, actor=actor, replace=args.replace
            )
            text = f"{len(result.added)} added, {len(result.updated)} updated"
            if args.replace:
                text += f", {len(result.removed)} removed"
            _print(args, result.as_json(), f"places from {args.file}: {text}")
        elif args.places_command == "list":
            found = await places_store.list_places(store, args.kind)
            lines = [
                f"{p.id}\t{p.kind}\t{p.name}\t"
                + (f"circle {p.radius_m:g} m" if p.radius_m is not None else "polygon")
                for p in found
            ]
            _print(args, [place_feature(p) for p in found], "\n".join(lines) or "no places")
        else:
            try:
                removed = await places_store.remove_place(store, args.id, actor=actor)
            except places_store.PlaceNotFound as exc:
                print(f"aoc places remove: {exc.args[0]}", file=sys.stderr)
                return 1
            _print(args, place_feature(removed), f"removed place {removed.id} ({removed.name})")
    return 0
