"""The audit log is stored by every backend and read back in order."""

from __future__ import annotations

from aoc import audit
from storage.base import AUDIT, DocumentStore, Query


async def test_a_change_is_recorded_with_who_what_and_when(doc_store: DocumentStore) -> None:
    await audit.record(doc_store, actor="os:alice", action="device.add", target="AMB-1")
    await audit.record(
        doc_store, actor="token:ops", action="token.revoke", target="kiosk", details={"rooms": 2}
    )
    page = await doc_store.find(Query(AUDIT, limit=10))
    assert [(d["actor"], d["action"], d["target"]) for d in page.items] == [
        ("os:alice", "device.add", "AMB-1"),
        ("token:ops", "token.revoke", "kiosk"),
    ]
    assert page.items[1]["details"] == {"rooms": 2}
    assert page.items[0]["at"] <= page.items[1]["at"]


def test_the_operator_is_the_configured_name_or_the_os_user() -> None:
    assert audit.operator("dispatch-lead") == "dispatch-lead"
    assert audit.operator("").startswith("os:")


async def test_changes_read_back_in_the_order_made(doc_store: DocumentStore) -> None:
    """Test that many changes within one millisecond (MongoDB's precision) keep their order."""
    for n in range(30):
        await audit.record(doc_store, actor="os:alice", action="device.add", target=f"AMB-{n}")
    page = await doc_store.find(Query(AUDIT, limit=100))
    assert [d["target"] for d in page.items] == [f"AMB-{n}" for n in range(30)]
