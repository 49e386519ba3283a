"""AppendRequest parsing: accepted forms, every rejection naming its key, path tricks, round trips."""

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quipu.core.errors import BadInput
from quipu.core.event import (
    MAX_OCCURRED_AT,
    AuditEvent,
    EntityInput,
    TargetSpec,
    validate_entity_id,
    validate_tenant,
)
from quipu.core.values import Content, Value

PATH_TRICKS = ["../etc", "a/b", "a\x00b", ".", "..", "a\\b", "a\nb", "a\x7fb", ""]


def _request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "actor_type": "default_actor",
        "actor": {"entity_id": "u-1", "fields": {"name": {"Text": "alice"}}},
        "method": "PUT",
        "url": "/api/docs/7",
        "content": {"Text": "renamed"},
    }
    body.update(overrides)
    return body


def _rejects(body: object, expect: str, tenant: str | None = None) -> str:
    with pytest.raises(BadInput, match=expect) as info:
        AuditEvent.from_json(body, tenant)
    return str(info.value)


# --- accepted forms ---------------------------------------------------------------------


def test_minimal_request_is_read_with_defaults() -> None:
    event = AuditEvent.from_json(_request())
    assert event == AuditEvent(
        actor_type="default_actor",
        actor=EntityInput("u-1").text("name", "alice"),
        method="PUT",
        url="/api/docs/7",
        content=Content("Text", "renamed"),
    )
    assert event.targets == () and dict(event.custom) == {}
    assert event.occurred_at is None and event.tenant is None


def test_full_request_is_read() -> None:
    body = _request(
        occurred_at=1_700_000_000_000_000,
        targets=[{"entity_type": "document", "input": {"entity_id": "d-7", "fields": {"pages": 3}}}],
        custom={"region": "eu", "score": {"Number": 1.5}, "meta": {"a": 1}},
        content={"Json": '{"b":1,"a":2}'},
    )
    event = AuditEvent.from_json(body, tenant="acme")
    assert event.occurred_at == 1_700_000_000_000_000
    assert event.tenant == "acme"
    assert event.targets == (TargetSpec("document", EntityInput("d-7").number("pages", 3)),)
    assert dict(event.custom) == {
        "region": Value.text_("eu"),
        "score": Value.number(1.5),
        "meta": Value.json({"a": 1}),
    }
    assert event.content == Content("Json", '{"a":2,"b":1}')


def test_entity_without_fields_has_none() -> None:
    assert EntityInput.from_json({"entity_id": "x"}, "actor") == EntityInput("x")


def test_to_json_is_an_append_request_without_the_tenant() -> None:
    body = _request(occurred_at=5, custom={"region": {"Text": "eu"}})
    event = AuditEvent.from_json(body, tenant="acme")
    out = event.to_json()
    assert "tenant" not in out
    assert out == {**body, "targets": []}
    assert AuditEvent.from_json(out, tenant="acme") == event


def test_fluent_builders_return_new_objects() -> None:
    actor = EntityInput("u-1")
    named = actor.text("name", "alice").number("age", 30).json("tags", ["a"])
    assert dict(actor.fields) == {}
    assert dict(named.fields) == {
        "name": Value.text_("alice"),
        "age": Value.number(30),
        "tags": Value.json(["a"]),
    }
    event = AuditEvent("default_actor", named, "GET", "/x", Content.text_(""))
    doc = TargetSpec("document", EntityInput("d-1"))
    assert event.target(doc).target(doc).targets == (doc, doc)
    assert event.targets == ()


def test_event_fields_cannot_be_mutated_after_validation() -> None:
    source = {"name": Value.text_("a")}
    entity = EntityInput("u-1", source)
    source["evil/../name"] = Value.text_("b")
    assert list(entity.fields) == ["name"]
    with pytest.raises(TypeError):
        entity.fields["x"] = Value.text_("c")  # type: ignore[index]


@pytest.mark.parametrize("method", ["GET", "put", "PROPFIND", "A" * 16])
def test_methods_of_letters_are_accepted(method: str) -> None:
    assert AuditEvent.from_json(_request(method=method)).method == method


@pytest.mark.parametrize("value", [0, MAX_OCCURRED_AT - 1])
def test_occurred_at_bounds_are_accepted(value: int) -> None:
    assert AuditEvent.from_json(_request(occurred_at=value)).occurred_at == value


