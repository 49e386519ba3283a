"""Type schemas, fields, blind indexes, custom columns, and the additive-only redefinition rule."""

import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quipu.core.errors import BadInput
from quipu.core.schema import (
    BlindIndex,
    ColumnDef,
    FieldDef,
    Protection,
    TypeSchema,
    check_column_redefinition,
    check_redefinition,
    default_actor_type,
    default_target_type,
    missing_required,
    validate_entity_fields,
    validate_type_name,
)
from quipu.core.values import Value

PATH_TRICKS = ["../etc", "a/b", "a\x00b", ".", "..", "a\\b", "a\nb", "", "a" * 65, " a", "é"]

field_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,63}", fullmatch=True)
type_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", fullmatch=True)
sized_indexes = st.builds(BlindIndex, st.sampled_from(["Prefix", "Ngram"]), st.integers(1, 32))
plain_indexes = st.sampled_from([BlindIndex(), BlindIndex("Exact")])


@st.composite
def field_defs(draw: st.DrawFn) -> FieldDef:
    """Only valid combinations: protection and Prefix/Ngram need kind Text."""
    kind = draw(st.sampled_from(["Text", "Number", "Json"]))
    text = kind == "Text"
    protection = draw(st.sampled_from(list(Protection))) if text else Protection.NONE
    search = draw(plain_indexes | sized_indexes) if text else draw(plain_indexes)
    return FieldDef(draw(field_names), kind, draw(st.booleans()), draw(st.booleans()), protection, search)


type_schemas = st.builds(
    TypeSchema,
    type_names,
    st.lists(field_defs(), max_size=8, unique_by=lambda f: f.name).map(tuple),
)


def _schema(*fields: FieldDef, name: str = "document") -> TypeSchema:
    return TypeSchema(name, fields)


# --- FieldDef ---------------------------------------------------------------------------


def test_field_json_defaults_to_optional_plain_text() -> None:
    assert FieldDef.from_json({"name": "title"}) == FieldDef("title")
    assert FieldDef("title").to_json() == {
        "name": "title",
        "kind": "Text",
        "required": False,
        "indexed": False,
        "protection": "None",
        "search": "None",
    }


def test_field_json_reads_every_attribute() -> None:
    obj = {
        "name": "ssn",
        "kind": "Text",
        "required": True,
        "indexed": True,
        "protection": "Hmac",
        "search": {"Ngram": 3},
    }
    expected = FieldDef.text("ssn").req().idx().protect(Protection.HMAC).blind(BlindIndex("Ngram", 3))
    assert FieldDef.from_json(obj) == expected
    assert expected.to_json() == obj


def test_fluent_helpers_return_new_fields() -> None:
    base = FieldDef.number("age")
    assert base.req() is not base and base.required is False
    assert base.req().idx() == FieldDef("age", "Number", required=True, indexed=True)
    assert FieldDef.json("meta").kind == "Json"


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        ({"name": "a", "colour": "red"}, "fields\\[0\\]: unknown key 'colour'"),
        ({"kind": "Text"}, "fields\\[0\\]: missing required key 'name'"),
        ({"name": "a", "kind": "text"}, "fields\\[0\\].kind: kind must be one of Text, Number, Json"),
        ({"name": "a", "required": "yes"}, "fields\\[0\\].required: expected true or false"),
        ({"name": "a", "indexed": 1}, "fields\\[0\\].indexed: expected true or false"),
        ({"name": "a", "protection": "Aes"}, "fields\\[0\\].protection: protection must be one of"),
        ({"name": "a", "protection": {"x": 1}}, "fields\\[0\\].protection"),
        ({"name": "a", "search": "Fuzzy"}, "fields\\[0\\].search: a blind index is"),
        ({"name": "1a"}, "fields\\[0\\].name: name '1a' is invalid"),
        ({"name": "a-b"}, "fields\\[0\\].name: name 'a-b' is invalid"),
        ("a", "fields\\[0\\]: expected a JSON object"),
    ],
)
def test_bad_field_json_is_rejected_naming_the_place(obj: object, expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        FieldDef.from_json(obj, "fields[0]")


@pytest.mark.parametrize("protection", [Protection.SHA256, Protection.HMAC, Protection.RSA])
@pytest.mark.parametrize("kind", ["Number", "Json"])
def test_protected_field_must_be_text(protection: Protection, kind: str) -> None:
    with pytest.raises(BadInput, match=f"field 'f': protection {protection.value} needs kind Text"):
        FieldDef("f", kind).protect(protection)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="fields\\[0\\]: field 'f': protection"):
        FieldDef.from_json({"name": "f", "kind": kind, "protection": protection.value}, "fields[0]")


