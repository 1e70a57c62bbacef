"""The OpenAPI schema tells the truth: a schemathesis run against the live server checks that
every answer's status, media type, body and headers are those the schema documents, and that
data the schema forbids is refused with a 4xx. Bounded: a few examples per operation.

It is also complete and readable offline: every request field has a description, a range and
an example; the schema is valid OpenAPI 3.1; /docs and /redoc load nothing from elsewhere; the
README's API table lists exactly the schema's routes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import httpx
import jsonschema
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
from schemathesis.specs.openapi.definitions import OPENAPI_31  # the OpenAPI Initiative's 3.1 schema
from starlette.routing import WebSocketRoute

from helios_serve.entrypoints.openai.protocol import VideoCreateRequest, VideoExtendRequest, VideoPromptRequest
from live_server import start_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
EXAMPLES_PER_OPERATION = 25
README = Path(__file__).resolve().parents[1] / "README.md"


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


# -- complete: every request field described, bounded, exemplified ------------------------------

UNBOUNDED = {"model": "its values are the served model names (GET /v1/models), which the schema does not know"}
BODY_MODELS = {"VideoCreateRequest": VideoCreateRequest, "VideoPromptRequest": VideoPromptRequest,
               "VideoExtendRequest": VideoExtendRequest}


@pytest.fixture(scope="module")
def document(api_server) -> dict:
    return httpx.get(f"{api_server.url}/openapi.json").json()


def request_bodies(document: dict) -> dict[str, tuple[str, dict]]:
    """``"POST /v1/videos multipart/form-data"`` -> (schema name, media type object), for every body."""
    bodies = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
                name = content["schema"]["$ref"].removeprefix("#/components/schemas/")
                bodies[f"{method.upper()} {path} {media_type}"] = (name, content)
    return bodies


def validator(document: dict, pointer: str) -> jsonschema.Draft202012Validator:
    """A validator of the schema at ``pointer`` in ``document`` (its $refs resolve in the document)."""
    return jsonschema.Draft202012Validator({"$ref": f"#{pointer}", "components": document["components"]})


def bounded(prop: dict) -> bool:
    """Whether a property's schema says which values it takes (a range, a pattern, a set)."""
    kinds = [prop, *prop.get("anyOf", ())]
    if any(kind.get("type") == "boolean" or "enum" in kind or "const" in kind or "pattern" in kind
           or kind.get("format") == "binary" or "propertyNames" in kind for kind in kinds):
        return True
    numbers = [kind for kind in kinds if kind.get("type") in ("integer", "number")]
    strings = [kind for kind in kinds if kind.get("type") == "string"]
    arrays = [kind for kind in kinds if kind.get("type") == "array"]
    return bool(numbers or strings or arrays) and all(
        ("minimum" in kind or "exclusiveMinimum" in kind) and "maximum" in kind for kind in numbers) and all(
        "maxLength" in kind for kind in strings) and all("maxItems" in kind for kind in arrays)


def test_every_request_field_has_a_description_a_range_and_an_example(document):
    bodies = request_bodies(document)
    assert {"POST /v1/videos application/json", "POST /v1/videos multipart/form-data",
            "POST /v1/videos/{video_id}/extend application/json"} <= set(bodies), sorted(bodies)
    for body, (name, _) in bodies.items():
        properties = document["components"]["schemas"][name]["properties"]
        assert len(properties) >= 2, body
        for field, prop in properties.items():
            where = f"{body}: {field}"
            assert prop.get("description", "").strip(), f"{where} has no description"
            assert bounded(prop) or field in UNBOUNDED, f"{where} has no range or set of values: {prop}"
            if prop.get("format") == "binary":
                continue  # a file upload: Swagger UI shows a file picker, no text to exemplify
            assert prop.get("examples"), f"{where} has no example"
            check = validator(document, f"/components/schemas/{name}/properties/{field}")
            errors = [error.message for example in prop["examples"] for error in check.iter_errors(example)]
            assert not errors, f"{where}: its example is outside its own schema: {errors}"


def test_each_body_example_is_a_valid_request(document):
    """The example Swagger UI's "Try it out" starts from passes the schema and the server's own
    validation (an example built from the fields' own would not: some exclude each other)."""
    for body, (name, content) in request_bodies(document).items():
        if "multipart" in body:
            continue  # a form has no body example: Swagger UI fills each field with the field's own
        example = content["example"]
        errors = [error.message for error in validator(document, f"/components/schemas/{name}").iter_errors(example)]
        assert not errors, f"{body}: {errors}"
        BODY_MODELS[name].model_validate(example)


def test_the_multipart_body_documents_exactly_what_a_form_can_carry(api_server, document):
    """Files instead of data URLs; the JSON body's other fields as they are, prompt_schedule too: an
    array part is JSON text (OpenAPI's default encoding), which the server reads."""
    schemas = document["components"]["schemas"]
    form, json_body = schemas["VideoCreateForm"]["properties"], schemas["VideoCreateRequest"]["properties"]
    assert set(form) == set(json_body)
    for field in ("input_reference", "video_reference"):
        assert form[field]["format"] == "binary" and any("pattern" in kind for kind in json_body[field]["anyOf"])
    assert form["prompt_schedule"] == json_body["prompt_schedule"]
    schedule = [{"from_chunk": 0, "prompt": "a fox", "transition_chunks": 0}]
    created = httpx.post(f"{api_server.api}/videos", files={"prompt": (None, "a fox"), "num_frames": (None, "33"),
                                                              "size": (None, "128x64"),
                                                              "prompt_schedule": (None, json.dumps(schedule))})
    assert created.status_code == 200, created.text


