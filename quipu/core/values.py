"""Tagged values (Text / Number / Json) and log content, parsed from and rendered to JSON.

Every field value, custom column and query term is a `Value`. It has one canonical form so
that the same input always indexes, matches and hashes the same way: Json is stored as its
canonical text (sorted keys, no spaces, via orjson), and `text()` gives the one string used
for matching and blind indexes. Parsing accepts the tagged wire form of the v1 API
(`{"Text": "a"}`) and, for convenience, plain JSON (`"a"`, `3`, `{...}`).

Error messages name the place (`where`, e.g. "actor.fields.name") and the expected form;
they never echo the value, which may be long or sensitive.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from quipu.core.errors import BadInput

Kind = Literal["Text", "Number", "Json"]
KINDS: tuple[str, ...] = get_args(Kind)

ContentKind = Literal["Text", "Json"]
CONTENT_KINDS: tuple[str, ...] = get_args(ContentKind)

# The integer range orjson can write back: a Number must survive every later encode.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
# Floats below this magnitude that are whole render like ints, so Number 1 and 1.0 match.
_EXACT_FLOAT_INT = 2**53
_SHOWN_LIMIT = 40


def shown(name: object, limit: int = _SHOWN_LIMIT) -> str:
    """A key or name quoted for an error message, cut short so a hostile input is not echoed."""
    text = name if isinstance(name, str) else type(name).__name__
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def join(where: str, key: str) -> str:
    """The place of `key` inside `where` ("actor" + "fields" -> "actor.fields")."""
    return f"{where}.{key}" if where else key


def expect_object(
    obj: object, where: str, allowed: Iterable[str], required: Iterable[str] = ()
) -> Mapping[str, Any]:
    """Check a JSON object's shape: a mapping, no unknown keys, every required key present.

    Unknown keys are refused rather than ignored: a misspelt key ("taregts") silently
    dropped from an audit record or a query is worse than a 400.
    """
    place = where or "the request"
    if not isinstance(obj, Mapping):
        raise BadInput(f"{place}: expected a JSON object, got {_json_type(obj)}")
    allowed = tuple(allowed)
    for key in obj:
        if key not in allowed:
            raise BadInput(f"{place}: unknown key {shown(key)}; allowed keys are {', '.join(allowed)}")
    for key in required:
        if key not in obj:
            raise BadInput(f"{place}: missing required key '{key}'")
    return obj


def check_text(s: object, where: str) -> str:
    """A str that can be written as UTF-8 (a lone surrogate would fail at storage time)."""
    if not isinstance(s, str):
        raise BadInput(f"{where}: expected a string, got {_json_type(s)}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadInput(f"{where}: the string is not valid Unicode (lone surrogate)") from err
    return s


def canonical_json(obj: object, where: str) -> str:
    """The canonical text of a JSON-able Python object: sorted keys, compact, UTF-8 safe."""
    _check_json_tree(obj, where)
    return _dump_canonical(obj, where)


def parse_json_text(s: object, where: str) -> str:
    """Canonicalise JSON given as a string (the tagged `{"Json": "..."}` form)."""
    text = check_text(s, where)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise BadInput(f"{where}: the Json string is not valid JSON ({err.msg})") from err
    # orjson.loads yields only JSON types and finite floats, so no tree walk is needed.
    return _dump_canonical(parsed, where)


def _dump_canonical(obj: object, where: str) -> str:
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as err:  # orjson.JSONEncodeError: int range, surrogates, depth
        raise BadInput(f"{where}: cannot be stored as JSON ({err})") from err


def _check_json_tree(obj: object, where: str) -> None:
    """Walk iteratively (no recursion limit) and refuse what orjson would write silently
    wrong (NaN becomes null) or accept loosely (datetimes, dataclasses)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise BadInput(f"{where}: JSON object keys must be strings")
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadInput(f"{where}: JSON cannot hold NaN or infinity")
        elif item is not None and not isinstance(item, str | int | bool):
            raise BadInput(f"{where}: {type(item).__name__} is not a JSON type")


def _json_type(obj: object) -> str:
    """The JSON name of a Python value's type, for messages."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, Mapping):
        return "an object"
    if isinstance(obj, list | tuple):
        return "an array"
    return type(obj).__name__


def _check_number(x: object, where: str) -> int | float:
    """A finite int or float within the range every later encoder can write."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise BadInput(f"{where}: a Number must be a JSON number, got {_json_type(x)}")
    if isinstance(x, float) and not math.isfinite(x):
        raise BadInput(f"{where}: a Number must be finite (no NaN or infinity)")
    if isinstance(x, int) and not MIN_INT <= x <= MAX_INT:
        raise BadInput(f"{where}: a Number integer must lie in -2**63 .. 2**64-1")
    return x


