"""``aoc token add|list|revoke`` as an operator runs it: a real process on a real store."""

from __future__ import annotations

import subprocess
from pathlib import Path

from api.tokens import verify_token
from storage.base import AUDIT, Query
from storage.sqlite import SQLiteDocumentStore
from tests.cli import as_json, run_aoc


def aoc_token(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``aoc token <args>`` with the store in ``data_dir``, as operator ``ops-lead``."""
    return run_aoc("token", data_dir, *args)


async def test_add_list_revoke_with_json_output(tmp_path: Path) -> None:
    """Test the --json documents of each action, and that the printed token is the live one."""
    data_dir = tmp_path / "data"
    added = as_json(aoc_token(data_dir, "add", "kiosk", "--rooms", "AMB-1, AMB-2", "--json"))
    assert set(added) == {"name", "rooms", "dispatch", "created_at", "revoked_at", "token"}
    assert (added["name"], added["rooms"], added["revoked_at"]) == (
        "kiosk", ["AMB-1", "AMB-2"], None
    )
    ops = as_json(aoc_token(data_dir, "add", "ops", "--json"))
    assert ops["rooms"] is None
    listed = as_json(aoc_token(data_dir, "list", "--json"))
    assert [(t["name"], t["rooms"], t["revoked_at"]) for t in listed] == [
        ("kiosk", ["AMB-1", "AMB-2"], None),
        ("ops", None, None),
    ]
    assert all("token" not in t for t in listed)  # shown once, at add only
    revoked = as_json(aoc_token(data_dir, "revoke", "kiosk", "--json"))
    assert revoked["name"] == "kiosk"
    assert revoked["revoked_at"] is not None
    async with SQLiteDocumentStore(data_dir / "aoc.sqlite3") as store:
        assert await verify_token(store, added["token"]) is None
        live = await verify_token(store, ops["token"])
        assert live is not None
        assert live.name == "ops"
        audit = (await store.find(Query(AUDIT, limit=10))).items
    assert [(r["actor"], r["action"], r["target"]) for r in audit] == [
        ("ops-lead", "token.add", "kiosk"),
        ("ops-lead", "token.add", "ops"),
        ("ops-lead", "token.revoke", "kiosk"),
    ]
    assert added["token"] not in repr(audit)


def test_text_output_and_errors(tmp_path: Path) -> None:
    """Test that add prints the token once in text, and a refusal is one line and status 1."""
    data_dir = tmp_path / "data"
    added = aoc_token(data_dir, "add", "board")
    assert added.returncode == 0, added.stderr
    token_lines = [line for line in added.stdout.splitlines() if line.startswith("aoc_")]
    assert len(token_lines) == 1
    assert "board" in aoc_token(data_dir, "list").stdout
    assert token_lines[0] not in aoc_token(data_dir, "list").stdout
    for args, message in (
        (("add", "board"), "aoc token add: a token named 'board' exists: revoke it first"),
        (("revoke", "nobody"), "aoc token revoke: no live token named 'nobody'"),
        (("add", "x", "--rooms", "snap"), "aoc token add: room 'snap': "),
    ):
        refused = aoc_token(data_dir, *args)
        assert refused.returncode == 1, args
        assert refused.stdout == ""
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith(message), refused.stderr


async def test_dispatch_tokens_are_made_listed_and_audited(tmp_path: Path) -> None:
    """Test ``add --dispatch``: the stored permission, the listing (text and JSON), the audit."""
    data_dir = tmp_path / "data"
    desk = as_json(aoc_token(data_dir, "add", "desk", "--dispatch", "--json"))
    assert desk["dispatch"] is True
    crew = aoc_token(data_dir, "add", "crew", "--rooms", "AMB-1", "--dispatch")
    assert crew.returncode == 0, crew.stderr
    assert "(reads and dispatches AMB-1)" in crew.stdout
    as_json(aoc_token(data_dir, "add", "wall", "--json"))
    listed = as_json(aoc_token(data_dir, "list", "--json"))
    assert [(t["name"], t["dispatch"]) for t in listed] == [
        ("desk", True), ("crew", True), ("wall", False)
    ]
    text = aoc_token(data_dir, "list").stdout.splitlines()
    assert [line.split("\t")[:3] for line in text] == [
        ["desk", "every ambulance", "dispatch"],
        ["crew", "AMB-1", "dispatch"],
        ["wall", "every ambulance", "read-only"],
    ]
    async with SQLiteDocumentStore(data_dir / "aoc.sqlite3") as store:
        info = await verify_token(store, desk["token"])
        audit = (await store.find(Query(AUDIT, limit=10))).items
    assert info is not None and info.dispatch
    assert [(r["target"], r["details"]["dispatch"]) for r in audit] == [
        ("desk", True), ("crew", True), ("wall", False)
    ]
