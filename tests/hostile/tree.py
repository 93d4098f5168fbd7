"""Proof that hostile input wrote nothing outside the data directory.

A ``Watch`` lists the files and directories around a data directory before a
run; ``escaped()`` lists what appeared afterwards anywhere but inside it. The
watched trees are the test's own directory (what a ``../`` from the data
directory reaches first), the entries of pytest's base directory (a few more
``../``), and the absolute canary path hostile names aim at.
"""

from __future__ import annotations

from pathlib import Path

from tests.hostile.strategies import CANARY_DIR


def _tree(root: Path) -> set[Path]:
    return {root, *root.rglob("*")} if root.exists() else set()


class Watch:
    """What exists around ``data_dir`` now, to compare with what exists later."""

    def __init__(self, data_dir: Path, *, test_dir: Path, base_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.test_dir = test_dir.absolute()
        self.base_dir = base_dir.absolute()
        self.before = self._snapshot()

    def _snapshot(self) -> set[Path]:
        inside_test = {p for p in _tree(self.test_dir) if not p.is_relative_to(self.data_dir)}
        # The base directory's direct entries only: session services (Mosquitto,
        # Redis) write inside their own directories there while tests run.
        return inside_test | set(self.base_dir.iterdir()) | _tree(Path(CANARY_DIR))

    def escaped(self) -> list[Path]:
        """Paths that appeared outside the data directory since the watch began."""
        return sorted(self._snapshot() - self.before)