def test_sixty_four_targets_are_accepted() -> None:
    targets = [{"entity_type": "doc", "input": {"entity_id": str(i)}} for i in range(64)]
    assert len(AuditEvent.from_json(_request(targets=targets)).targets) == 64


# --- rejections -------------------------------------------------------------------------


def test_unknown_top_level_key_is_rejected_naming_it() -> None:
    _rejects(_request(tenant="other"), "unknown key 'tenant'")
    _rejects(_request(taregts=[]), "unknown key 'taregts'")


@pytest.mark.parametrize("key", ["actor_type", "actor", "method", "url", "content"])
def test_missing_required_key_is_rejected(key: str) -> None:
    body = _request()
    del body[key]
    _rejects(body, f"missing required key '{key}'")


def test_body_must_be_an_object() -> None:
    _rejects([1, 2], "expected a JSON object, got an array")


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (True, "occurred_at: expected an integer"),
        (1.5, "occurred_at: expected an integer"),
        ("5", "occurred_at: expected an integer"),
        (-1, "occurred_at: must be between 0 \\(1970\\) and the end of year 9999"),
        (MAX_OCCURRED_AT, "occurred_at: must be between 0 \\(1970\\) and the end of year 9999"),
        (2**63, "occurred_at: must be between 0 \\(1970\\) and the end of year 9999"),
    ],
)
def test_bad_occurred_at_is_rejected(value: object, expect: str) -> None:
    _rejects(_request(occurred_at=value), expect)


@pytest.mark.parametrize("method", ["", "P T", "GET1", "A" * 17, "PUT\n", 5, None])
def test_bad_method_is_rejected(method: object) -> None:
    _rejects(_request(method=method), "method: a method is 1-16 letters")


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("", "url: a url has 1..8192 characters"),
        ("/" + "a" * 8192, "url: a url has 1..8192 characters"),
        ("/a\nb", "url: a url may not contain control characters"),
        ("/a\x00b", "url: a url may not contain control characters"),
        ("/a\x7f", "url: a url may not contain control characters"),
        (7, "url: expected a string"),
    ],
)
def test_bad_url_is_rejected(url: object, expect: str) -> None:
    _rejects(_request(url=url), expect)


def test_long_url_at_the_limit_is_accepted() -> None:
    assert len(AuditEvent.from_json(_request(url="/" + "a" * 8191)).url) == 8192


def test_more_than_sixty_four_targets_are_rejected() -> None:
    targets = [{"entity_type": "doc", "input": {"entity_id": str(i)}} for i in range(65)]
    _rejects(_request(targets=targets), "targets: at most 64 targets")
    event = AuditEvent.from_json(_request(targets=targets[:64]))
    with pytest.raises(BadInput, match="at most 64"):
        event.target(TargetSpec("doc", EntityInput("extra")))


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        ({"actor": {"entity_id": "u", "fields": {"name": True}}}, "^actor.fields.name: booleans"),
        ({"actor": {"entity_id": "u", "fields": {"name": {"Text": 5}}}}, "^actor.fields.name: Text"),
        ({"actor": {"entity_id": "u", "fields": []}}, "^actor.fields: expected an object"),
        ({"actor": {"entity_id": "u", "fields": {"a/b": "x"}}}, "^actor.fields: name 'a/b' is invalid"),
        ({"actor": {"entity_id": "u", "role": "admin"}}, "^actor: unknown key 'role'"),
        ({"actor": {"fields": {}}}, "^actor: missing required key 'entity_id'"),
        ({"actor": "u-1"}, "^actor: expected a JSON object"),
        ({"content": {"Number": 1}}, "^content: content is Text or Json"),
        ({"content": None}, "^content: content is Text or Json"),
        ({"targets": {}}, "^targets: expected an array"),
        ({"targets": [{"entity_type": "doc"}]}, "^targets\\[0\\]: missing required key 'input'"),
        (
            {"targets": [{"entity_type": "doc", "input": {"entity_id": "d", "x": 1}}]},
            "^targets\\[0\\].input: unknown key 'x'",
        ),
        (
            {"targets": [{"entity_type": "d", "input": {"entity_id": "d", "fields": {"f": None}}}]},
            "^targets\\[0\\].input.fields.f: booleans and null",
        ),
        ({"custom": {"score": {"Number": "high"}}}, "^custom.score: a Number must be a JSON number"),
        ({"custom": []}, "^custom: expected an object"),
        ({"actor_type": "a/b"}, "^actor_type: type name 'a/b' is invalid"),
    ],
)
def test_nested_rejections_name_the_place(overrides: dict[str, Any], expect: str) -> None:
    _rejects(_request(**overrides), expect)


