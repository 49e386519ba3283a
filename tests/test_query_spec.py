"""Query forms: LogQuery / TargetFilter / AccessQuery parsing, rejections, and a value-free shape."""

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quipu.core.errors import BadInput
from quipu.core.event import MAX_OCCURRED_AT
from quipu.core.query_spec import AccessQuery, LogQuery, TargetFilter, query_shape
from quipu.core.values import Value

PROBE = "PROBE-7f3a"


def _filter(**overrides: Any) -> dict[str, Any]:
    return {"entity_type": "document", "field": "name", "value": {"Text": "report"}, **overrides}


# --- TargetFilter -----------------------------------------------------------------------


def test_filter_defaults_to_exact_and_inherits_include_past() -> None:
    f = TargetFilter.from_json(_filter())
    assert f == TargetFilter("document", "name", Value.text_("report"))
    assert f.mode == "exact" and f.include_past is None


@pytest.mark.parametrize("mode", ["exact", "exact_ci", "prefix", "contains"])
def test_every_mode_is_accepted(mode: str) -> None:
    assert TargetFilter.from_json(_filter(mode=mode)).mode == mode


def test_filter_value_may_be_plain_json() -> None:
    assert TargetFilter.from_json(_filter(value="report")).value == Value.text_("report")
    assert TargetFilter.from_json(_filter(value=3)).value == Value.number(3)


def test_fluent_modes_return_new_filters() -> None:
    base = TargetFilter.exact("document", "name", Value.text_("report"))
    assert base.contains().mode == "contains"
    assert base.prefix().mode == "prefix"
    assert base.exact_ci().mode == "exact_ci"
    assert base.mode == "exact"
    assert TargetFilter.exact("document", "name", "report") == base


