"""Tagged values and content: every accepted wire form, every rejection, canonical JSON."""

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quipu.core.errors import BadInput
from quipu.core.values import MAX_INT, MIN_INT, Content, Value

WHERE = "actor.fields.name"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(MIN_INT, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_trees = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
values = st.one_of(
    st.text().map(Value.text_),
    st.integers(MIN_INT, MAX_INT).map(Value.number),
    st.floats(allow_nan=False, allow_infinity=False).map(Value.number),
    json_trees.map(Value.json),
)


def _over_the_wire(obj: object) -> object:
    """What a server parses after a client serialised `obj`."""
    return orjson.loads(orjson.dumps(obj))


# --- accepted forms ---------------------------------------------------------------------


def test_tagged_text_is_text() -> None:
    assert Value.from_json({"Text": "alice"}, WHERE) == Value("Text", "alice")


def test_tagged_number_accepts_int_and_float() -> None:
    assert Value.from_json({"Number": 42}, WHERE) == Value("Number", 42)
    assert Value.from_json({"Number": 2.5}, WHERE) == Value("Number", 2.5)


def test_tagged_json_string_is_parsed_and_canonicalised() -> None:
    v = Value.from_json({"Json": '{ "b": 1, "a": [1, 2] }'}, WHERE)
    assert v == Value("Json", '{"a":[1,2],"b":1}')


def test_tagged_json_may_hold_any_json_including_scalars() -> None:
    assert Value.from_json({"Json": "true"}, WHERE).value == "true"
    assert Value.from_json({"Json": '"s"'}, WHERE).value == '"s"'


def test_plain_string_is_text() -> None:
    assert Value.from_json("alice", WHERE) == Value.text_("alice")


def test_plain_numbers_are_numbers() -> None:
    assert Value.from_json(7, WHERE) == Value.number(7)
    assert Value.from_json(-0.25, WHERE) == Value.number(-0.25)


def test_plain_object_and_array_are_canonical_json() -> None:
    assert Value.from_json({"z": {"y": 1, "x": 2}}, WHERE).value == '{"z":{"x":2,"y":1}}'
    assert Value.from_json([3, {"b": None, "a": True}], WHERE).value == '[3,{"a":true,"b":null}]'


def test_dict_with_a_kind_name_among_other_keys_is_plain_json() -> None:
    v = Value.from_json({"Text": "a", "other": 1}, WHERE)
    assert v == Value("Json", '{"Text":"a","other":1}')


def test_empty_object_is_json() -> None:
    assert Value.from_json({}, WHERE) == Value("Json", "{}")


def test_tagged_and_plain_json_agree() -> None:
    plain = Value.from_json({"b": [1.5, "x"], "a": None}, WHERE)
    tagged = Value.from_json({"Json": '{"a":null,"b":[1.5,"x"]}'}, WHERE)
    assert plain == tagged


def test_to_json_is_the_tagged_form() -> None:
    assert Value.text_("a").to_json() == {"Text": "a"}
    assert Value.number(3).to_json() == {"Number": 3}
    assert Value.json({"k": 1}).to_json() == {"Json": '{"k":1}'}


def test_json_constructor_treats_a_str_as_a_json_string_not_as_json_text() -> None:
    assert Value.json('{"a":1}').value == '"{\\"a\\":1}"'


# --- text(): the matching string --------------------------------------------------------


def test_text_of_text_is_itself() -> None:
    assert Value.text_("Final-Report").text() == "Final-Report"


def test_text_of_int_has_no_decimal_point() -> None:
    assert Value.number(42).text() == "42"
    assert Value.number(-7).text() == "-7"


def test_text_of_float_is_its_repr() -> None:
    assert Value.number(2.5).text() == "2.5"
    assert Value.number(1e300).text() == "1e+300"


def test_whole_float_matches_the_equal_int() -> None:
    assert Value.number(3.0).text() == Value.number(3).text() == "3"
    assert Value.number(-0.0).text() == "0"


def test_text_of_json_is_its_canonical_text() -> None:
    assert Value.from_json({"Json": '{"b":1,"a":2}'}, WHERE).text() == '{"a":2,"b":1}'


# --- rejections -------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [True, False, None, {"Number": True}, {"Text": None}])
def test_booleans_and_null_are_rejected_naming_the_place(obj: object) -> None:
    with pytest.raises(BadInput, match=WHERE):
        Value.from_json(obj, WHERE)


def test_bool_message_says_what_to_use() -> None:
    with pytest.raises(BadInput, match="booleans and null are not values; use Number, Text or Json"):
        Value.from_json(True, WHERE)


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        ({"Text": 5}, "Text takes a string"),
        ({"Text": ["a"]}, "Text takes a string"),
        ({"Number": "x"}, "Number must be a JSON number"),
        ({"Number": [1]}, "Number must be a JSON number"),
        ({"Json": 3}, "Json takes JSON encoded as a string"),
        ({"Json": {"a": 1}}, "Json takes JSON encoded as a string"),
        ({"Json": "{not json"}, "not valid JSON"),
        ({"Json": "NaN"}, "not valid JSON"),
    ],
)
def test_wrong_tagged_payload_is_rejected(obj: object, expect: str) -> None:
    with pytest.raises(BadInput, match=expect) as info:
        Value.from_json(obj, WHERE)
    assert str(info.value).startswith(WHERE + ":")


