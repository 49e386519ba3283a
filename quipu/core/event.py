"""An audit event as a client submits it: the v1 `AppendRequest`, parsed and checked.

Everything here is checked before it reaches the writer, so a bad request changes nothing.
Entity ids and type names become registry paths, so both refuse path tricks ("..", "/",
NUL, control characters). The tenant is never read from the body: it comes from the caller
(a trusted auth layer) and is passed to `AuditEvent.from_json` separately.

Events, entities and their field maps are immutable once built; the fluent helpers
(`EntityInput.text`, `AuditEvent.target`) return new objects.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from quipu.core.errors import BadInput
from quipu.core.schema import MAX_FIELDS, validate_field_name, validate_type_name
from quipu.core.values import Content, Value, check_text, expect_object, join, shown

MAX_ENTITY_ID = 256
MAX_URL = 8192
MAX_TARGETS = 64
MAX_CUSTOM = 256
# Exclusive: the first microsecond of year 10000. A time is rendered as RFC 3339, which
# has four-digit years, so a later one could be recorded but never read back.
MAX_OCCURRED_AT = 253_402_300_800_000_000
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_METHOD = re.compile(r"[A-Za-z]{1,16}")
_TENANT = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
_EVENT_KEYS = ("occurred_at", "actor_type", "actor", "method", "url", "content", "targets", "custom")
_EVENT_REQUIRED = ("actor_type", "actor", "method", "url", "content")


def validate_entity_id(entity_id: object, where: str = "entity_id") -> str:
    """An external id: 1..256 characters, no control characters, no path separators."""
    text = check_text(entity_id, where)
    if not 1 <= len(text) <= MAX_ENTITY_ID:
        raise BadInput(f"{where}: an entity id has 1..{MAX_ENTITY_ID} characters")
    if text in (".", "..") or "/" in text or "\\" in text or CONTROL_CHARS.search(text):
        raise BadInput(
            f"{where}: an entity id may not be '.' or '..' nor contain '/', '\\' or control "
            "characters; use an opaque id"
        )
    return text


def validate_tenant(name: object, where: str = "tenant") -> str:
    """A tenant key: it routes to a shard and may name files, so keep it plain."""
    if not isinstance(name, str) or name in (".", "..") or not _TENANT.fullmatch(name):
        raise BadInput(
            f"{where}: tenant {shown(name)} is invalid; use 1-128 characters of "
            "A-Z a-z 0-9 _ . : - (not '.' or '..')"
        )
    return name


def validate_idempotency_key(key: object, where: str = "Idempotency-Key") -> str:
    """1-128 visible ASCII characters (v1's rule); a UUIDv4 is the usual choice."""
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadInput(f"{where}: expected 1-128 visible ASCII characters (a UUIDv4 is recommended)")
    return key


def validate_method(method: object, where: str = "method") -> str:
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise BadInput(f"{where}: a method is 1-16 letters A-Z a-z (e.g. PUT)")
    return method


def validate_url(url: object, where: str = "url") -> str:
    text = check_text(url, where)
    if not 1 <= len(text) <= MAX_URL:
        raise BadInput(f"{where}: a url has 1..{MAX_URL} characters")
    if CONTROL_CHARS.search(text):
        raise BadInput(f"{where}: a url may not contain control characters; percent-encode them")
    return text


def validate_micros(micros: object, where: str = "occurred_at") -> int:
    """A UTC microsecond timestamp: a non-negative signed 64-bit int (a bool is not one)."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise BadInput(f"{where}: expected an integer count of UTC microseconds")
    if not 0 <= micros < MAX_OCCURRED_AT:
        raise BadInput(f"{where}: must be between 0 (1970) and the end of year 9999 in UTC microseconds")
    return micros


def read_value_map(obj: object, where: str, limit: int) -> dict[str, Value]:
    """A JSON object of name -> Value (entity fields, custom columns), names checked first
    so a hostile key is never echoed in a later message."""
    if not isinstance(obj, Mapping):
        raise BadInput(f"{where}: expected an object of name -> value")
    if len(obj) > limit:
        raise BadInput(f"{where}: at most {limit} entries")
    return {
        validate_field_name(name, where): Value.from_json(raw, join(where, name)) for name, raw in obj.items()
    }


def _frozen_values(values: Mapping[str, Value], where: str, limit: int) -> Mapping[str, Value]:
    """A read-only copy, so a validated event cannot be changed behind the validator."""
    if not isinstance(values, Mapping):
        raise BadInput(f"{where}: expected a mapping of name -> Value")
    if len(values) > limit:
        raise BadInput(f"{where}: at most {limit} entries")
    for name, value in values.items():
        validate_field_name(name, where)
        if not isinstance(value, Value):
            raise BadInput(f"{join(where, name)}: expected a Value")
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class EntityInput:
    """An actor or target as written: its external id and the fields it sets."""

    entity_id: str
    fields: Mapping[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_entity_id(self.entity_id)
        object.__setattr__(self, "fields", _frozen_values(self.fields, "fields", MAX_FIELDS))

    @classmethod
    def from_json(cls, obj: object, where: str = "") -> "EntityInput":
        body = expect_object(obj, where, ("entity_id", "fields"), ("entity_id",))
        entity_id = validate_entity_id(body["entity_id"], join(where, "entity_id"))
        fields = read_value_map(body.get("fields", {}), join(where, "fields"), MAX_FIELDS)
        return cls(entity_id, fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "entity_id": self.entity_id,
            "fields": {name: value.to_json() for name, value in self.fields.items()},
        }

    def _with(self, name: str, value: Value) -> "EntityInput":
        return replace(self, fields={**self.fields, name: value})

    def text(self, name: str, s: str) -> "EntityInput":
        return self._with(name, Value.text_(s))

    def number(self, name: str, x: int | float) -> "EntityInput":
        return self._with(name, Value.number(x))

    def json(self, name: str, obj: object) -> "EntityInput":
        return self._with(name, Value.json(obj))


@dataclass(frozen=True)
class TargetSpec:
    """An entity the event touched, with its type."""

    entity_type: str
    input: EntityInput

    def __post_init__(self) -> None:
        validate_type_name(self.entity_type, "entity_type")
        if not isinstance(self.input, EntityInput):
            raise BadInput("target input must be an EntityInput")

    @classmethod
    def from_json(cls, obj: object, where: str = "target") -> "TargetSpec":
        body = expect_object(obj, where, ("entity_type", "input"), ("entity_type", "input"))
        entity_type = validate_type_name(body["entity_type"], join(where, "entity_type"))
        return cls(entity_type, EntityInput.from_json(body["input"], join(where, "input")))

    def to_json(self) -> dict[str, Any]:
        return {"entity_type": self.entity_type, "input": self.input.to_json()}


@dataclass(frozen=True)
class AuditEvent:
    """Who (actor) did what (method on url, content) to which entities (targets), when."""

    actor_type: str
    actor: EntityInput
    method: str
    url: str
    content: Content
    targets: tuple[TargetSpec, ...] = ()
    custom: Mapping[str, Value] = field(default_factory=dict)
    occurred_at: int | None = None
    tenant: str | None = None
    # Recorded in the row, so the shard rebuilds its duplicate window from disk after a
    # restart; like the tenant it travels beside the body (a header), never inside it.
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        validate_type_name(self.actor_type, "actor_type")
        validate_method(self.method)
        validate_url(self.url)
        if not isinstance(self.actor, EntityInput):
            raise BadInput("actor must be an EntityInput")
        if not isinstance(self.content, Content):
            raise BadInput("content must be a Content")
        object.__setattr__(self, "targets", tuple(self.targets))
        if len(self.targets) > MAX_TARGETS:
            raise BadInput(f"targets: at most {MAX_TARGETS} targets per event")
        if not all(isinstance(t, TargetSpec) for t in self.targets):
            raise BadInput("targets must be TargetSpecs")
        object.__setattr__(self, "custom", _frozen_values(self.custom, "custom", MAX_CUSTOM))
        if self.occurred_at is not None:
            validate_micros(self.occurred_at)
        if self.tenant is not None:
            validate_tenant(self.tenant)
        if self.idempotency_key is not None:
            validate_idempotency_key(self.idempotency_key)

    @classmethod
    def from_json(
        cls, obj: object, tenant: str | None = None, idempotency_key: str | None = None
    ) -> "AuditEvent":
        """Read an AppendRequest body; the tenant and the key come from the caller (an auth
        layer, a header), never from the body."""
        body = expect_object(obj, "", _EVENT_KEYS, _EVENT_REQUIRED)
        occurred_at = body.get("occurred_at")
        return cls(
            actor_type=validate_type_name(body["actor_type"], "actor_type"),
            actor=EntityInput.from_json(body["actor"], "actor"),
            method=validate_method(body["method"]),
            url=validate_url(body["url"]),
            content=Content.from_json(body["content"], "content"),
            targets=_read_targets(body.get("targets", [])),
            custom=read_value_map(body.get("custom", {}), "custom", MAX_CUSTOM),
            occurred_at=None if occurred_at is None else validate_micros(occurred_at),
            tenant=None if tenant is None else validate_tenant(tenant),
            idempotency_key=idempotency_key,
        )

    def to_json(self) -> dict[str, Any]:
        """The AppendRequest form (without the tenant, which travels beside the body)."""
        out: dict[str, Any] = {
            "actor_type": self.actor_type,
            "actor": self.actor.to_json(),
            "method": self.method,
            "url": self.url,
            "content": self.content.to_json(),
            "targets": [t.to_json() for t in self.targets],
            "custom": {name: value.to_json() for name, value in self.custom.items()},
        }
        if self.occurred_at is not None:
            out["occurred_at"] = self.occurred_at
        return out

    def target(self, spec: TargetSpec) -> "AuditEvent":
        return replace(self, targets=(*self.targets, spec))


def _read_targets(raw: object) -> tuple[TargetSpec, ...]:
    if not isinstance(raw, list):
        raise BadInput("targets: expected an array of {entity_type, input}")
    if len(raw) > MAX_TARGETS:
        raise BadInput(f"targets: at most {MAX_TARGETS} targets per event")
    return tuple(TargetSpec.from_json(t, f"targets[{i}]") for i, t in enumerate(raw))