@pytest.mark.parametrize("index", [BlindIndex("Prefix", 4), BlindIndex("Ngram", 3)])
def test_prefix_and_ngram_indexes_need_text(index: BlindIndex) -> None:
    with pytest.raises(BadInput, match=f"a {index.kind} blind index needs kind Text"):
        FieldDef.number("n").blind(index)


def test_exact_blind_index_is_allowed_on_numbers() -> None:
    assert FieldDef.number("n").blind(BlindIndex("Exact")).search.kind == "Exact"


def test_field_names_up_to_64_characters_are_accepted() -> None:
    assert FieldDef.text("_" + "a" * 63).name == "_" + "a" * 63
    with pytest.raises(BadInput, match="is invalid"):
        FieldDef.text("a" * 65)


def test_field_name_message_does_not_echo_a_long_name() -> None:
    with pytest.raises(BadInput) as info:
        FieldDef.text("x" * 5000)
    assert "x" * 100 not in str(info.value)


# --- BlindIndex -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "index"),
    [
        ("None", BlindIndex()),
        ("Exact", BlindIndex("Exact")),
        ({"Prefix": 4}, BlindIndex("Prefix", 4)),
        ({"Ngram": 1}, BlindIndex("Ngram", 1)),
        ({"Ngram": 32}, BlindIndex("Ngram", 32)),
    ],
)
def test_blind_index_json_forms(obj: object, index: BlindIndex) -> None:
    assert BlindIndex.from_json(obj) == index
    assert index.to_json() == obj


@pytest.mark.parametrize(
    "obj",
    [{"Prefix": 0}, {"Ngram": 33}, {"Prefix": True}, {"Prefix": "4"}, "Prefix", {"Exact": 1}, None, 3],
)
def test_bad_blind_index_is_rejected(obj: object) -> None:
    with pytest.raises(BadInput, match="search:"):
        BlindIndex.from_json(obj)


def test_blind_index_constructor_checks_n() -> None:
    with pytest.raises(BadInput, match=r"n must be 1\.\.32"):
        BlindIndex("Ngram", 0)
    with pytest.raises(BadInput, match="takes no n"):
        BlindIndex("Exact", 3)


# --- TypeSchema -------------------------------------------------------------------------


def test_type_schema_json_round_trip() -> None:
    obj = {"type_name": "patient", "fields": [{"name": "ssn", "protection": "Hmac", "indexed": True}]}
    schema = TypeSchema.from_json(obj)
    assert schema == TypeSchema("patient", (FieldDef.text("ssn").idx().protect(Protection.HMAC),))
    assert TypeSchema.from_json(schema.to_json()) == schema


def test_type_schema_accepts_a_list_of_fields() -> None:
    assert TypeSchema("doc", [FieldDef.text("a")]).fields == (FieldDef.text("a"),)  # type: ignore[arg-type]


def test_field_lookup_by_name() -> None:
    schema = _schema(FieldDef.text("a"), FieldDef.number("b"))
    assert schema.field("b") == FieldDef.number("b")
    assert schema.field("c") is None


