"""Parsed query forms: what a caller asks for, checked, before anything runs.

`LogQuery` is the v1 LogQuery plus our extensions (actor_id, actor_filters, tenant, order,
cursor); `AccessQuery` reads the access (meta-audit) log. Execution lives elsewhere.

`query_shape` is what the access log records about a query: which conditions were set,
on which fields and with which match mode, the time range, order and limit, but never a
term value, so protected-field plaintext searched for never lands in the access log.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from quipu.core.errors import BadInput
from quipu.core.event import (
    CONTROL_CHARS,
    validate_entity_id,
    validate_method,
    validate_micros,
    validate_tenant,
    validate_url,
)
from quipu.core.schema import validate_field_name, validate_type_name
from quipu.core.values import Value, check_text, expect_object, join

Mode = Literal["exact", "exact_ci", "prefix", "contains"]
MODES: tuple[str, ...] = get_args(Mode)
Order = Literal["desc", "asc"]
ORDERS: tuple[str, ...] = get_args(Order)

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
MAX_FILTERS = 64
MAX_CURSOR = 4096
_OPERATION = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_MAX_ACCESS_ACTOR = 256

_FILTER_KEYS = ("entity_type", "field", "value", "mode", "include_past")
_LOG_KEYS = (
    "from_micros",
    "to_micros",
    "actor_type",
    "actor_id",
    "actor_filters",
    "method",
    "url",
    "targets",
    "include_past",
    "tenant",
    "order",
    "limit",
    "cursor",
)
_ACCESS_KEYS = ("from_micros", "to_micros", "operation", "actor", "order", "limit", "cursor")


@dataclass(frozen=True)
class TargetFilter:
    """Match rows that touched an entity of `entity_type` whose `field` matches `value`.

    `include_past=None` means "as the query says" (LogQuery.include_past).
    """

    entity_type: str
    field: str
    value: Value
    mode: Mode = "exact"
    include_past: bool | None = None

    def __post_init__(self) -> None:
        validate_type_name(self.entity_type, "entity_type")
        validate_field_name(self.field, "field")
        if not isinstance(self.value, Value):
            raise BadInput(f"filter on {self.entity_type}.{self.field}: value must be a Value")
        _check_mode(self.mode, "mode")
        _check_optional_bool(self.include_past, "include_past")

    @classmethod
    def from_json(cls, obj: object, where: str = "filter") -> "TargetFilter":
        body = expect_object(obj, where, _FILTER_KEYS, ("entity_type", "field", "value"))
        return cls(
            entity_type=validate_type_name(body["entity_type"], join(where, "entity_type")),
            field=validate_field_name(body["field"], join(where, "field")),
            value=Value.from_json(body["value"], join(where, "value")),
            mode=_check_mode(body.get("mode", "exact"), join(where, "mode")),
            include_past=_check_optional_bool(body.get("include_past"), join(where, "include_past")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entity_type": self.entity_type,
            "field": self.field,
            "value": self.value.to_json(),
            "mode": self.mode,
        }
        if self.include_past is not None:
            out["include_past"] = self.include_past
        return out

    @classmethod
    def exact(cls, entity_type: str, field: str, value: Value | str | int | float) -> "TargetFilter":
        """An exact-match filter; a plain str/number is read as Text/Number."""
        if not isinstance(value, Value):
            value = Value.from_json(value, "value")
        return cls(entity_type, field, value)

    def contains(self) -> "TargetFilter":
        return replace(self, mode="contains")

    def prefix(self) -> "TargetFilter":
        return replace(self, mode="prefix")

    def exact_ci(self) -> "TargetFilter":
        return replace(self, mode="exact_ci")

    def shape(self) -> dict[str, Any]:
        """Which field is matched how, without the value."""
        return {
            "entity_type": self.entity_type,
            "field": self.field,
            "mode": self.mode,
            "include_past": self.include_past,
        }


@dataclass(frozen=True)
class LogQuery:
    """All set conditions AND together; an empty query returns everything up to `limit`.

    `to_micros` is exclusive. `actor_filters` match the actor's fields; each filter's
    entity_type must equal `actor_type`.
    """

    from_micros: int | None = None
    to_micros: int | None = None
    actor_type: str | None = None
    actor_id: str | None = None
    actor_filters: tuple[TargetFilter, ...] = ()
    method: str | None = None
    url: str | None = None
    targets: tuple[TargetFilter, ...] = ()
    include_past: bool = True
    tenant: str | None = None
    order: Order = "desc"
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        _check_range(self.from_micros, self.to_micros)
        if self.actor_type is not None:
            validate_type_name(self.actor_type, "actor_type")
        if self.actor_id is not None:
            validate_entity_id(self.actor_id, "actor_id")
        object.__setattr__(self, "actor_filters", _filters(self.actor_filters, "actor_filters"))
        object.__setattr__(self, "targets", _filters(self.targets, "targets"))
        self._check_actor_filters()
        if self.method is not None:
            validate_method(self.method)
        if self.url is not None:
            validate_url(self.url)
        if not isinstance(self.include_past, bool):
            raise BadInput("include_past: expected true or false")
        if self.tenant is not None:
            validate_tenant(self.tenant)
        _check_page(self.order, self.limit, self.cursor)

    def _check_actor_filters(self) -> None:
        for i, f in enumerate(self.actor_filters):
            if f.entity_type != self.actor_type:
                raise BadInput(
                    f"actor_filters[{i}].entity_type: must equal actor_type; set actor_type "
                    "to the actor's type and filter on its fields"
                )

    @classmethod
    def from_json(cls, obj: object) -> "LogQuery":
        """Read a LogQuery body; an actor filter without entity_type takes actor_type."""
        body = expect_object(obj, "", _LOG_KEYS)
        actor_type = _optional(body, "actor_type", validate_type_name)
        return cls(
            from_micros=_optional(body, "from_micros", validate_micros),
            to_micros=_optional(body, "to_micros", validate_micros),
            actor_type=actor_type,
            actor_id=_optional(body, "actor_id", validate_entity_id),
            actor_filters=_read_filters(body.get("actor_filters"), "actor_filters", actor_type),
            method=_optional(body, "method", validate_method),
            url=_optional(body, "url", validate_url),
            targets=_read_filters(body.get("targets"), "targets", None),
            include_past=_read_bool(body.get("include_past", True), "include_past"),
            tenant=_optional(body, "tenant", validate_tenant),
            **_read_page(body),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            key: getattr(self, key)
            for key in ("from_micros", "to_micros", "actor_type", "actor_id", "method", "url")
            if getattr(self, key) is not None
        }
        if self.actor_filters:
            out["actor_filters"] = [f.to_json() for f in self.actor_filters]
        if self.targets:
            out["targets"] = [f.to_json() for f in self.targets]
        out["include_past"] = self.include_past
        if self.tenant is not None:
            out["tenant"] = self.tenant
        return out | _page_json(self.order, self.limit, self.cursor)


def query_shape(q: LogQuery) -> dict[str, Any]:
    """What the access log keeps of a query: conditions set and how, never a term value.

    Time bounds, order and limit are kept (they are not search terms); method, url, actor
    id, tenant and cursor are reduced to whether they were set.
    """
    return {
        "from_micros": q.from_micros,
        "to_micros": q.to_micros,
        "actor_type": q.actor_type,
        "actor_id": q.actor_id is not None,
        "actor_filters": [f.shape() for f in q.actor_filters],
        "method": q.method is not None,
        "url": q.url is not None,
        "targets": [f.shape() for f in q.targets],
        "include_past": q.include_past,
        "tenant": q.tenant is not None,
        "order": q.order,
        "limit": q.limit,
        "cursor": q.cursor is not None,
    }


@dataclass(frozen=True)
class AccessQuery:
    """A read of the access log: by time range, operation name and acting principal."""

    from_micros: int | None = None
    to_micros: int | None = None
    operation: str | None = None
    actor: str | None = None
    order: Order = "desc"
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        _check_range(self.from_micros, self.to_micros)
        if self.operation is not None:
            _check_operation(self.operation, "operation")
        if self.actor is not None:
            _check_access_actor(self.actor, "actor")
        _check_page(self.order, self.limit, self.cursor)

    @classmethod
    def from_json(cls, obj: object) -> "AccessQuery":
        body = expect_object(obj, "", _ACCESS_KEYS)
        return cls(
            from_micros=_optional(body, "from_micros", validate_micros),
            to_micros=_optional(body, "to_micros", validate_micros),
            operation=_optional(body, "operation", _check_operation),
            actor=_optional(body, "actor", _check_access_actor),
            **_read_page(body),
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            key: getattr(self, key)
            for key in ("from_micros", "to_micros", "operation", "actor")
            if getattr(self, key) is not None
        }
        return out | _page_json(self.order, self.limit, self.cursor)


def _optional(body: Mapping[str, Any], key: str, check: Any) -> Any:
    """`check(value, key)` when the key is present and not null, else None."""
    value = body.get(key)
    return None if value is None else check(value, key)


def _read_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{where}: expected true or false")
    return value


def _check_optional_bool(value: object, where: str) -> bool | None:
    return None if value is None else _read_bool(value, where)


def _check_mode(mode: object, where: str) -> Mode:
    if mode not in MODES:
        raise BadInput(f"{where}: unknown match mode; use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def _check_range(from_micros: int | None, to_micros: int | None) -> None:
    if from_micros is not None:
        validate_micros(from_micros, "from_micros")
    if to_micros is not None:
        validate_micros(to_micros, "to_micros")
    if from_micros is not None and to_micros is not None and from_micros > to_micros:
        raise BadInput("from_micros is after to_micros; swap them (from is inclusive, to exclusive)")


def _check_page(order: object, limit: object, cursor: object) -> None:
    if order not in ORDERS:
        raise BadInput("order: use desc (newest first) or asc (oldest first)")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadInput(f"limit: expected an integer in 1..{MAX_LIMIT}; page with cursor for more")
    if cursor is not None:
        _check_cursor(cursor, "cursor")


def _check_cursor(cursor: object, where: str) -> str:
    text = check_text(cursor, where)
    if not 1 <= len(text) <= MAX_CURSOR:
        raise BadInput(
            f"{where}: a cursor is the opaque string a previous page returned; "
            "omit it (or send null) for the first page"
        )
    return text


def _read_page(body: Mapping[str, Any]) -> dict[str, Any]:
    """order, limit and cursor, with their defaults; checked in __post_init__."""
    order, limit = body.get("order"), body.get("limit")
    return {
        "order": "desc" if order is None else order,
        "limit": DEFAULT_LIMIT if limit is None else limit,
        "cursor": _optional(body, "cursor", _check_cursor),
    }


def _page_json(order: str, limit: int, cursor: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"order": order, "limit": limit}
    if cursor is not None:
        out["cursor"] = cursor
    return out


def _filters(filters: object, where: str) -> tuple[TargetFilter, ...]:
    items = tuple(filters)  # type: ignore[arg-type]
    if len(items) > MAX_FILTERS:
        raise BadInput(f"{where}: at most {MAX_FILTERS} filters")
    if not all(isinstance(f, TargetFilter) for f in items):
        raise BadInput(f"{where}: expected TargetFilters")
    return items


def _read_filters(raw: object, where: str, default_type: str | None) -> tuple[TargetFilter, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadInput(f"{where}: expected an array of filters")
    if len(raw) > MAX_FILTERS:
        raise BadInput(f"{where}: at most {MAX_FILTERS} filters")
    out = []
    for i, item in enumerate(raw):
        place = f"{where}[{i}]"
        if default_type is not None and isinstance(item, Mapping) and "entity_type" not in item:
            item = {**item, "entity_type": default_type}
        out.append(TargetFilter.from_json(item, place))
    return tuple(out)


def _check_operation(operation: object, where: str) -> str:
    if not isinstance(operation, str) or not _OPERATION.fullmatch(operation):
        raise BadInput(f"{where}: an operation name is 1-64 characters of A-Z a-z 0-9 _ . : - (e.g. query)")
    return operation


def _check_access_actor(actor: object, where: str) -> str:
    text = check_text(actor, where)
    if not 1 <= len(text) <= _MAX_ACCESS_ACTOR or CONTROL_CHARS.search(text):
        raise BadInput(f"{where}: an actor is 1..{_MAX_ACCESS_ACTOR} characters, no control characters")
    return text
