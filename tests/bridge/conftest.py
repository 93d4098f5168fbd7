"""Fixtures of the bridge tests: a real SQLite store and a real local object store per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteDocumentStore]:
    async with SQLiteDocumentStore(tmp_path / "aoc.sqlite3") as opened:
        yield opened  # type: ignore[misc]


@pytest.fixture
async def objects(tmp_path: Path) -> AsyncIterator[LocalObjectStore]:
    async with LocalObjectStore(tmp_path / "objects") as opened:
        yield opened  # type: ignore[misc]
