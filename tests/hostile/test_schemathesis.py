"""schemathesis against the application's own OpenAPI description.

Every operation of ``/openapi.json`` gets requests generated from its schema
(valid ones and, in negative mode, invalid ones). Each is sent in-process to
the real application (see conftest), and its response must not be a 5xx and
must conform to the description: a documented status code, content type,
headers and body schema. Nothing may be written outside the data directory,
and after each case good reads (an ambulance, its image) still answer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aoc.config import Settings
from api import ApiDeps, create_app
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests.hostile.conftest import Served, assert_good_reads_work
from tests.hostile.strategies import bounded

BASE_URL = "http://testserver"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _description() -> dict[str, Any]:
    """The application's OpenAPI description (its routes only: no store is opened)."""
    path = Path(tempfile.gettempdir()) / "aoc-hostile-unused"  # never created
    settings = Settings(_env_file=None, data_dir=path)  # type: ignore[call-arg]
    deps = ApiDeps(
        settings=settings, store=SQLiteDocumentStore(path / "db"), objects=LocalObjectStore(path)
    )
    description: dict[str, Any] = create_app(deps).openapi()
    return description


# Loaded at import, not with schemathesis.pytest.from_fixture: its lazy loader
# sets pytest's private Node._nodeid, which pytest 9.2 no longer has.
schema = schemathesis.openapi.from_dict(_description())


def send(served: Served, case: schemathesis.Case) -> object:
    """Send ``case`` exactly as schemathesis's requests transport would encode it."""
    # With the read token (schemathesis generates no credentials of its own).
    options = case.as_transport_kwargs(
        base_url=BASE_URL, headers={"Authorization": f"Bearer {served.token}"}
    )
    prepared = requests.Request(
        method=options["method"],
        url=options["url"],
        headers=options.get("headers"),
        params=options.get("params"),
        cookies=options.get("cookies"),
        data=options.get("data"),
        json=options.get("json"),
        files=options.get("files"),
    ).prepare()
    headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
    return served.request(prepared.method or "GET", prepared.url or BASE_URL, headers=headers,
                          content=prepared.body)


@schema.parametrize()
@settings(parent=bounded(20))
def test_every_operation_answers_as_described(served: Served, case: schemathesis.Case) -> None:
    watch = served.watch()
    response = send(served, case)
    case.validate_response(response, checks=CHECKS)  # type: ignore[arg-type]
    assert_good_reads_work(served)
    assert watch.escaped() == []
