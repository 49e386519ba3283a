"""Entity types, their fields, and custom log columns: the shapes writes are checked against.

A `TypeSchema` names a type and its `FieldDef`s (kind, required, indexed, protection, blind
index). Redefinition is additive only (`check_redefinition`): rows written under an older
version must stay readable and searchable, so an existing field never changes or goes away,
and a new field cannot be required because older rows lack it.

Type names become directory names under the registry, so `validate_type_name` refuses
anything that could walk a path ("..", "/", NUL, control characters).
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, get_args

from quipu.core.errors import BadInput
from quipu.core.values import KINDS, Kind, Value, expect_object, join, shown

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_FIELDS = 256
MAX_BLIND_N = 32

BlindKind = Literal["None", "Exact", "Prefix", "Ngram"]
_BLIND_KINDS: tuple[str, ...] = get_args(BlindKind)
_SIZED_BLIND = ("Prefix", "Ngram")
_ADDITIVE_ONLY = "redefinition is additive only (add new fields, never change or remove one)"


class Protection(StrEnum):
    """How a field's value is stored: plain, hashed, keyed hash, or RSA-wrapped AES-GCM."""

    NONE = "None"
    SHA256 = "Sha256"
    HMAC = "Hmac"
    RSA = "Rsa"


def validate_type_name(name: object, where: str = "type_name") -> str:
    """Refuse a type name that is not a plain identifier; it becomes a directory name."""
    if not isinstance(name, str):
        raise BadInput(f"{where}: a type name is a string")
    if name in (".", "..") or not _TYPE_NAME.fullmatch(name):
        raise BadInput(
            f"{where}: type name {shown(name)} is invalid; use 1-64 characters of A-Z a-z 0-9 "
            "_ . - starting with a letter or _ (no '/', '..' or control characters)"
        )
    return name


def validate_field_name(name: object, where: str = "name") -> str:
    """Field and column names: identifiers, so they are safe in keys, paths and messages."""
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        raise BadInput(
            f"{where}: name {shown(name)} is invalid; use 1-64 characters of A-Z a-z 0-9 _ "
            "starting with a letter or _"
        )
    return name