@pytest.mark.parametrize("entity_id", PATH_TRICKS)
def test_path_tricks_in_entity_ids_are_rejected(entity_id: str) -> None:
    with pytest.raises(BadInput, match="entity_id: an entity id"):
        validate_entity_id(entity_id)
    _rejects(_request(actor={"entity_id": entity_id}), "^actor.entity_id: an entity id")
    target = {"entity_type": "doc", "input": {"entity_id": entity_id}}
    _rejects(_request(targets=[target]), "^targets\\[0\\].input.entity_id: an entity id")


@pytest.mark.parametrize("type_name", ["../etc", "a/b", "a\x00b", ".", ".."])
def test_path_tricks_in_type_names_are_rejected(type_name: str) -> None:
    _rejects(_request(actor_type=type_name), "^actor_type: type name")
    target = {"entity_type": type_name, "input": {"entity_id": "d"}}
    _rejects(_request(targets=[target]), "^targets\\[0\\].entity_type: type name")


def test_entity_id_length_limits() -> None:
    assert validate_entity_id("x" * 256) == "x" * 256
    with pytest.raises(BadInput, match=r"1\.\.256 characters"):
        validate_entity_id("x" * 257)


def test_opaque_entity_ids_with_punctuation_and_unicode_are_accepted() -> None:
    for entity_id in ["user:42", "a.b", "...", "émile", "a b", "x@y.z"]:
        assert validate_entity_id(entity_id) == entity_id


@pytest.mark.parametrize("tenant", ["acme", "a.b:c-d_e", "A" * 128, "0"])
def test_plain_tenants_are_accepted(tenant: str) -> None:
    assert validate_tenant(tenant) == tenant
    assert AuditEvent.from_json(_request(), tenant=tenant).tenant == tenant


@pytest.mark.parametrize("tenant", ["", ".", "..", "a/b", "a b", "a\x00", "A" * 129, "é"])
def test_bad_tenants_are_rejected(tenant: str) -> None:
    _rejects(_request(), "^tenant: tenant .* is invalid", tenant=tenant)


def test_unknown_key_message_does_not_echo_a_long_key() -> None:
    message = _rejects({**_request(), "k" * 10_000: 1}, "unknown key")
    assert "k" * 100 not in message


# --- properties -------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
type_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
entity_ids = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=40,
).filter(lambda s: s not in (".", ".."))
values = st.one_of(
    st.text(max_size=20).map(Value.text_),
    st.integers(-(2**63), 2**64 - 1).map(Value.number),
    st.floats(allow_nan=False, allow_infinity=False).map(Value.number),
    st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=3
    ).map(Value.json),
)
entities = st.builds(EntityInput, entity_ids, st.dictionaries(names, values, max_size=4))
events = st.builds(
    AuditEvent,
    actor_type=type_names,
    actor=entities,
    method=st.from_regex(r"[A-Za-z]{1,16}", fullmatch=True),
    url=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60),
    content=st.one_of(
        st.text(max_size=30).map(Content.text_),
        st.lists(st.integers(0, 9), max_size=3).map(Content.json),
    ),
    targets=st.lists(st.builds(TargetSpec, type_names, entities), max_size=4).map(tuple),
    custom=st.dictionaries(names, values, max_size=3),
    occurred_at=st.none() | st.integers(0, MAX_OCCURRED_AT - 1),
    tenant=st.none() | st.from_regex(r"[A-Za-z0-9_:-]{1,20}", fullmatch=True),
)


@given(events)
def test_event_round_trips_through_wire_json(event: AuditEvent) -> None:
    wire = orjson.loads(orjson.dumps(event.to_json()))
    assert AuditEvent.from_json(wire, tenant=event.tenant) == event
