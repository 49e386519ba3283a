"""quipu/shard/openapi.json: a valid OpenAPI 3.1 document that describes exactly the routes
the shard serves, keeps the v1 contract, agrees with the core validators, and is what a
running shard answers at GET /v1/openapi.json.

"Agrees with the validators" is checked both ways where JSON Schema can say it: a scalar
(type name, entity id, tenant, ...) is valid in the document exactly when the core
validator accepts it, and every request the document calls valid is accepted by the core
parsers. What JSON Schema cannot say (a `{"Json": s}` string must parse, from_micros <=
to_micros, unique field names, an actor filter's type equals actor_type) is normalised in
the generated request before parsing, and listed in `_normalise`.
"""

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jsonschema_rs
import orjson
import pytest
import schemathesis
from aiohttp import web
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from shard_proc import ShardProcess

from quipu.core.errors import BadInput
from quipu.core.event import (
    MAX_OCCURRED_AT,
    AuditEvent,
    validate_entity_id,
    validate_idempotency_key,
    validate_method,
    validate_micros,
    validate_tenant,
    validate_url,
)
from quipu.core.query_spec import AccessQuery, LogQuery
from quipu.core.row import parse_log_id
from quipu.core.schema import ColumnDef, TypeSchema, validate_field_name, validate_type_name
from quipu.shard.app import ROUTE_TABLES

DOC_BYTES = resources.files("quipu.shard").joinpath("openapi.json").read_bytes()
DOC = json.loads(DOC_BYTES)
# shared/ sits beside the repository, on a developer's machine and in CI alike.
V1_PATH = Path(__file__).resolve().parents[2] / "shared" / "reference" / "quipu-server-v1-openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SETTINGS = fuzz_settings(60)


def _v1() -> dict:
    if not V1_PATH.is_file():
        pytest.fail(f"the v1 contract {V1_PATH} is missing: shared/ belongs beside the repository")
    return json.loads(V1_PATH.read_text())


def _operations(doc: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _served_routes() -> set[tuple[str, str]]:
    """(method, path template) of every route the shard's app registers: the API's route
    table plus the document itself, exactly as `make_app` adds them."""
    app = web.Application()
    for table in ROUTE_TABLES:
        app.router.add_routes(table)
    app.router.add_get("/v1/openapi.json", _no_handler)
    return {(route.method, route.resource.canonical) for route in app.router.routes()}


async def _no_handler(request: web.Request) -> web.Response:
    return web.Response()


def _schema_validator(name: str) -> jsonschema_rs.Validator:
    """A validator for one component schema, its $refs resolved inside the document.
    jsonschema_rs reads patterns as ECMA-262 says (`$` is the end of the text), as the
    document means them; Python's re.search would also let "PUT\\n" match `^...$`."""
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    )


# --- the document ----------------------------------------------------------------------


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"] == "3.1.0"
    validate_openapi(DOC)


def test_every_served_route_is_documented_and_every_documented_route_is_served():
    served = _served_routes()
    # aiohttp answers HEAD for every GET route; like most documents, ours lists only the GET.
    heads = {path for method, path in served if method == "HEAD"}
    assert heads == {path for method, path in served if method == "GET"}
    served_without_head = {(method, path) for method, path in served if method != "HEAD"}
    documented = _operations(DOC)
    assert served_without_head - documented == set(), "served but not documented"
    assert documented - served_without_head == set(), "documented but not served"


def test_only_the_health_check_and_the_document_are_open_without_a_token():
    assert DOC["security"] == [{"bearerAuth": []}]
    open_paths = {
        (method.upper(), path)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if op.get("security") == []
    }
    assert open_paths == {("GET", "/v1/healthz"), ("GET", "/v1/openapi.json")}


def test_every_operation_with_a_token_documents_401_with_www_authenticate_and_403():
    unauthorized = DOC["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if op.get("security") == []:
                continue
            assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}, (method, path)
            assert "403" in op["responses"], (method, path)


def test_every_error_response_is_a_json_error_body():
    for name, response in DOC["components"]["responses"].items():
        assert response["content"] == {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        }, name


# --- v1 compatibility ------------------------------------------------------------------


def test_every_v1_operation_is_still_served():
    assert _operations(_v1()) - _operations(DOC) == set()