def _read_bool(obj: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise BadInput(f"{join(where, key)}: expected true or false")
    return value


def _read_kind(obj: Mapping[str, Any], where: str, lower_ok: bool = False) -> Kind:
    kind = obj.get("kind", "Text")
    if lower_ok and isinstance(kind, str) and kind.capitalize() in KINDS and kind.islower():
        kind = kind.capitalize()
    if kind not in KINDS:
        raise BadInput(f"{join(where, 'kind')}: kind must be one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class BlindIndex:
    """Search tokens kept beside a protected value: whole value, prefixes, or n-grams."""

    kind: BlindKind = "None"
    n: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _BLIND_KINDS:
            raise BadInput(f"blind index kind must be one of {', '.join(_BLIND_KINDS)}")
        sized = self.kind in _SIZED_BLIND
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise BadInput(f"blind index {self.kind}: n must be an integer")
        if sized and not 1 <= self.n <= MAX_BLIND_N:
            raise BadInput(f"blind index {self.kind}(n): n must be 1..{MAX_BLIND_N}")
        if not sized and self.n != 0:
            raise BadInput(f"blind index {self.kind} takes no n")

    @classmethod
    def from_json(cls, obj: object, where: str = "search") -> "BlindIndex":
        """Read "None" | "Exact" | {"Prefix": n} | {"Ngram": n}."""
        if obj in ("None", "Exact"):
            return cls(obj)
        if isinstance(obj, Mapping) and len(obj) == 1:
            ((kind, n),) = obj.items()
            if kind in _SIZED_BLIND:
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BLIND_N:
                    raise BadInput(f"{where}: {kind} takes an integer n in 1..{MAX_BLIND_N}")
                return cls(kind, n)
        raise BadInput(f'{where}: a blind index is "None", "Exact", {{"Prefix": n}} or {{"Ngram": n}}')

    def to_json(self) -> str | dict[str, int]:
        return {self.kind: self.n} if self.kind in _SIZED_BLIND else self.kind

    def __str__(self) -> str:
        return f"{self.kind}({self.n})" if self.kind in _SIZED_BLIND else self.kind


_FIELD_KEYS = ("name", "kind", "required", "indexed", "protection", "search")


@dataclass(frozen=True)
class FieldDef:
    """One field of an entity type. Build with FieldDef.text("ssn").req().protect(...)."""

    name: str
    kind: Kind = "Text"
    required: bool = False
    indexed: bool = False
    protection: Protection = Protection.NONE
    search: BlindIndex = BlindIndex()

    def __post_init__(self) -> None:
        validate_field_name(self.name, "field")
        where = f"field '{self.name}'"
        if self.kind not in KINDS:
            raise BadInput(f"{where}: kind must be one of {', '.join(KINDS)}")
        if not isinstance(self.required, bool) or not isinstance(self.indexed, bool):
            raise BadInput(f"{where}: required and indexed are true or false")
        if not isinstance(self.protection, Protection):
            raise BadInput(f"{where}: protection must be a Protection")
        if not isinstance(self.search, BlindIndex):
            raise BadInput(f"{where}: search must be a BlindIndex")
        # Protection and n-gram/prefix tokens work on text; a number has no bytes to hash.
        if self.protection is not Protection.NONE and self.kind != "Text":
            raise BadInput(f"{where}: protection {self.protection.value} needs kind Text, not {self.kind}")
        if self.search.kind in _SIZED_BLIND and self.kind != "Text":
            raise BadInput(f"{where}: a {self.search.kind} blind index needs kind Text")

    @classmethod
    def from_json(cls, obj: object, where: str = "field") -> "FieldDef":
        body = expect_object(obj, where, _FIELD_KEYS, ("name",))
        name = validate_field_name(body["name"], join(where, "name"))
        protection = body.get("protection", "None")
        if protection not in tuple(p.value for p in Protection):
            raise BadInput(
                f"{join(where, 'protection')}: protection must be one of "
                f"{', '.join(p.value for p in Protection)}"
            )
        kind = _read_kind(body, where)
        required = _read_bool(body, "required", where)
        indexed = _read_bool(body, "indexed", where)
        search = BlindIndex.from_json(body.get("search", "None"), join(where, "search"))
        try:
            return cls(name, kind, required, indexed, Protection(protection), search)
        except BadInput as err:  # a rule across attributes, e.g. Hmac on a Number field
            raise BadInput(f"{where}: {err}") from err

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "required": self.required,
            "indexed": self.indexed,
            "protection": self.protection.value,
            "search": self.search.to_json(),
        }

    @classmethod
    def text(cls, name: str) -> "FieldDef":
        return cls(name, "Text")

    @classmethod
    def number(cls, name: str) -> "FieldDef":
        return cls(name, "Number")

    @classmethod
    def json(cls, name: str) -> "FieldDef":
        return cls(name, "Json")

    def req(self) -> "FieldDef":
        return replace(self, required=True)

    def idx(self) -> "FieldDef":
        return replace(self, indexed=True)

    def protect(self, protection: Protection) -> "FieldDef":
        return replace(self, protection=protection)

    def blind(self, search: BlindIndex) -> "FieldDef":
        return replace(self, search=search)


@dataclass(frozen=True)
class TypeSchema:
    """An entity type: its name and fields (a list is accepted and stored as a tuple)."""

    type_name: str
    fields: tuple[FieldDef, ...]

    def __post_init__(self) -> None:
        validate_type_name(self.type_name)
        object.__setattr__(self, "fields", tuple(self.fields))
        if len(self.fields) > MAX_FIELDS:
            raise BadInput(f"type {self.type_name}: at most {MAX_FIELDS} fields")
        seen: set[str] = set()
        for f in self.fields:
            if not isinstance(f, FieldDef):
                raise BadInput(f"type {self.type_name}: fields must be FieldDefs")
            if f.name in seen:
                raise BadInput(f"type {self.type_name}: field '{f.name}' is defined twice")
            seen.add(f.name)

    @classmethod
    def from_json(cls, obj: object, where: str = "") -> "TypeSchema":
        body = expect_object(obj, where, ("type_name", "fields"), ("type_name", "fields"))
        name = validate_type_name(body["type_name"], join(where, "type_name"))
        raw = body["fields"]
        if not isinstance(raw, list):
            raise BadInput(f"{join(where, 'fields')}: expected an array of field definitions")
        if len(raw) > MAX_FIELDS:
            raise BadInput(f"{join(where, 'fields')}: at most {MAX_FIELDS} fields per type")
        fields = [FieldDef.from_json(f, f"{join(where, 'fields')}[{i}]") for i, f in enumerate(raw)]
        return cls(name, tuple(fields))

    def to_json(self) -> dict[str, Any]:
        return {"type_name": self.type_name, "fields": [f.to_json() for f in self.fields]}

    def field(self, name: str) -> FieldDef | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, FieldDef]:
        """Fields by name: every registry write looks fields up (cached on the frozen instance)."""
        return {f.name: f for f in self.fields}


