"""Hostile and malformed input against a real shard (SPEC §9): every case gets a clear 4xx
with an `{"error": ...}` body, and nothing changes: no row, no registry entry, no type,
nothing parked in the dead-letter queue.

Each case checks the shard's state before and after (after a flush), so a request that
was refused on the surface but queued underneath is caught too.
"""

import base64
import http.client
import json
import socket
from urllib.parse import urlsplit

import orjson
import pytest
from shard_proc import ShardProcess, append_request, define_types

from quipu.core.schema import default_target_type

MAX_BODY = 256 * 1024  # limits.max_body_bytes as tests/shard_proc.py configures it
HUGE = b'{"pad": "' + b"x" * (MAX_BODY + 1024) + b'"}'
GOOD = append_request("bad-input-baseline", targets=[("default_target", "doc-1", "Report")])


def event(**changes: object) -> dict:
    """A valid AppendRequest with some keys replaced (a value of None removes the key)."""
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not None}


def actor(entity_id: object = "a-1", **fields: object) -> dict:
    return {"entity_id": entity_id, "fields": fields or {"name": {"Text": "A"}}}


def target(entity_type: object = "default_target", entity_id: object = "t-1") -> list[dict]:
    return [{"entity_type": entity_type, "input": {"entity_id": entity_id, "fields": {}}}]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    s = ShardProcess.start(tmp_path_factory.mktemp("bad-input"))
    try:
        define_types(s)
        assert s.request("POST", "/v1/columns", {"name": "region", "kind": "Text"}).status == 204
        status, answer = s.json("POST", "/v1/logs", GOOD)
        assert status == 202, answer
        s.flush()
        yield s
    finally:
        s.stop()


def snapshot(shard) -> tuple:
    """Everything a request could have changed: rows, types, entities, the DLQ."""
    shard.flush()
    types = shard.json("GET", "/v1/types")[1]
    entities = [shard.json("GET", f"/v1/entities/{t['type_name']}?include_deleted=true")[1] for t in types]
    return shard.count({}), types, entities, shard.json("GET", "/v1/admin/dlq")[1]


def assert_refused(shard, status: int, method: str, path: str, **kw: object) -> str:
    before = snapshot(shard)
    message = shard.request(method, path, **kw).error(status)
    assert snapshot(shard) == before, "a refused request changed the shard"
    return message


# --- events ------------------------------------------------------------------------------

MALFORMED_JSON = {
    "truncated": b'{"actor_type": "default_actor",',
    "empty": b"",
    "two documents": b"{}{}",
    "not utf-8": b'{"actor_type": "\xff\xfe"}',
    "single quotes": b"{'actor_type': 'default_actor'}",
    "NaN": b'{"occurred_at": NaN}',
    "deep nesting": b"[" * 100_000,
}

BAD_EVENTS = {
    # not an AppendRequest at all
    "array": [],
    "string": "an event",
    "null": None,
    "number": 5,
    "missing url": event(url=None),
    "missing actor": event(actor=None),
    "unknown key": {**GOOD, "taregts": []},
    "tenant in the body": {**GOOD, "tenant": "acme"},
    # wrong tagged values
    "content Text holds a number": event(content={"Text": 5}),
    "content Number": event(content={"Number": 1}),
    "content Json is not JSON": event(content={"Json": "{not json"}),
    "content null": event(content=None) | {"content": None},
    "content boolean": event(content=True),
    "field Text holds a number": event(actor=actor(name={"Text": 5})),
    "field Number holds a string": event(actor=actor(name={"Number": "5"})),
    "field Json is not JSON": event(actor=actor(name={"Json": "{"})),
    "field boolean": event(actor=actor(name=True)),
    "field null": event(actor=actor(name=None)),
    "field name is a path": event(actor=actor(**{"../x": {"Text": "A"}})),
    "custom unknown column": event(custom={"nocolumn": {"Text": "x"}}),
    "custom column of another kind": event(custom={"region": {"Number": 3}}),
    "custom value malformed": event(custom={"region": {"Text": 3}}),
    # type names and entity ids that would walk a path
    "actor_type ../": event(actor_type="../etc"),
    "actor_type with /": event(actor_type="a/b"),
    "actor_type with NUL": event(actor_type="a\x00b"),
    "actor_type ..": event(actor_type=".."),
    "actor_type empty": event(actor_type=""),
    "actor_type number": event(actor_type=5),
    "actor id ../": event(actor=actor("../../etc/passwd")),
    "actor id with /": event(actor=actor("a/b")),
    "actor id with backslash": event(actor=actor("a\\b")),
    "actor id with NUL": event(actor=actor("a\x00b")),
    "actor id ..": event(actor=actor("..")),
    "actor id empty": event(actor=actor("")),
    "actor id too long": event(actor=actor("x" * 257)),
    "actor id number": event(actor=actor(5)),
    "target type ../": event(targets=target("../x")),
    "target type with NUL": event(targets=target("x\x00")),
    "target id ..": event(targets=target(entity_id="..")),
    "target id with NUL": event(targets=target(entity_id="\x00")),
    "targets not an array": event(targets={"entity_type": "default_target"}),
    "target without input": event(targets=[{"entity_type": "default_target"}]),
    "65 targets": event(targets=target() * 65),
    # scalars
    "method with a space": event(method="GET /x"),
    "method empty": event(method=""),
    "url with NUL": event(url="/a\x00b"),
    "url with newline": event(url="/a\nb"),
    "url empty": event(url=""),
    "occurred_at text": event(occurred_at="2024-01-01T00:00:00Z"),
    "occurred_at negative": event(occurred_at=-1),
    "occurred_at past int64": event(occurred_at=2**63),
    "occurred_at boolean": event(occurred_at=True),
    "occurred_at fraction": event(occurred_at=1.5),
}