def test_every_v1_status_and_parameter_is_still_documented():
    v1 = _v1()
    for path, item in v1["paths"].items():
        for method, op in item.items():
            ours = DOC["paths"][path][method]
            assert set(op["responses"]) <= set(ours["responses"]), (method, path)
            ours_params = {(p["name"], p["in"]) for p in map(_deref, ours.get("parameters", []))}
            for p in op.get("parameters", []):
                assert (p["name"], p["in"]) in ours_params, (method, path, p["name"])


def test_every_v1_json_response_field_is_still_returned():
    """Same status, same media type, every v1 field still there. (v1's healthz answered
    text/plain "ok"; ours answers JSON with a status, as the shard's health model needs.)"""
    v1 = _v1()
    for path, item in v1["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                v1_json = _deref(response, v1).get("content", {}).get("application/json")
                if v1_json is None:
                    continue
                ours = _deref(DOC["paths"][path][method]["responses"][status])["content"]
                assert "application/json" in ours, (method, path, status)
                v1_props, v1_enums = _properties_and_enums(v1_json["schema"], v1)
                our_props, our_enums = _properties_and_enums(ours["application/json"]["schema"], DOC)
                assert v1_props <= our_props, (method, path, status, v1_props - our_props)
                assert v1_enums <= our_enums, (method, path, status, v1_enums - our_enums)


def test_every_v1_schema_property_and_enum_value_is_still_accepted():
    v1_schemas = _v1()["components"]["schemas"]
    for name, v1_schema in v1_schemas.items():
        assert name in DOC["components"]["schemas"], name
        ours = DOC["components"]["schemas"][name]
        v1_props, v1_enums = _properties_and_enums(v1_schema, _v1())
        our_props, our_enums = _properties_and_enums(ours, DOC)
        assert v1_props <= our_props, (name, v1_props - our_props)
        assert v1_enums <= our_enums, (name, v1_enums - our_enums)


def _deref(node: dict, doc: dict = DOC) -> dict:
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _properties_and_enums(schema: dict, doc: dict) -> tuple[set[str], set[object]]:
    """Every property name and enum value reachable from `schema` (through $ref, anyOf,
    oneOf, allOf, items and property schemas)."""
    props: set[str] = set()
    enums: set[object] = set()
    seen: set[int] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        if "$ref" in node:
            stack.append(_deref(node, doc))
        props.update(node.get("properties", {}))
        enums.update(node.get("enum", []))
        stack.extend(node.get("properties", {}).values())
        for key in ("anyOf", "oneOf", "allOf"):
            stack.extend(node.get(key, []))
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                stack.append(node[key])
    return props, enums


# --- agreement with the core validators -------------------------------------------------

SCALARS: dict[str, Callable[[object], object]] = {
    "TypeName": validate_type_name,
    "FieldName": validate_field_name,
    "EntityId": validate_entity_id,
    "Tenant": validate_tenant,
    "IdempotencyKey": validate_idempotency_key,
    "Method": validate_method,
    "Url": validate_url,
}
TRICKY_TEXT = [
    "",
    ".",
    "..",
    "...",
    "a/b",
    "a\\b",
    "a\x00",
    "a\x7f",
    "a\n",
    "PUT\n",
    "é",
    " ",
    "-a",
    "_",
    "a" * 300,
]


def _accepts(validator: Callable[[object], object], value: object) -> bool:
    try:
        validator(value)
    except BadInput:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SCALARS))
def test_scalar_schema_accepts_exactly_what_the_core_validator_accepts(name):
    schema = _schema_validator(name)
    pattern = DOC["components"]["schemas"][name]["pattern"]
    assert pattern.startswith("^") and pattern.endswith("$")

    @SETTINGS
    @given(
        st.one_of(
            st.sampled_from(TRICKY_TEXT),
            st.text(max_size=300),
            st.from_regex(pattern, fullmatch=True),
            st.from_regex(pattern, fullmatch=True).map(lambda s: s + "\n"),
        )
    )
    def check(text: str) -> None:
        assert schema.is_valid(text) == _accepts(SCALARS[name], text), repr(text)

    check()


def test_micros_schema_accepts_exactly_what_the_core_validator_accepts():
    schema = _schema_validator("Micros")

    @SETTINGS
    @given(
        st.one_of(
            st.sampled_from([-1, 0, MAX_OCCURRED_AT - 1, MAX_OCCURRED_AT, 2**63, True, "1", None]),
            st.integers(min_value=-(2**65), max_value=2**65),
        )
    )
    def check(value: object) -> None:
        assert schema.is_valid(value) == _accepts(validate_micros, value), repr(value)

    check()


