"""``aoc places import|list|remove`` as an operator runs it: a real process on a real store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from storage.base import AUDIT, PLACES, Query
from storage.sqlite import SQLiteDocumentStore
from tests.cli import as_json, run_aoc

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "places" / "chiang-mai.geojson"
HOSPITALS = ["bangkok-hospital-cm", "chiang-mai-ram", "maharaj-nakorn", "nakornping"]
STATIONS = ["station-nimman", "station-old-city", "station-san-kamphaeng"]


def aoc_places(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``aoc places <args>`` with the store in ``data_dir``, as operator ``ops-lead``."""
    return run_aoc("places", data_dir, *args)


async def test_import_list_remove_with_json_output(tmp_path: Path) -> None:
    """Test import (then again, and --replace), list --kind and remove, and the audit log."""
    data_dir = tmp_path / "data"
    added = as_json(aoc_places(data_dir, "import", str(EXAMPLE), "--json"))
    assert (added["added"], added["updated"], added["removed"]) == (7, 0, 0)
    again = as_json(aoc_places(data_dir, "import", str(EXAMPLE), "--json"))
    assert (again["added"], again["updated"]) == (0, 7)
    listed = as_json(aoc_places(data_dir, "list", "--kind", "station", "--json"))
    assert [f["id"] for f in listed] == STATIONS
    assert {f["geometry"]["type"] for f in listed} == {"Point"}
    assert {f["properties"]["radius_m"] for f in listed} == {80.0}
    removed = as_json(aoc_places(data_dir, "remove", "nakornping", "--json"))
    assert removed["id"] == "nakornping"
    assert removed["properties"]["removed_at"] is not None
    left = as_json(aoc_places(data_dir, "list", "--json"))
    # One updated_at for all: in the store's order, by id.
    assert [f["id"] for f in left] == [i for i in HOSPITALS + STATIONS if i != "nakornping"]

    only_one = tmp_path / "one.geojson"
    collection = json.loads(EXAMPLE.read_text())
    only_one.write_text(json.dumps({**collection, "features": collection["features"][:1]}))
    replaced = as_json(aoc_places(data_dir, "import", str(only_one), "--replace", "--json"))
    assert (replaced["added"], replaced["updated"], replaced["removed"]) == (0, 1, 5)
    assert [f["id"] for f in as_json(aoc_places(data_dir, "list", "--json"))] == [
        "maharaj-nakorn"
    ]
    async with SQLiteDocumentStore(data_dir / "aoc.sqlite3") as store:
        stored = [doc async for doc in store.scan(PLACES)]
        audit = (await store.find(Query(AUDIT, limit=10))).items
    assert len(stored) == 7  # tombstones, never deleted
    assert [(r["actor"], r["action"], r["target"]) for r in audit] == [
        ("ops-lead", "places.import", "places"),
        ("ops-lead", "places.import", "places"),
        ("ops-lead", "places.remove", "nakornping"),
        ("ops-lead", "places.import", "places"),
    ]


def test_text_output_and_errors(tmp_path: Path) -> None:
    """Test the text summary, and that each refusal is one line on stderr and status 1."""
    data_dir = tmp_path / "data"
    done = aoc_places(data_dir, "import", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"places from {EXAMPLE}: 7 added, 0 updated"
    text = aoc_places(data_dir, "list", "--kind", "hospital").stdout.splitlines()
    assert [line.split("\t")[0] for line in text] == HOSPITALS
    assert text[0].endswith("\tpolygon")

    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "Feature", "id": "x", "properties": {"name": "X"},
                               "geometry": {"type": "Point", "coordinates": [98.9, 18.7]}}))
    refusals = [
        (("import", str(tmp_path / "missing.geojson")),
         f"aoc places import: cannot read {tmp_path / 'missing.geojson'}: No such file or "
         "directory"),
        (("import", str(bad)),
         "aoc places import: feature 0 ('x'): a Point is a circle and needs a radius_m property "
         "in metres, above 0 and at most 50000"),
        (("remove", "no-such-place"), "aoc places remove: no place 'no-such-place'"),
    ]
    for args, line in refusals:
        failed = aoc_places(data_dir, *args)
        assert failed.returncode == 1
        assert failed.stderr.splitlines() == [line]
        assert failed.stdout == ""
    not_json = tmp_path / "not.geojson"
    not_json.write_text("{")
    failed = aoc_places(data_dir, "import", str(not_json))
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"aoc places import: {not_json} is not JSON: ")
    assert len(failed.stderr.splitlines()) == 1
