"""``aoc token add|list|revoke``: HTTP and Socket.IO tokens, managed in the document store.

``add`` prints the new token once (only its hash is stored); every change is
recorded in the audit log with ``AOC_OPERATOR`` (else the OS user) as the
actor. ``--json`` prints one JSON document on stdout; errors are one line on
stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aoc.config import Settings


def add_parser(commands: Any) -> None:
    """Register ``aoc token`` on the ``aoc`` command's subparsers."""
    token = commands.add_parser("token", help="manage HTTP and Socket.IO tokens")
    actions = token.add_subparsers(dest="token_command", required=True)
    add = actions.add_parser("add", help="create a token (printed once)")
    add.add_argument("name", help="a unique name among live tokens (e.g. kiosk-3)")
    add.add_argument(
        "--rooms",
        default=None,
        help="comma-separated ambulance ids the token may read (default: every ambulance)",
    )
    add.add_argument(
        "--dispatch",
        action="store_true",
        help="it may also set destinations and acknowledge or resolve alarms (of the "
        "ambulances it reads); without it a token is read-only",
    )
    listing = actions.add_parser("list", help="every token, without its secret")
    revoke = actions.add_parser("revoke", help="revoke the live token of this name at once")
    revoke.add_argument("name")
    for sub in (add, listing, revoke):
        sub.add_argument("--json", action="store_true", help="print JSON")


def _rooms(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [room.strip() for room in text.split(",") if room.strip()]


def _print(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``aoc token <action>``; exit status 1 (one line on stderr) when it cannot."""
    # Local imports: the parser is built on every `aoc` start, the store only here.
    from aoc import audit  # noqa: PLC0415
    from api import tokens  # noqa: PLC0415
    from storage import open_document_store  # noqa: PLC0415

    actor = audit.operator(settings.operator)
    store = open_document_store(settings.resolved_store_url, database=settings.mongodb_database)
    async with store:
        try:
            if args.token_command == "add":
                secret = await tokens.create_token(
                    store, args.name, _rooms(args.rooms), actor, dispatch=args.dispatch
                )
                info = await tokens.verify_token(store, secret)
                assert info is not None
                rooms = "every ambulance" if info.rooms is None else ", ".join(info.rooms)
                may = "reads and dispatches" if info.dispatch else "reads"
                _print(
                    args,
                    {**info.as_json(), "token": secret},
                    f"token {info.name} ({may} {rooms}):\n{secret}\n"
                    "It is shown only now: store it where its client will read it.",
                )
            elif args.token_command == "list":
                found = await tokens.list_tokens(store)
                lines = [
                    f"{t.name}\t{'every ambulance' if t.rooms is None else ','.join(t.rooms)}"
                    f"\t{'dispatch' if t.dispatch else 'read-only'}"
                    f"\tcreated {t.created_at:%Y-%m-%d %H:%M}"
                    + (f"\trevoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "")
                    for t in found
                ]
                _print(args, [t.as_json() for t in found], "\n".join(lines) or "no tokens")
            else:
                info = await tokens.revoke_token(store, args.name, actor)
                _print(args, info.as_json(), f"revoked token {info.name}")
        except tokens.TokenError as exc:
            print(f"aoc token {args.token_command}: {exc}", file=sys.stderr)
            return 1
    return 0