@pytest.mark.parametrize("raw", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_event_is_400_and_changes_nothing(shard, raw):
    assert_refused(shard, 400, "POST", "/v1/logs", raw=raw)


@pytest.mark.parametrize("body", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_bad_event_is_400_and_changes_nothing(shard, body):
    message = assert_refused(shard, 400, "POST", "/v1/logs", body=body)
    assert "\x00" not in message and "../etc/passwd" not in message and "x" * 100 not in message


@pytest.mark.parametrize("body", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_bad_event_in_a_batch_is_rejected_alone_and_changes_nothing(shard, body):
    before = snapshot(shard)
    status, answer = shard.json("POST", "/v1/logs/batch", [body])
    assert status == 202, answer
    assert [r["status"] for r in answer["results"]] == ["rejected"]
    assert answer["results"][0]["error"]
    assert snapshot(shard) == before


BAD_KEYS = {"empty": "", "space": "a b", "129 chars": "k" * 129, "non-ASCII": "schlüssel"}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_idempotency_key_is_400_and_changes_nothing(shard, key):
    assert_refused(shard, 400, "POST", "/v1/logs", body=GOOD, headers={"Idempotency-Key": key})
    before = snapshot(shard)
    status, answer = shard.json("POST", "/v1/logs/batch", [{**GOOD, "idempotency_key": key}])
    assert status == 202 and [r["status"] for r in answer["results"]] == ["rejected"]
    assert snapshot(shard) == before


BAD_TENANTS = {"../": "../x", "space": "a b", "129 chars": "t" * 129, "slash": "a/b"}


@pytest.mark.parametrize("tenant", BAD_TENANTS.values(), ids=BAD_TENANTS.keys())
def test_bad_tenant_header_is_400_and_changes_nothing(shard, tenant):
    headers = {"X-Quipu-Tenant": tenant}
    assert_refused(shard, 400, "POST", "/v1/logs", body=GOOD, headers=headers)
    assert_refused(shard, 400, "POST", "/v1/logs/batch", body=[GOOD], headers=headers)
    assert_refused(shard, 400, "POST", "/v1/logs/query", body={}, headers=headers)


BATCH_REFUSED = {
    "malformed array": b'[{"actor_type": ',
    "malformed NDJSON line": json.dumps(GOOD).encode() + b"\n{not json}\n",
    "empty body": b"",
    "empty array": b"[]",
    "blank lines only": b"\n\n  \n",
}


@pytest.mark.parametrize("raw", BATCH_REFUSED.values(), ids=BATCH_REFUSED.keys())
def test_malformed_batch_is_400_as_a_whole_and_changes_nothing(shard, raw):
    assert_refused(shard, 400, "POST", "/v1/logs/batch", raw=raw)


# --- bodies over the limit ---------------------------------------------------------------

BODY_PATHS = (
    "/v1/logs",
    "/v1/logs/batch",
    "/v1/logs/query",
    "/v1/logs/count",
    "/v1/logs/export",
    "/v1/types",
    "/v1/columns",
    "/v1/access/query",
)


@pytest.mark.parametrize("path", BODY_PATHS)
def test_body_over_max_body_bytes_is_413_and_changes_nothing(shard, path):
    message = assert_refused(shard, 413, "POST", path, raw=HUGE)
    assert str(MAX_BODY) in message


def test_event_body_of_exactly_max_body_bytes_is_accepted_and_one_byte_more_is_413(shard):
    def padded(size: int) -> bytes:
        body = event(actor=actor("at-the-limit"), content={"Text": ""})
        raw = json.dumps(body).encode()
        body["content"]["Text"] = "x" * (size - len(raw))
        raw = json.dumps(body).encode()
        assert len(raw) == size
        return raw

    assert_refused(shard, 413, "POST", "/v1/logs", raw=padded(MAX_BODY + 1))
    r = shard.request("POST", "/v1/logs", raw=padded(MAX_BODY))
    assert r.status == 202, r.data[:300]
    shard.flush()
    assert shard.count({"actor_type": "default_actor", "actor_id": "at-the-limit"}) == 1


def test_chunked_body_over_max_body_bytes_is_413_and_changes_nothing(shard):
    """No Content-Length to refuse up front: the limit holds while the body streams in."""
    before = snapshot(shard)
    parts = urlsplit(shard.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        head = (
            "POST /v1/logs HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\n"
            f"Authorization: Bearer {shard.tokens['admin']}\r\n"
            "Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (65_536, b"x" * 65_536)
        try:
            sock.sendall(head.encode())
            for _ in range(2 * MAX_BODY // 65_536):
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the shard answered and closed before the client finished: read its answer
        response = http.client.HTTPResponse(sock)
        response.begin()
        status, data = response.status, response.read()
    assert status == 413
    assert set(json.loads(data)) == {"error"}
    assert snapshot(shard) == before


# --- queries -----------------------------------------------------------------------------

BAD_QUERIES = {
    "array": [],
    "unknown key": {"limt": 5},
    "limit 0": {"limit": 0},
    "limit too large": {"limit": 10_001},
    "limit text": {"limit": "5"},
    "limit boolean": {"limit": True},
    "order sideways": {"order": "sideways"},
    "from after to": {"from_micros": 10, "to_micros": 5},
    "from negative": {"from_micros": -1},
    "from text": {"from_micros": "yesterday"},
    "unknown filter type": {"targets": [{"entity_type": "nosuch", "field": "name", "value": {"Text": "x"}}]},
    "unknown filter field": {
        "targets": [{"entity_type": "default_target", "field": "nofield", "value": {"Text": "x"}}]
    },
    "filter type ../": {"targets": [{"entity_type": "../x", "field": "name", "value": {"Text": "x"}}]},
    "filter type with NUL": {"targets": [{"entity_type": "a\x00", "field": "name", "value": {"Text": "x"}}]},
    "filter mode regex": {
        "targets": [{"entity_type": "default_target", "field": "name", "value": "x", "mode": "regex"}]
    },
    "filter value wrongly tagged": {
        "targets": [{"entity_type": "default_target", "field": "name", "value": {"Text": 5}}]
    },
    "filter without value": {"targets": [{"entity_type": "default_target", "field": "name"}]},
    "targets not an array": {"targets": {"entity_type": "default_target"}},
    "actor_type with /": {"actor_type": "a/b"},
    "actor_id ../": {"actor_type": "default_actor", "actor_id": "../x"},
    "actor_id with NUL": {"actor_type": "default_actor", "actor_id": "a\x00"},
    "actor filter of another type": {
        "actor_type": "default_actor",
        "actor_filters": [{"entity_type": "default_target", "field": "name", "value": "x"}],
    },
    "tenant ../": {"tenant": "../x"},
    "method with a space": {"method": "GET /"},
    "url with NUL": {"url": "/\x00"},
    "include_past text": {"include_past": "yes"},
}


@pytest.mark.parametrize("path", ["/v1/logs/query", "/v1/logs/count", "/v1/logs/export"])
@pytest.mark.parametrize("body", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_query_is_400(shard, path, body):
    assert_refused(shard, 400, "POST", path, body=body)


BAD_CURSORS = {
    "cursor garbage": {"cursor": "garbage!!"},
    "cursor empty": {"cursor": ""},
    "cursor number": {"cursor": 5},
    "cursor too long": {"cursor": "A" * 5000},
    "cursor forged": {
        "cursor": base64.urlsafe_b64encode(
            orjson.dumps({"v": 1, "o": "desc", "ts": 0, "leaf": 0, "snap": 1, "q": "0" * 16})
        ).decode()
    },
    "cursor of an unknown version": {
        "cursor": base64.urlsafe_b64encode(orjson.dumps({"v": 99})).decode().rstrip("=")
    },
}


@pytest.mark.parametrize("path", ["/v1/logs/query", "/v1/logs/export"])
@pytest.mark.parametrize("body", BAD_CURSORS.values(), ids=BAD_CURSORS.keys())
def test_bad_cursor_is_400(shard, path, body):
    message = assert_refused(shard, 400, "POST", path, body=body)
    assert "cursor" in message


@pytest.mark.parametrize("path", ["/v1/logs/query", "/v1/logs/count", "/v1/logs/export"])
@pytest.mark.parametrize("raw", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_query_is_400(shard, path, raw):
    assert_refused(shard, 400, "POST", path, raw=raw)


def test_cursor_of_one_query_is_refused_by_another(shard):
    for i in range(3):
        assert shard.json("POST", "/v1/logs", event(actor=actor("cursor-owner"), url=f"/c/{i}"))[0] == 202
    shard.flush()
    mine = {"actor_type": "default_actor", "actor_id": "cursor-owner", "limit": 1}
    r = shard.request("POST", "/v1/logs/query", mine)
    cursor = r.header("X-Quipu-Next-Cursor")
    assert shard.request("POST", "/v1/logs/query", {**mine, "cursor": cursor}).status == 200
    for other in ({**mine, "actor_id": "someone-else"}, {**mine, "order": "asc"}, {"limit": 1}):
        message = assert_refused(shard, 400, "POST", "/v1/logs/query", body={**other, "cursor": cursor})
        assert "cursor" in message
    tenant = {"X-Quipu-Tenant": "acme"}
    assert_refused(shard, 400, "POST", "/v1/logs/query", body={**mine, "cursor": cursor}, headers=tenant)


# --- types and columns -------------------------------------------------------------------

BAD_TYPES = {
    "type_name ../": {"type_name": "../x", "fields": []},
    "type_name with /": {"type_name": "a/b", "fields": []},
    "type_name with NUL": {"type_name": "a\x00", "fields": []},
    "type_name ..": {"type_name": "..", "fields": []},
    "type_name empty": {"type_name": "", "fields": []},
    "type_name number": {"type_name": 5, "fields": []},
    "fields missing": {"type_name": "t"},
    "fields not an array": {"type_name": "t", "fields": {"name": "x"}},
    "field name ../": {"type_name": "t", "fields": [{"name": "../x"}]},
    "field kind unknown": {"type_name": "t", "fields": [{"name": "x", "kind": "Str"}]},
    "protection unknown": {"type_name": "t", "fields": [{"name": "x", "protection": "Rot13"}]},
    "Hmac on a Number": {"type_name": "t", "fields": [{"name": "x", "kind": "Number", "protection": "Hmac"}]},
    "blind index n 0": {"type_name": "t", "fields": [{"name": "x", "search": {"Ngram": 0}}]},
    "field twice": {"type_name": "t", "fields": [{"name": "x"}, {"name": "x"}]},
    "unknown key": {"type_name": "t", "fields": [], "extra": 1},
    "required not a boolean": {"type_name": "t", "fields": [{"name": "x", "required": "yes"}]},
    "non-additive redefinition": {**default_target_type().to_json(), "fields": []},
    "array": [],
}


@pytest.mark.parametrize("body", BAD_TYPES.values(), ids=BAD_TYPES.keys())
def test_bad_type_definition_is_400_and_changes_nothing(shard, body):
    assert_refused(shard, 400, "POST", "/v1/types", body=body)


BAD_COLUMNS = {
    "name with /": {"name": "a/b"},
    "name ../": {"name": "../x"},
    "name empty": {"name": ""},
    "kind unknown": {"name": "c", "kind": "Bool"},
    "required not a boolean": {"name": "c", "required": "yes"},
    "unknown key": {"name": "c", "default": "x"},
    "redefinition of another kind": {"name": "region", "kind": "Number"},
    "missing name": {"kind": "Text"},
}


@pytest.mark.parametrize("body", BAD_COLUMNS.values(), ids=BAD_COLUMNS.keys())
def test_bad_column_definition_is_400_and_changes_nothing(shard, body):
    assert_refused(shard, 400, "POST", "/v1/columns", body=body)


@pytest.mark.parametrize("raw", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_definition_is_400(shard, raw):
    assert_refused(shard, 400, "POST", "/v1/types", raw=raw)
    assert_refused(shard, 400, "POST", "/v1/columns", raw=raw)


# --- paths -------------------------------------------------------------------------------

BAD_PATHS = {
    "type ..": ("/v1/entities/%2E%2E", 400),
    "type with NUL": ("/v1/entities/a%00b", 400),
    "type with encoded /": ("/v1/entities/..%2F..%2Fetc", (400, 404)),
    "type with a space": ("/v1/entities/a%20b", 400),
    "type never defined": ("/v1/entities/nosuch", (400, 404)),
    "history of type ..": ("/v1/entities/%2E%2E/x/history", 400),
    "history of id ..": ("/v1/entities/default_target/%2E%2E/history", (400, 404)),
    "history of id with NUL": ("/v1/entities/default_target/a%00b/history", (400, 404)),
    "history of id with encoded /": ("/v1/entities/default_target/..%2F..%2Fetc/history", (400, 404)),
    "history of an unknown id": ("/v1/entities/default_target/nobody-knows/history", 404),
    "include_deleted text": ("/v1/entities/default_target?include_deleted=yes", 400),
    "unknown route": ("/v1/nothing-here", 404),
    "log id with NUL": ("/v1/proof/inclusion/%00", 400),
    "log id ..": ("/v1/proof/inclusion/%2E%2E", 400),
    "log id not hex": ("/v1/proof/inclusion/" + "g" * 32, 400),
    "log id too large": ("/v1/proof/inclusion/" + "9" * 40, 400),
    "log id negative": ("/v1/proof/inclusion/-1", 400),
    "consistency without from": ("/v1/proof/consistency", 400),
    "consistency from text": ("/v1/proof/consistency?from=ten", 400),
    "consistency from beyond the tree": ("/v1/proof/consistency?from=1000000", 400),
}


@pytest.mark.parametrize(("path", "status"), BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_bad_path_is_a_clear_4xx_and_changes_nothing(shard, path, status):
    before = snapshot(shard)
    r = shard.request("GET", path)
    assert r.status in (status if isinstance(status, tuple) else (status,)), (r.status, r.data[:300])
    r.error(r.status)
    assert snapshot(shard) == before


def test_dot_segments_in_a_path_never_reach_another_route(shard):
    """`/v1/entities/../admin/dlq` must not become the admin route for a query-only token."""
    for path in ("/v1/entities/../admin/dlq", "/v1/entities/%2E%2E/admin/dlq", "/v1/logs/../admin/dlq"):
        r = shard.request("GET", path, role="auditor")
        assert 400 <= r.status < 500, (path, r.status)
        r.error(r.status)


def test_log_id_in_a_form_other_than_hex_or_decimal_is_400(shard):
    """v1: 32 hex characters or a decimal u128. Python int() also reads '0x', '_' and a
    sign; those are malformed ids, not unknown ones."""
    assert shard.json("POST", "/v1/logs", event(actor=actor("log-id-forms")))[0] == 202
    shard.flush()
    (view,) = shard.json(
        "POST", "/v1/logs/query", {"actor_type": "default_actor", "actor_id": "log-id-forms"}
    )[1]
    real = view["log_id"]
    assert shard.request("GET", f"/v1/proof/inclusion/{real}").status == 200
    for form in (f"0x{real}", f"{real[:16]}_{real[16:]}", f"+{real}", f"%20{real}", "%D9%A1%D9%A2"):
        r = shard.request("GET", f"/v1/proof/inclusion/{form}")
        assert r.status == 400, (form, r.status, r.data[:200])


# --- the kind a type defines ---------------------------------------------------------------


def test_field_value_of_another_kind_than_the_type_defines_is_400_and_changes_nothing(shard):
    """default_actor.name is Text. A Number can never be recorded there (kinds never change,
    redefinition is additive only), so it is bad input, not an event to park and redrive."""
    for value in ({"Number": 5}, 5, {"Json": "{}"}, {"a": 1}):
        assert_refused(shard, 400, "POST", "/v1/logs", body=event(actor=actor("kind-mismatch", name=value)))


def test_shard_log_never_echoes_hostile_input_or_tokens(shard):
    """Runs last: every case above has reached the shard's log by now."""
    text = shard.log()
    assert "POST /v1/logs " in text, "the access log lines are missing: nothing was checked"
    echoed = [
        value
        for value in (
            "../../etc/passwd",
            "schl",
            "garbage!!",
            "nobody-knows",
            "cursor-owner",
            "\x00",
            "x" * 1000,
        )
        if value in text
    ]
    assert not echoed, f"the shard log echoes request values: {echoed}"
    leaked = [name for name, token in shard.tokens.items() if token in text]
    assert not leaked, f"the shard log holds the tokens of {leaked}"
