"""Property-based fuzzing of a real shard process against our own OpenAPI document
(quipu/shard/openapi.json), with schemathesis.

Requests valid by the document must get a documented status, content type, headers and
body; requests invalid by it must never get a 5xx. Every request carries the admin token,
so the fuzzer reaches the handlers instead of stopping at 401 (the token is the one thing
these tests do not fuzz). The default types are defined first, so the document's example
events are really recorded and the read paths render real rows.

A third test records events of every valid shape (moved onto the default types so the
writer records them rather than parking them) and reads each back through every read path.

Bounded on purpose (50 examples per operation, a fixed seed, derandomized): the run is the
same every time and takes well under a minute. The shard's own limits (256 KiB bodies, 4
queries per token) keep a generated request from loading it for long; the admin calls the
fuzzer makes (flush, redrive, retention, verify) are safe at any time. After each module
of requests the shard must still be healthy: no request may have stopped its writer.
"""

import json
from importlib import resources

import pytest
import schemathesis
from fuzzing import CONFORMANCE, fuzz_settings
from hypothesis import assume, example, given, note
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from shard_proc import ShardProcess

from quipu.core.schema import default_actor_type, default_target_type

OPENAPI = resources.files("quipu.shard").joinpath("openapi.json")
OPENAPI_PATH = str(OPENAPI)
DOC_SCHEMAS = json.loads(OPENAPI.read_bytes())["components"]["schemas"]
MICROS = DOC_SCHEMAS["Micros"]
FUZZ_SEED = 20_260_101
FUZZ_SETTINGS = fuzz_settings(50)

# A batch may be sent as NDJSON; the document gives it as a string, sent as is. (schemathesis
# keeps its serializers in a registry of its own: this registers for the whole process.)
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


def _schema(mode: GenerationMode) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    schema.config.generation.update(modes=[mode])
    schema.config.seed = FUZZ_SEED  # the same requests on every run, coverage phase included
    return schema


VALID = _schema(GenerationMode.POSITIVE)
INVALID = _schema(GenerationMode.NEGATIVE)


def _shard_with_default_types(base):
    with ShardProcess.start(base) as running:
        for schema in (default_actor_type(), default_target_type()):
            status, body = running.json("POST", "/v1/types", schema.to_json())
            assert status == 204, body
        yield running
        status, health = running.json("GET", "/v1/healthz", role=None)
        assert health["status"] != "unhealthy", (status, health)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    yield from _shard_with_default_types(tmp_path_factory.mktemp("fuzzed-shard"))


def _admin(shard: ShardProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {shard.tokens['admin']}"}


@pytest.mark.slow
@VALID.parametrize()
@FUZZ_SETTINGS
def test_valid_requests_get_documented_answers(case, shard):
    case.call_and_validate(base_url=shard.url, headers=_admin(shard), checks=CONFORMANCE)


@pytest.mark.slow
@INVALID.parametrize()
@FUZZ_SETTINGS
def test_invalid_requests_never_get_a_server_error(case, shard):
    case.call_and_validate(base_url=shard.url, headers=_admin(shard), checks=[not_a_server_error])


@pytest.fixture(scope="module")
def reading_shard(tmp_path_factory):
    """A shard of its own: the fuzzed one may hold a required custom column by now, which
    would refuse every event these tests append."""
    yield from _shard_with_default_types(tmp_path_factory.mktemp("read-back-shard"))


def _on_default_types(body: dict) -> dict:
    """The generated event with its actor and targets moved onto the default types and no
    custom values: everything else (time, method, url, content, ids) is as generated."""
    event = dict(body)
    event["actor_type"] = "default_actor"
    event["actor"] = {"entity_id": body["actor"]["entity_id"], "fields": {"name": {"Text": body["url"]}}}
    event["targets"] = [
        {"entity_type": "default_target", "input": {"entity_id": t["input"]["entity_id"]}}
        for t in body.get("targets", [])
    ]
    event.pop("custom", None)
    return event


def _call(shard: ShardProcess, method: str, path: str, **parts):
    """One request built by hand, checked against the document like a generated one."""
    case = VALID[path][method].Case(**parts)
    return case.call_and_validate(base_url=shard.url, headers=_admin(shard), checks=CONFORMANCE)


# Said in the document's words, not its schemas: a {"Json": s} string must parse, and an
# integer is written 100, not 100.0. A generated event may break them and get a 400.
RULES_THE_SCHEMA_CANNOT_STATE = (
    "the Json string is not valid JSON",
    "expected an integer count of UTC microseconds",
)
DOC_EVENT = VALID["/v1/logs"]["POST"].Case(body=DOC_SCHEMAS["AppendRequest"]["examples"][0])


@pytest.mark.slow
@FUZZ_SETTINGS
@example(append=DOC_EVENT, occurred_at=MICROS["minimum"])
@example(append=DOC_EVENT, occurred_at=MICROS["maximum"])
@given(
    append=VALID["/v1/logs"]["POST"].as_strategy(),
    # The generator favours small integers; the documented range's ends are shapes too.
    occurred_at=st.one_of(st.none(), st.integers(MICROS["minimum"], MICROS["maximum"])),
)
def test_recorded_events_of_any_valid_shape_read_back_everywhere(append, occurred_at, reading_shard):
    shard = reading_shard
    event = _on_default_types(append.body)
    if occurred_at is not None:
        event["occurred_at"] = occurred_at
    note(f"appended: {json.dumps(event)[:2000]}")
    reply = _call(shard, "POST", "/v1/logs", body=event)
    if reply.status_code == 400:
        assert any(rule in reply.json()["error"] for rule in RULES_THE_SCHEMA_CANNOT_STATE), reply.json()
    assume(reply.status_code == 202)  # only recorded events are read back
    _call(shard, "POST", "/v1/admin/flush")
    query = {"actor_type": "default_actor", "actor_id": event["actor"]["entity_id"], "limit": 10000}
    views = _call(shard, "POST", "/v1/logs/query", body=query).json()
    assert views, "a flushed event is found by its actor"
    _call(shard, "POST", "/v1/logs/count", body=query)
    _call(shard, "POST", "/v1/logs/export", body=query)
    _call(shard, "GET", "/v1/proof/inclusion/{log_id}", path_parameters={"log_id": views[0]["log_id"]})
    _call(
        shard,
        "GET",
        "/v1/entities/{type_name}/{entity_id}/history",
        path_parameters={"type_name": "default_actor", "entity_id": event["actor"]["entity_id"]},
    )