def _parse_log_id(value: str) -> int:
    return parse_log_id(value, b"\x00\x00\x00")


BODY_PARSERS: dict[str, Callable[[object], object]] = {
    "appendLog": lambda body: AuditEvent.from_json(body),
    "appendBatch": lambda body: [_batch_item(item) for item in body],
    "queryLogs": LogQuery.from_json,
    "countLogs": LogQuery.from_json,
    "exportLogs": LogQuery.from_json,
    "defineType": TypeSchema.from_json,
    "defineColumn": ColumnDef.from_json,
    "queryAccess": AccessQuery.from_json,
}
PARAMETER_VALIDATORS: dict[str, Callable[[object], object]] = {
    "Idempotency-Key": validate_idempotency_key,
    "X-Quipu-Tenant": validate_tenant,
    "type_name": validate_type_name,
    "entity_id": validate_entity_id,
    "log_id": _parse_log_id,
}


def _batch_item(item: dict) -> AuditEvent:
    item = dict(item)
    key = item.pop("idempotency_key", None)
    if key is not None:
        validate_idempotency_key(key, "idempotency_key")
    return AuditEvent.from_json(item)


def _normalise(operation_id: str, body: object) -> object:
    """Make a generated body satisfy the few rules JSON Schema cannot state (see the module
    docstring); everything else must already be accepted as generated."""
    body = _json_strings_parse(_whole_floats_as_ints(body))
    if operation_id in ("queryLogs", "countLogs", "exportLogs", "queryAccess"):
        _order_time_range(body)
    if operation_id in ("queryLogs", "countLogs", "exportLogs"):
        for flt in body.get("actor_filters") or []:
            if "entity_type" in flt:
                flt["entity_type"] = body["actor_type"]
    if operation_id == "defineType":
        unique = {}
        for field in body["fields"]:
            unique.setdefault(field["name"], field)
        body["fields"] = list(unique.values())
    return body


def _whole_floats_as_ints(node: object) -> object:
    """JSON Schema calls 100.0 an integer; the shard wants integers written as 100 (the
    document says so): generated whole floats are sent as integers."""
    if isinstance(node, float) and node.is_integer() and abs(node) < 2**63:
        return int(node)
    if isinstance(node, dict):
        return {k: _whole_floats_as_ints(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_whole_floats_as_ints(v) for v in node]
    return node


def _json_strings_parse(node: object) -> object:
    """A `{"Json": s}` string must itself be JSON: JSON Schema can only annotate that."""
    if isinstance(node, dict):
        if len(node) == 1 and isinstance(node.get("Json"), str):
            try:
                orjson.loads(node["Json"])
            except orjson.JSONDecodeError:
                return {"Json": json.dumps(node["Json"])}
            return node
        return {k: _json_strings_parse(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_json_strings_parse(v) for v in node]
    return node


def _order_time_range(body: dict) -> None:
    first, last = body.get("from_micros"), body.get("to_micros")
    if isinstance(first, int) and isinstance(last, int) and first > last:
        body["from_micros"], body["to_micros"] = last, first


def _operation_ids() -> list[tuple[str, str, str]]:
    return sorted(
        (op["operationId"], method.upper(), path)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if op.get("requestBody") or op.get("parameters")
    )


@pytest.mark.parametrize(("operation_id", "method", "path"), _operation_ids())
def test_requests_valid_by_the_document_are_accepted_by_the_core_parsers(operation_id, method, path):
    operation = schemathesis.openapi.from_dict(DOC)[path][method]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)

    @SETTINGS
    @given(strategy)
    def check(case) -> None:
        params = {**(case.headers or {}), **(case.path_parameters or {})}
        for name, value in params.items():
            if name in PARAMETER_VALIDATORS:
                PARAMETER_VALIDATORS[name](value)
        if operation_id in BODY_PARSERS and case.media_type == "application/json":
            body = _normalise(operation_id, orjson.loads(json.dumps(case.body)))
            BODY_PARSERS[operation_id](body)

    check()


# --- what a shard serves ----------------------------------------------------------------


def test_running_shard_serves_the_document_without_a_token(tmp_path):
    with ShardProcess.start(tmp_path) as shard:
        reply = shard.request("GET", "/v1/openapi.json", role=None)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.data == DOC_BYTES
