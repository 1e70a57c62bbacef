"""The OpenAPI schema tells the truth: a schemathesis run against the live server checks that
every answer's status, media type, body and headers are those the schema documents, and that
data the schema forbids is refused with a 4xx. Bounded: a few examples per operation."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from live_server import start_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    # Small budgets and a short timeout: valid creates queue or finish quickly instead of hogging the machine.
    live = start_server(tmp_path_factory.mktemp("openapi") / "data", "--max-running-requests", "2",
                        "--max-waiting-requests", "4", "--max-tokens-per-forward", "12000", "--max-upload-mb", "1",
                        "--request-timeout", "5")
    yield live
    live.stop()


def operations(api_server) -> list:
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.path != "/v1/videos/sync"]  # it waits for a whole video


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_one_the_schema_documents(api_server, mode):
    """For each operation, data the schema allows (positive) and forbids (negative, which must be
    a 4xx): every answer's status, media type, body and headers as documented, never a 5xx."""
    checked = []
    for operation in operations(api_server):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # an operation without constrained inputs (GET /health) has no invalid data
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        checked.append(operation.label)
    assert {"POST /v1/videos", "GET /v1/videos"} <= set(checked), checked


def test_the_schema_documents_errors_and_the_key(api_server):
    document = httpx.get(f"{api_server.url}/openapi.json").json()
    assert document["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    create = document["paths"]["/v1/videos"]["post"]
    for status in ("401", "413", "415", "422", "429", "503", "507"):
        assert create["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}, status
    assert "security" not in document["paths"]["/health"]["get"]