@pytest.mark.parametrize("x", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(x: float) -> None:
    with pytest.raises(BadInput, match=f"{WHERE}: a Number must be finite"):
        Value.from_json(x, WHERE)
    with pytest.raises(BadInput, match="finite"):
        Value.number(x)
    with pytest.raises(BadInput, match="finite"):
        Value("Number", x)


@pytest.mark.parametrize("x", [MAX_INT + 1, MIN_INT - 1])
def test_integers_beyond_64_bits_are_rejected(x: int) -> None:
    with pytest.raises(BadInput, match="2\\*\\*64-1"):
        Value.from_json({"Number": x}, WHERE)


def test_nan_inside_plain_json_is_rejected_not_turned_into_null() -> None:
    with pytest.raises(BadInput, match=f"{WHERE}: JSON cannot hold NaN"):
        Value.from_json({"a": [1, math.nan]}, WHERE)


def test_non_json_python_objects_are_rejected() -> None:
    with pytest.raises(BadInput, match="set is not a JSON type"):
        Value.json({"a": {1, 2}})
    with pytest.raises(BadInput, match="keys must be strings"):
        Value.json({1: "a"})
    with pytest.raises(BadInput, match="not a value"):
        Value.from_json(b"bytes", WHERE)


def test_lone_surrogate_text_is_rejected() -> None:
    with pytest.raises(BadInput, match=f"{WHERE}: the string is not valid Unicode"):
        Value.from_json("a\ud800", WHERE)


def test_rejection_never_echoes_a_long_value() -> None:
    secret = "S3CRET" * 1000
    for obj in ({"Json": secret}, {"Number": secret}, {"Json": "[" + secret}, {secret: math.nan}):
        with pytest.raises(BadInput) as info:
            Value.from_json(obj, WHERE)
        assert "S3CRET" not in str(info.value)


def test_unknown_kind_in_constructor_is_rejected() -> None:
    with pytest.raises(BadInput, match="value kind must be one of Text, Number, Json"):
        Value("Bool", "x")  # type: ignore[arg-type]


def test_deeply_nested_json_is_rejected_not_crashing() -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(BadInput, match=WHERE):
        Value.from_json({"Json": deep}, WHERE)
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(BadInput, match=WHERE):
        Value.from_json(nested, WHERE)


# --- Content ----------------------------------------------------------------------------


def test_content_accepts_tagged_and_plain_forms() -> None:
    assert Content.from_json({"Text": "hello"}) == Content("Text", "hello")
    assert Content.from_json("hello") == Content("Text", "hello")
    assert Content.from_json({"Json": '{"b":2,"a":1}'}) == Content("Json", '{"a":1,"b":2}')
    assert Content.from_json({"b": 2, "a": 1}) == Content("Json", '{"a":1,"b":2}')
    assert Content.from_json([1, 2]) == Content("Json", "[1,2]")


def test_content_to_json_is_tagged() -> None:
    assert Content("Text", "hi").to_json() == {"Text": "hi"}
    assert Content.json({"a": 1}).to_json() == {"Json": '{"a":1}'}


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        (5, "content is Text or Json, got a number"),
        (None, "content is Text or Json, got null"),
        (True, "content is Text or Json, got a boolean"),
        ({"Number": 5}, "content is Text or Json, not Number"),
        ({"Text": 5}, "Text takes a string"),
        ({"Json": {"a": 1}}, "Json takes a string"),
        ({"Json": "{oops"}, "not valid JSON"),
    ],
)
def test_content_rejections_name_content(obj: object, expect: str) -> None:
    with pytest.raises(BadInput, match=expect) as info:
        Content.from_json(obj)
    assert str(info.value).startswith("content:")


# --- properties -------------------------------------------------------------------------


@given(values)
def test_value_round_trips_through_wire_json(v: Value) -> None:
    assert Value.from_json(_over_the_wire(v.to_json()), WHERE) == v


@given(values)
def test_value_text_is_stable_across_round_trip(v: Value) -> None:
    assert Value.from_json(_over_the_wire(v.to_json()), WHERE).text() == v.text()


@given(json_trees)
def test_canonical_json_is_idempotent(tree: object) -> None:
    once = Value.json(tree)
    again = Value.from_json({"Json": once.value}, WHERE)
    assert again.value == once.value


@given(st.one_of(st.text().map(Content.text_), json_trees.map(Content.json)))
def test_content_round_trips_through_wire_json(c: Content) -> None:
    assert Content.from_json(_over_the_wire(c.to_json())) == c