@dataclass(frozen=True)
class Value:
    """One tagged value. Build it with `from_json` or the constructors so Json is canonical."""

    kind: Kind
    value: str | int | float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadInput(f"value kind must be one of {', '.join(KINDS)}, got {shown(self.kind)}")
        if self.kind == "Number":
            _check_number(self.value, "Number value")
        elif not isinstance(self.value, str):
            raise BadInput(f"a {self.kind} value holds a string, got {_json_type(self.value)}")

    @classmethod
    def from_json(cls, obj: object, where: str) -> "Value":
        """Read the tagged form or plain JSON; a one-key dict named after a kind is tagged."""
        if obj is None or isinstance(obj, bool):
            raise BadInput(f"{where}: booleans and null are not values; use Number, Text or Json")
        if isinstance(obj, Mapping) and len(obj) == 1:
            (tag,) = obj.keys()
            if tag in KINDS:
                return cls._from_tagged(tag, obj[tag], where)
        if isinstance(obj, str):
            return cls("Text", check_text(obj, where))
        if isinstance(obj, int | float):
            return cls("Number", _check_number(obj, where))
        if isinstance(obj, Mapping | list):
            return cls("Json", canonical_json(obj, where))
        raise BadInput(f"{where}: {_json_type(obj)} is not a value; use Number, Text or Json")

    @classmethod
    def _from_tagged(cls, tag: str, payload: object, where: str) -> "Value":
        if tag == "Text":
            if not isinstance(payload, str):
                raise BadInput(f"{where}: Text takes a string, got {_json_type(payload)}")
            return cls("Text", check_text(payload, where))
        if tag == "Number":
            return cls("Number", _check_number(payload, where))
        if not isinstance(payload, str):
            raise BadInput(
                f"{where}: Json takes JSON encoded as a string, got {_json_type(payload)}; "
                'send {"Json": "{\\"a\\": 1}"} or the plain object'
            )
        return cls("Json", parse_json_text(payload, where))

    @classmethod
    def text_(cls, s: str) -> "Value":
        return cls("Text", check_text(s, "Text value"))

    @classmethod
    def number(cls, x: int | float) -> "Value":
        return cls("Number", _check_number(x, "Number value"))

    @classmethod
    def json(cls, obj: object) -> "Value":
        """A Json value from a Python object (a str becomes a JSON string, it is not parsed)."""
        return cls("Json", canonical_json(obj, "Json value"))

    def to_json(self) -> dict[str, str | int | float]:
        """The tagged wire form."""
        return {self.kind: self.value}

    def text(self) -> str:
        """The one string used for matching and indexing this value."""
        if self.kind != "Number":
            return str(self.value)
        x = self.value
        if isinstance(x, float) and x.is_integer() and abs(x) < _EXACT_FLOAT_INT:
            return str(int(x))  # 1.0 matches 1: JSON does not tell them apart
        return repr(x) if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Content:
    """The body of a log row: free text or canonical JSON text."""

    kind: ContentKind
    value: str

    def __post_init__(self) -> None:
        if self.kind not in CONTENT_KINDS:
            raise BadInput(f"content kind must be Text or Json, got {shown(self.kind)}")
        if not isinstance(self.value, str):
            raise BadInput(f"content holds a string, got {_json_type(self.value)}")

    @classmethod
    def from_json(cls, obj: object, where: str = "content") -> "Content":
        """Read {"Text": s} / {"Json": "<json>"} or plain JSON (str -> Text, dict/list -> Json)."""
        if isinstance(obj, Mapping) and len(obj) == 1:
            (tag,) = obj.keys()
            if tag in KINDS:
                return cls._from_tagged(tag, obj[tag], where)
        if isinstance(obj, str):
            return cls("Text", check_text(obj, where))
        if isinstance(obj, Mapping | list):
            return cls("Json", canonical_json(obj, where))
        raise BadInput(f"{where}: content is Text or Json, got {_json_type(obj)}")

    @classmethod
    def _from_tagged(cls, tag: str, payload: object, where: str) -> "Content":
        if tag == "Number":
            raise BadInput(f'{where}: content is Text or Json, not Number; send {{"Text": "..."}}')
        if not isinstance(payload, str):
            raise BadInput(f"{where}: {tag} takes a string, got {_json_type(payload)}")
        if tag == "Text":
            return cls("Text", check_text(payload, where))
        return cls("Json", parse_json_text(payload, where))

    @classmethod
    def text_(cls, s: str) -> "Content":
        return cls("Text", check_text(s, "content"))

    @classmethod
    def json(cls, obj: object) -> "Content":
        """Json content from a Python object (a str becomes a JSON string, it is not parsed)."""
        return cls("Json", canonical_json(obj, "content"))

    def to_json(self) -> dict[str, str]:
        return {self.kind: self.value}