def _show_attr(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Protection):
        return value.value
    return str(value)


def check_redefinition(old: TypeSchema, new: TypeSchema) -> None:
    """Refuse any redefinition that is not purely additive.

    Old rows pin the version they were written under; if a field changed kind, protection
    or index, old values would stop matching queries (or stop decrypting), and a removed or
    newly required field would make old rows invalid under the new version.
    """
    name = old.type_name
    if new.type_name != name:
        raise BadInput(f"type {name}: a redefinition must keep the type name")
    for old_field in old.fields:
        new_field = new.field(old_field.name)
        if new_field is None:
            raise BadInput(f"type {name}: field '{old_field.name}' is removed; {_ADDITIVE_ONLY}")
        for attr in ("kind", "required", "indexed", "protection", "search"):
            before, after = getattr(old_field, attr), getattr(new_field, attr)
            if before != after:
                raise BadInput(
                    f"type {name}: field '{old_field.name}' changes {attr} from "
                    f"{_show_attr(before)} to {_show_attr(after)}; {_ADDITIVE_ONLY}"
                )
    for new_field in new.fields:
        if old.field(new_field.name) is None and new_field.required:
            raise BadInput(
                f"type {name}: new field '{new_field.name}' cannot be required, since entities "
                "written under older versions lack it; add it with required: false"
            )


def default_actor_type() -> TypeSchema:
    return TypeSchema("default_actor", (FieldDef.text("name").idx(),))


def default_target_type() -> TypeSchema:
    return TypeSchema("default_target", (FieldDef.text("name").idx(),))


@dataclass(frozen=True)
class ColumnDef:
    """A custom log column (text / number / json); fixed once registered."""

    name: str
    kind: Kind = "Text"
    required: bool = False

    def __post_init__(self) -> None:
        validate_field_name(self.name, "column")
        if self.kind not in KINDS:
            raise BadInput(f"column '{self.name}': kind must be one of {', '.join(KINDS)}")
        if not isinstance(self.required, bool):
            raise BadInput(f"column '{self.name}': required is true or false")

    @classmethod
    def from_json(cls, obj: object, where: str = "") -> "ColumnDef":
        """Read {"name", "kind", "required"}; kind also in lower case ("text")."""
        body = expect_object(obj, where, ("name", "kind", "required"), ("name",))
        name = validate_field_name(body["name"], join(where, "name"))
        return cls(name, _read_kind(body, where, lower_ok=True), _read_bool(body, "required", where))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "required": self.required}


def check_column_redefinition(old: ColumnDef, new: ColumnDef) -> None:
    """A column is fixed once registered: rows already hold values of its kind."""
    for attr in ("name", "kind", "required"):
        before, after = getattr(old, attr), getattr(new, attr)
        if before != after:
            raise BadInput(
                f"column '{old.name}' changes {attr} from {_show_attr(before)} to "
                f"{_show_attr(after)}; a custom column never changes once registered "
                "(register a new column instead)"
            )


def validate_entity_fields(schema: TypeSchema, fields: Mapping[str, Value], where: str) -> None:
    """Every given field exists in the type and has its kind (required-ness is checked by
    the registry on the merged version, since an update may send only changed fields)."""
    # Callers pass the entity ("actor") or its fields ("actor.fields"); name the field either way.
    base = where if where.endswith("fields") else join(where, "fields")
    for name, value in fields.items():
        place = join(base, name if isinstance(name, str) else "?")
        defined = schema.field(name)
        if defined is None:
            raise BadInput(
                f"{place}: type {schema.type_name} has no field {shown(name)}; "
                f"define it first (known fields: {_known(schema)})"
            )
        if not isinstance(value, Value) or value.kind != defined.kind:
            got = value.kind if isinstance(value, Value) else type(value).__name__
            raise BadInput(f"{place}: field is {defined.kind}, got {got}")


def _known(schema: TypeSchema, limit: int = 10) -> str:
    names = [f.name for f in schema.fields]
    if not names:
        return "none"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def missing_required(schema: TypeSchema, present_names: Iterable[str]) -> list[str]:
    """The required fields not among `present_names`, in definition order."""
    present = set(present_names)
    return [f.name for f in schema.fields if f.required and f.name not in present]