def test_duplicate_field_names_are_rejected() -> None:
    with pytest.raises(BadInput, match="type document: field 'a' is defined twice"):
        TypeSchema.from_json({"type_name": "document", "fields": [{"name": "a"}, {"name": "a"}]})


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        ({"fields": []}, "missing required key 'type_name'"),
        ({"type_name": "doc"}, "missing required key 'fields'"),
        ({"type_name": "doc", "fields": {}}, "fields: expected an array"),
        ({"type_name": "doc", "fields": [], "extra": 1}, "unknown key 'extra'"),
        ({"type_name": 5, "fields": []}, "type_name: a type name is a string"),
        ({"type_name": "doc", "fields": [{"name": "a", "kind": "Blob"}]}, "fields\\[0\\].kind"),
        ({"type_name": "doc", "fields": [{"name": "a"}] * 257}, "at most 256 fields"),
    ],
)
def test_bad_type_schema_json_is_rejected(obj: object, expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        TypeSchema.from_json(obj)


@pytest.mark.parametrize("name", PATH_TRICKS)
def test_path_tricks_in_type_names_are_rejected(name: str) -> None:
    with pytest.raises(BadInput, match=r"type_name: type name .* is invalid"):
        validate_type_name(name)
    with pytest.raises(BadInput, match="type_name"):
        TypeSchema.from_json({"type_name": name, "fields": []})


@pytest.mark.parametrize("name", ["document", "a.b-c_d", "_x", "v1.2", "A" * 64])
def test_plain_type_names_are_accepted(name: str) -> None:
    assert validate_type_name(name) == name


def test_default_types_have_an_indexed_name() -> None:
    assert default_actor_type() == TypeSchema("default_actor", (FieldDef.text("name").idx(),))
    assert default_target_type() == TypeSchema("default_target", (FieldDef.text("name").idx(),))


# --- redefinition -----------------------------------------------------------------------

BASE = FieldDef.text("name")
CHANGES = [
    ("kind", FieldDef.json("name"), "changes kind from Text to Json"),
    ("required", BASE.req(), "changes required from false to true"),
    ("indexed", BASE.idx(), "changes indexed from false to true"),
    ("protection", BASE.protect(Protection.HMAC), "changes protection from None to Hmac"),
    ("search", BASE.blind(BlindIndex("Prefix", 4)), "changes search from None to Prefix\\(4\\)"),
]


@pytest.mark.parametrize(("attr", "changed", "expect"), CHANGES, ids=[c[0] for c in CHANGES])
def test_changing_an_existing_field_is_rejected(attr: str, changed: FieldDef, expect: str) -> None:
    with pytest.raises(BadInput) as info:
        check_redefinition(_schema(BASE), _schema(changed))
    message = str(info.value)
    assert message.startswith("type document: field 'name' ")
    assert attr in message
    assert "redefinition is additive only" in message
    assert re.search(expect, message)


@pytest.mark.parametrize(("attr", "changed", "expect"), CHANGES, ids=[c[0] for c in CHANGES])
def test_reverting_an_attribute_is_rejected_too(attr: str, changed: FieldDef, expect: str) -> None:
    with pytest.raises(BadInput, match=f"field 'name' changes {attr} from"):
        check_redefinition(_schema(changed), _schema(BASE))


def test_protection_change_message_is_exact() -> None:
    with pytest.raises(BadInput) as info:
        check_redefinition(_schema(BASE), _schema(BASE.protect(Protection.HMAC)))
    assert str(info.value) == (
        "type document: field 'name' changes protection from None to Hmac; redefinition is "
        "additive only (add new fields, never change or remove one)"
    )


def test_removing_a_field_is_rejected() -> None:
    with pytest.raises(BadInput, match="type document: field 'name' is removed; redefinition is additive"):
        check_redefinition(_schema(BASE, FieldDef.text("x")), _schema(FieldDef.text("x")))


def test_adding_an_optional_field_is_accepted() -> None:
    check_redefinition(_schema(BASE), _schema(BASE, FieldDef.number("pages").idx()))


def test_adding_a_required_field_is_rejected() -> None:
    with pytest.raises(BadInput, match="type document: new field 'pages' cannot be required"):
        check_redefinition(_schema(BASE), _schema(BASE, FieldDef.number("pages").req()))


def test_identical_redefinition_and_reordering_are_accepted() -> None:
    old = _schema(BASE, FieldDef.number("n"))
    check_redefinition(old, old)
    check_redefinition(old, _schema(FieldDef.number("n"), BASE))


def test_redefinition_must_keep_the_type_name() -> None:
    with pytest.raises(BadInput, match="type document: a redefinition must keep the type name"):
        check_redefinition(_schema(BASE), _schema(BASE, name="other"))


# --- columns ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Text", "text", "Number", "number", "Json", "json"])
def test_column_kind_accepts_both_cases(kind: str) -> None:
    column = ColumnDef.from_json({"name": "region", "kind": kind})
    assert column.kind == kind.capitalize()
    assert column.to_json() == {"name": "region", "kind": kind.capitalize(), "required": False}


def test_column_defaults_to_optional_text() -> None:
    assert ColumnDef.from_json({"name": "region"}) == ColumnDef("region")


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        ({"name": "a/b"}, "name: name 'a/b' is invalid"),
        ({"name": "ok", "kind": "TEXT"}, "kind: kind must be one of"),
        ({"name": "ok", "required": None}, "required: expected true or false"),
        ({"name": "ok", "width": 3}, "unknown key 'width'"),
        ({}, "missing required key 'name'"),
    ],
)
def test_bad_column_json_is_rejected(obj: object, expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        ColumnDef.from_json(obj)


def test_identical_column_redefinition_is_accepted() -> None:
    check_column_redefinition(ColumnDef("region"), ColumnDef("region"))


@pytest.mark.parametrize(
    ("new", "expect"),
    [
        (ColumnDef("region", "Number"), "column 'region' changes kind from Text to Number"),
        (ColumnDef("region", required=True), "column 'region' changes required from false to true"),
    ],
)
def test_any_column_change_is_rejected(new: ColumnDef, expect: str) -> None:
    with pytest.raises(BadInput, match=expect):
        check_column_redefinition(ColumnDef("region"), new)


# --- entity fields ----------------------------------------------------------------------


def test_entity_fields_of_the_right_kind_are_accepted() -> None:
    schema = _schema(BASE, FieldDef.number("pages"))
    validate_entity_fields(schema, {"name": Value.text_("a"), "pages": Value.number(3)}, "actor")


def test_unknown_entity_field_is_rejected_naming_it() -> None:
    with pytest.raises(BadInput, match=r"actor\.fields\.title: type document has no field 'title'"):
        validate_entity_fields(_schema(BASE), {"title": Value.text_("a")}, "actor")


def test_where_may_already_name_the_fields() -> None:
    with pytest.raises(BadInput, match=r"^targets\[0\]\.input\.fields\.title:"):
        validate_entity_fields(_schema(BASE), {"title": Value.text_("a")}, "targets[0].input.fields")


def test_entity_field_of_the_wrong_kind_is_rejected() -> None:
    with pytest.raises(BadInput, match=r"actor\.fields\.name: field is Text, got Number"):
        validate_entity_fields(_schema(BASE), {"name": Value.number(1)}, "actor")


def test_missing_required_lists_absent_required_fields_in_order() -> None:
    schema = _schema(FieldDef.text("b").req(), BASE, FieldDef.text("a").req())
    assert missing_required(schema, ["name"]) == ["b", "a"]
    assert missing_required(schema, {"a", "b"}) == []


# --- properties -------------------------------------------------------------------------


@given(type_schemas)
def test_type_schema_round_trips_through_wire_json(schema: TypeSchema) -> None:
    assert TypeSchema.from_json(orjson.loads(orjson.dumps(schema.to_json()))) == schema


@given(type_schemas)
def test_a_schema_is_a_valid_redefinition_of_itself(schema: TypeSchema) -> None:
    check_redefinition(schema, schema)


@given(st.builds(ColumnDef, field_names, st.sampled_from(["Text", "Number", "Json"]), st.booleans()))
def test_column_round_trips_through_json(column: ColumnDef) -> None:
    assert ColumnDef.from_json(column.to_json()) == column