def test_the_schema_is_valid_openapi_3_1(document):
    """The document against the OpenAPI 3.1 schema; each component (whose inside that schema leaves
    open) against JSON Schema 2020-12, the dialect of OpenAPI 3.1."""
    assert document["openapi"].startswith("3.1")
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise AssertionError(f"components.schemas.{name}: {error.message}") from None


# -- readable offline: /docs and /redoc ------------------------------------------------------------

REFERENCE = re.compile(r"""(?:\bsrc|\bhref|\bspec-url)="([^"]*)"|\burl: '([^']*)'""")
"""A URL the page loads: a script, style sheet or icon, and the schema (Swagger UI's ``url``,
ReDoc's ``spec-url``)."""
MEDIA_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",),
               ".png": ("image/png",), ".json": ("application/json",)}


def page_references(html: str) -> list[str]:
    return [next(url for url in match.groups() if url is not None) for match in REFERENCE.finditer(html)]


def content_security_policy(answer: httpx.Response) -> dict[str, set[str]]:
    directives = [part.split() for part in answer.headers["content-security-policy"].split(";") if part.strip()]
    return {name: set(sources) for name, *sources in directives}


def script_hash(script: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_reference_loads_only_from_the_server(api_server, page):
    """Without internet the pages work: nothing they load is elsewhere (FastAPI's own load from a
    CDN), and each thing answers 200 with the media type a browser requires of it."""
    answer = httpx.get(f"{api_server.url}{page}")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?:|//", re.sub(r"<!--.*?-->", "", answer.text, flags=re.DOTALL)), answer.text
    # The browser holds the page to it too: only this server, and the page's own inline script.
    policy = content_security_policy(answer)
    inline_scripts = re.findall(r"<script>(.*?)</script>", answer.text, flags=re.DOTALL)
    assert policy["default-src"] == {"'self'"} and policy["connect-src"] == {"'self'"}
    assert policy["script-src"] == {"'self'", *map(script_hash, inline_scripts)}
    assert all(source in ("'self'", "'unsafe-inline'", "'none'", "data:", "blob:") or source.startswith("'sha256-")
               for sources in policy.values() for source in sources), policy
    references = page_references(answer.text)
    assert {Path(url).suffix for url in references} >= {".js", ".png", ".json"}, references
    for url in references:
        assert url.startswith("/"), url
        asset = httpx.get(f"{api_server.url}{url}")
        assert asset.status_code == 200, url
        media_type = asset.headers["content-type"].split(";")[0]
        assert media_type in MEDIA_TYPES[Path(url).suffix], f"{url}: {media_type}"
        assert len(asset.content) > 0, url


def test_the_api_reference_follows_the_root_path(tmp_path):
    """Behind a proxy that serves it under a prefix, the pages name their files with it."""
    from fastapi.testclient import TestClient

    from helios_serve.config import HeliosConfig, ServerConfig
    from helios_serve.entrypoints.openai.api_server import build_app

    app = build_app(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path))))
    client = TestClient(app, base_url="http://127.0.0.1", root_path="/helios")  # no lifespan: nothing loads
    for page in ("/docs", "/redoc"):
        references = page_references(client.get(page).text)
        assert references and all(url.startswith("/helios/") for url in references), references
        for url in references:
            assert client.get(url).status_code == 200, url


# -- the README's API table ------------------------------------------------------------------------

TABLE_ROUTE = re.compile(r"`(GET|POST|DELETE|WS) (/[^`\s]*)`")


def readme_routes() -> set[tuple[str, str]]:
    """(method, path) of each route the API table of README.md's "The server" lists."""
    section = README.read_text(encoding="utf-8").split("\n## The server\n", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("| endpoint |"):].split("\n\n", 1)[0].splitlines()[2:]
    routes = set()
    for row in table:
        named = TABLE_ROUTE.findall(row.split(" | ", 1)[0])
        assert named, f"a row of the README's API table names no route: {row[:80]}"
        routes.update(named)
    return routes


def test_the_readme_lists_exactly_the_api_routes(tmp_path):
    """The schema's operations, and the WebSocket routes (OpenAPI describes no WebSocket)."""
    from helios_serve.config import HeliosConfig, ServerConfig
    from helios_serve.entrypoints.openai.api_server import build_app

    app = build_app(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path))))
    routes = {(method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations}
    routes |= {("WS", route.path) for route in app.routes if isinstance(route, WebSocketRoute)}
    listed = readme_routes()
    assert not routes - listed, f"routes missing from the README's API table: {sorted(routes - listed)}"
    assert not listed - routes, f"the README's API table lists routes the server lacks: {sorted(listed - routes)}"