def test_filter_to_json_round_trips() -> None:
    f = TargetFilter("document", "name", Value.number(2), "prefix", include_past=False)
    assert f.to_json() == {
        "entity_type": "document",
        "field": "name",
        "value": {"Number": 2},
        "mode": "prefix",
        "include_past": False,
    }
    assert TargetFilter.from_json(f.to_json()) == f


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        ({"mode": "fuzzy"}, "filter.mode: unknown match mode; use one of exact, exact_ci, prefix, contains"),
        ({"mode": None}, "filter.mode: unknown match mode"),
        ({"value": True}, "filter.value: booleans and null are not values"),
        ({"value": {"Text": 1}}, "filter.value: Text takes a string"),
        ({"include_past": "yes"}, "filter.include_past: expected true or false"),
        ({"entity_type": "../etc"}, "filter.entity_type: type name '../etc' is invalid"),
        ({"field": "a.b"}, "filter.field: name 'a.b' is invalid"),
        ({"op": "eq"}, "filter: unknown key 'op'"),
    ],
)
def test_bad_filter_is_rejected_naming_the_place(overrides: dict[str, Any], expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        TargetFilter.from_json(_filter(**overrides))


@pytest.mark.parametrize("key", ["entity_type", "field", "value"])
def test_filter_requires_its_keys(key: str) -> None:
    body = _filter()
    del body[key]
    with pytest.raises(BadInput, match=f"missing required key '{key}'"):
        TargetFilter.from_json(body)


# --- LogQuery ---------------------------------------------------------------------------


def test_empty_query_has_the_defaults() -> None:
    q = LogQuery.from_json({})
    assert q == LogQuery()
    assert (q.include_past, q.order, q.limit, q.cursor) == (True, "desc", 100, None)


def test_full_query_is_read() -> None:
    body = {
        "from_micros": 10,
        "to_micros": 20,
        "actor_type": "default_actor",
        "actor_id": "u-1",
        "actor_filters": [{"entity_type": "default_actor", "field": "name", "value": "alice"}],
        "method": "PUT",
        "url": "/api/docs/7",
        "targets": [_filter(mode="contains")],
        "include_past": False,
        "tenant": "acme",
        "order": "asc",
        "limit": 10_000,
        "cursor": "opaque",
    }
    q = LogQuery.from_json(body)
    assert q.actor_filters == (TargetFilter.exact("default_actor", "name", "alice"),)
    assert q.targets == (TargetFilter("document", "name", Value.text_("report"), "contains"),)
    assert (q.from_micros, q.to_micros, q.order, q.limit, q.tenant) == (10, 20, "asc", 10_000, "acme")
    assert LogQuery.from_json(q.to_json()) == q


def test_actor_filter_without_entity_type_takes_the_actor_type() -> None:
    q = LogQuery.from_json(
        {"actor_type": "default_actor", "actor_filters": [{"field": "name", "value": "alice"}]}
    )
    assert q.actor_filters[0].entity_type == "default_actor"


def test_actor_filter_on_another_type_is_rejected() -> None:
    body = {"actor_type": "default_actor", "actor_filters": [_filter()]}
    with pytest.raises(BadInput, match=r"actor_filters\[0\]\.entity_type: must equal actor_type"):
        LogQuery.from_json(body)


def test_actor_filters_need_an_actor_type() -> None:
    with pytest.raises(BadInput, match="actor_filters\\[0\\]: missing required key 'entity_type'"):
        LogQuery.from_json({"actor_filters": [{"field": "name", "value": "a"}]})
    with pytest.raises(BadInput, match="must equal actor_type"):
        LogQuery(actor_filters=(TargetFilter.exact("default_actor", "name", "a"),))


def test_null_optional_keys_mean_unset() -> None:
    body = {"from_micros": None, "method": None, "cursor": None, "limit": None, "order": None}
    assert LogQuery.from_json(body) == LogQuery()


def test_equal_bounds_are_an_empty_range_not_an_error() -> None:
    assert LogQuery.from_json({"from_micros": 5, "to_micros": 5}).to_micros == 5


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"limt": 5}, "unknown key 'limt'"),
        ({"limit": 0}, "limit: expected an integer in 1..10000"),
        ({"limit": 10_001}, "limit: expected an integer in 1..10000"),
        ({"limit": True}, "limit: expected an integer"),
        ({"limit": 5.0}, "limit: expected an integer"),
        ({"from_micros": True}, "from_micros: expected an integer"),
        ({"to_micros": "10"}, "to_micros: expected an integer"),
        ({"from_micros": -1}, "from_micros: must be between 0"),
        ({"from_micros": 20, "to_micros": 10}, "from_micros is after to_micros"),
        ({"order": "newest"}, "order: use desc .* or asc"),
        ({"order": ""}, "order: use desc"),
        ({"include_past": 1}, "include_past: expected true or false"),
        ({"method": "GET /"}, "method: a method is 1-16 letters"),
        ({"url": "/a\nb"}, "url: a url may not contain control characters"),
        ({"actor_type": ".."}, "actor_type: type name '..' is invalid"),
        ({"actor_id": "../etc"}, "actor_id: an entity id"),
        ({"tenant": "a/b"}, "tenant: tenant 'a/b' is invalid"),
        ({"cursor": ""}, "cursor: a cursor is the opaque string"),
        ({"cursor": 5}, "cursor: expected a string"),
        ({"targets": {}}, "targets: expected an array"),
        ({"targets": [_filter(mode="like")]}, "targets\\[0\\].mode: unknown match mode"),
        ({"targets": [_filter()] * 65}, "targets: at most 64 filters"),
        ([], "expected a JSON object"),
    ],
)
def test_bad_query_is_rejected_naming_the_key(body: Any, expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        LogQuery.from_json(body)


def test_query_constructor_checks_like_from_json() -> None:
    with pytest.raises(BadInput, match="limit"):
        LogQuery(limit=0)
    with pytest.raises(BadInput, match="from_micros is after to_micros"):
        LogQuery(from_micros=2, to_micros=1)


# --- query_shape ------------------------------------------------------------------------


def _probed_query() -> LogQuery:
    """Every value-carrying condition set to a string containing PROBE."""
    probe_filter = TargetFilter.exact("document", "name", Value.text_(PROBE)).contains()
    return LogQuery(
        from_micros=1,
        to_micros=2,
        actor_type="default_actor",
        actor_id=PROBE,
        actor_filters=(TargetFilter.exact("default_actor", "name", Value.json({PROBE: PROBE})),),
        method="PROBE",
        url=f"/{PROBE}",
        targets=(probe_filter, TargetFilter.exact("document", "title", f"{PROBE}-2").prefix()),
        tenant=PROBE,
        cursor=PROBE,
    )


def test_query_shape_leaks_no_value() -> None:
    dumped = json.dumps(query_shape(_probed_query()))
    assert PROBE not in dumped
    assert "PROBE" not in dumped


def test_query_shape_keeps_fields_modes_and_time_range() -> None:
    shape = query_shape(_probed_query())
    assert shape["from_micros"] == 1 and shape["to_micros"] == 2
    assert shape["targets"] == [
        {"entity_type": "document", "field": "name", "mode": "contains", "include_past": None},
        {"entity_type": "document", "field": "title", "mode": "prefix", "include_past": None},
    ]
    assert shape["actor_filters"] == [
        {"entity_type": "default_actor", "field": "name", "mode": "exact", "include_past": None}
    ]
    flags = ("method", "url", "actor_id", "tenant", "cursor")
    assert all(shape[k] is True for k in flags)
    assert (shape["order"], shape["limit"], shape["include_past"]) == ("desc", 100, True)


def test_query_shape_of_empty_query_says_nothing_is_set() -> None:
    shape = query_shape(LogQuery())
    assert not any(shape[k] for k in ("method", "url", "actor_id", "tenant", "cursor"))
    assert shape["targets"] == [] and shape["from_micros"] is None


# --- AccessQuery ------------------------------------------------------------------------


def test_access_query_defaults_and_round_trip() -> None:
    assert AccessQuery.from_json({}) == AccessQuery()
    q = AccessQuery.from_json(
        {
            "from_micros": 1,
            "to_micros": 9,
            "operation": "query",
            "actor": "auditor",
            "order": "asc",
            "limit": 5,
            "cursor": "c",
        }
    )
    assert (q.operation, q.actor, q.order, q.limit) == ("query", "auditor", "asc", 5)
    assert AccessQuery.from_json(q.to_json()) == q


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"operation": "drop table"}, "operation: an operation name"),
        ({"operation": 3}, "operation: an operation name"),
        ({"actor": ""}, "actor: an actor is 1..256 characters"),
        ({"actor": "a\x00"}, "actor: an actor is"),
        ({"limit": 0}, "limit: expected an integer in 1..10000"),
        ({"order": "up"}, "order: use desc"),
        ({"from_micros": 3, "to_micros": 1}, "from_micros is after to_micros"),
        ({"method": "GET"}, "unknown key 'method'"),
    ],
)
def test_bad_access_query_is_rejected(body: dict[str, Any], expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        AccessQuery.from_json(body)


# --- properties -------------------------------------------------------------------------

type_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
field_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
values = st.one_of(
    st.text(max_size=20).map(Value.text_),
    st.integers(-(2**63), 2**63).map(Value.number),
    st.floats(allow_nan=False, allow_infinity=False).map(Value.number),
)
modes = st.sampled_from(["exact", "exact_ci", "prefix", "contains"])
filters = st.builds(TargetFilter, type_names, field_names, values, modes, st.none() | st.booleans())
micros = st.none() | st.integers(0, MAX_OCCURRED_AT - 1)


@st.composite
def log_queries(draw: st.DrawFn) -> LogQuery:
    lo, hi = draw(micros), draw(micros)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    actor_type = draw(st.none() | type_names)
    actor_filters = ()
    if actor_type is not None:
        actor_filters = tuple(
            draw(
                st.lists(st.builds(TargetFilter, st.just(actor_type), field_names, values, modes), max_size=2)
            )
        )
    return LogQuery(
        from_micros=lo,
        to_micros=hi,
        actor_type=actor_type,
        actor_id=draw(st.none() | st.from_regex(r"[a-z0-9:-]{1,20}", fullmatch=True)),
        actor_filters=actor_filters,
        method=draw(st.none() | st.from_regex(r"[A-Za-z]{1,16}", fullmatch=True)),
        url=draw(
            st.none() | st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
        ),
        targets=tuple(draw(st.lists(filters, max_size=3))),
        include_past=draw(st.booleans()),
        tenant=draw(st.none() | st.from_regex(r"[a-z0-9_:-]{1,20}", fullmatch=True)),
        order=draw(st.sampled_from(["desc", "asc"])),
        limit=draw(st.integers(1, 10_000)),
        cursor=draw(
            st.none() | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
        ),
    )


@given(log_queries())
def test_log_query_round_trips_through_wire_json(q: LogQuery) -> None:
    assert LogQuery.from_json(orjson.loads(orjson.dumps(q.to_json()))) == q


lower_names = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)
probe_texts = st.text(max_size=10).map(lambda s: f"{s}{PROBE}{s}")
probe_values = st.one_of(
    probe_texts.map(Value.text_),
    probe_texts.map(lambda s: Value.json({"k": s})),
    probe_texts.map(lambda s: Value.json([s])),
)
probe_filters = st.builds(
    TargetFilter, lower_names, lower_names, probe_values, modes, st.none() | st.booleans()
)


@given(
    targets=st.lists(probe_filters, max_size=4),
    actor_field=lower_names,
    actor_value=probe_values,
    suffix=st.from_regex(r"[a-z0-9]{0,10}", fullmatch=True),
)
def test_query_shape_never_holds_a_probe_value(
    targets: list[TargetFilter], actor_field: str, actor_value: Value, suffix: str
) -> None:
    q = LogQuery(
        actor_type="default_actor",
        actor_id=PROBE + suffix,
        actor_filters=(TargetFilter("default_actor", actor_field, actor_value),),
        method="PROBE",
        url=f"/{PROBE}/{suffix}",
        targets=tuple(targets),
        tenant=PROBE + suffix,
        cursor=PROBE + suffix,
    )
    assert "PROBE" not in json.dumps(query_shape(q))
