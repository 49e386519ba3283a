"""Versioned entity registries: a change appends a version, nothing is overwritten.

Every type definition, column definition and entity version is a record of the `registry`
table (so it is chained, Merkle-committed and checkpointed like the log). The in-memory
indexes below are rebuilt by replaying that table on open. A log row pins the version
current when it was written; queries match past values by default, so a renamed entity is
still found by its old name.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

from quipu.core import protection
from quipu.core.errors import BadInput, CorruptStore, NotFound
from quipu.core.keyring import KeyRing
from quipu.core.query_spec import TargetFilter
from quipu.core.schema import (
    ColumnDef,
    FieldDef,
    Protection,
    TypeSchema,
    check_column_redefinition,
    check_redefinition,
    missing_required,
    validate_entity_fields,
)
from quipu.core.values import Value

RECORD_VERSION = 1


@dataclass
class EntityVersion:
    version: int
    at: int
    fields: dict[str, dict]  # field name -> stored form (see protection.protect)
    tokens: dict[str, list[str]]  # field name -> blind-index tokens
    deleted: bool = False


@dataclass
class _TypeState:
    schema: TypeSchema
    entities: dict[str, list[EntityVersion]] = field(default_factory=dict)
    exact: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # field -> key -> ids
    tokens: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # field -> token -> ids


class Registry:
    """Types, columns and entity versions, with lookups by field value for queries."""

    def __init__(self, keys: KeyRing, plaintext_cache: bool = False) -> None:
        self._keys = keys
        self._types: dict[str, _TypeState] = {}
        self.columns: dict[str, ColumnDef] = {}
        self._plain: dict[tuple[str, str, int, str], Value] | None = {} if plaintext_cache else None
        self._undo: list[tuple[str, str]] | None = None
        # Rsa plaintexts this process wrote, kept in memory only: without the private key
        # (write-only), they are how an unchanged value is told from a changed one, so
        # repeated writes add no versions. Never persisted; a restart forgets them.
        self._last_written: dict[tuple[str, str, int, str], Value] = {}

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Versions added inside are taken back if the block raises, so a rejected event
        (or a failed write) leaves no version in memory that is not on disk. Index entries
        may keep a stale id: lookups re-check the versions themselves, so it never matches."""
        self._undo = []
        try:
            yield
        except BaseException:
            for type_name, entity_id in reversed(self._undo):
                self._take_back(type_name, entity_id)
            raise
        finally:
            self._undo = None

    def _take_back(self, type_name: str, entity_id: str) -> None:
        entities = self._types[type_name].entities
        version = entities[entity_id].pop()
        if not entities[entity_id]:
            del entities[entity_id]
        for name in version.fields:
            key = (type_name, entity_id, version.version, name)
            self._last_written.pop(key, None)
            if self._plain is not None:
                self._plain.pop(key, None)

    # --- replay and definitions -----------------------------------------------------

    def replay(self, payload: bytes) -> None:
        """Apply one registry record read back from disk."""
        try:
            rec = orjson.loads(payload)
            kind = rec["r"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptStore(f"a registry record is not readable: {err}") from err
        if kind == "type":
            self._set_type(TypeSchema.from_json(rec["schema"]))
        elif kind == "column":
            col = ColumnDef.from_json(rec["column"])
            self.columns[col.name] = col
        elif kind == "entity":
            version = EntityVersion(rec["ver"], rec["at"], rec["f"], rec["k"], rec.get("del", False))
            self._add_version(rec["type"], rec["id"], version)

    def define_type(self, schema: TypeSchema) -> bytes | None:
        """The registry record to append for `schema`, or None when nothing changes."""
        old = self._types.get(schema.type_name)
        if old is not None:
            check_redefinition(old.schema, schema)
            if old.schema == schema:
                return None
        self._set_type(schema)
        return _encode({"r": "type", "schema": schema.to_json()})

    def define_column(self, column: ColumnDef) -> bytes | None:
        old = self.columns.get(column.name)
        if old is not None:
            check_column_redefinition(old, column)
            return None
        self.columns[column.name] = column
        return _encode({"r": "column", "column": column.to_json()})

    def _set_type(self, schema: TypeSchema) -> None:
        state = self._types.get(schema.type_name)
        if state is None:
            self._types[schema.type_name] = _TypeState(schema)
        else:
            state.schema = schema

    # --- entities -------------------------------------------------------------------

    def schema(self, type_name: str) -> TypeSchema:
        return self._state(type_name).schema

    def entity_types(self) -> list[TypeSchema]:
        return [s.schema for s in self._types.values()]

    def check_fields(self, type_name: str, fields: Mapping[str, Value], where: str) -> None:
        """Refuse fields a defined type does not have or of another kind, before the event
        is queued. An undefined type passes: it may be defined before the writer gets to
        it (else the event parks in the dead-letter queue)."""
        state = self._types.get(type_name)
        if state is not None:
            validate_entity_fields(state.schema, fields, where)

    def upsert(
        self,
        type_name: str,
        entity_id: str,
        fields: Mapping[str, Value],
        at: int,
        deleted: bool | None,
        where: str,
    ) -> tuple[int, bytes | None]:
        """The version a row should pin for this entity input, and the registry record to
        append when the input changes the entity (a new version), else None. `deleted`
        None keeps the entity's deleted flag as it is."""
        state = self._state(type_name, where)
        validate_entity_fields(state.schema, fields, where)
        versions = state.entities.get(entity_id)
        current = versions[-1] if versions else None
        changed = {n: v for n, v in fields.items() if not self._same(state.schema, entity_id, current, n, v)}
        if deleted is None:
            deleted = current.deleted if current else False
        if current is not None and not changed and current.deleted == deleted:
            return current.version, None
        stored = dict(current.fields) if current else {}
        tokens = dict(current.tokens) if current else {}
        for name, value in changed.items():
            fdef = state.schema.field(name)
            stored[name] = protection.protect(type_name, fdef, value, self._keys)
            tokens[name] = protection.index_tokens(type_name, fdef, value, self._keys)
        missing = missing_required(state.schema, stored.keys())
        if missing:
            raise BadInput(f"{where}: required field(s) {', '.join(missing)} of type {type_name} are missing")
        version = EntityVersion((current.version + 1) if current else 1, at, stored, tokens, deleted)
        record = {"r": "entity", "type": type_name, "id": entity_id, "ver": version.version, "at": at}
        record.update({"f": stored, "k": tokens, "del": deleted})
        self._add_version(type_name, entity_id, version)
        for name, value in changed.items():
            self._remember_plain(type_name, entity_id, version.version, name, value)
            if state.schema.field(name).protection == Protection.RSA:
                self._last_written[(type_name, entity_id, version.version, name)] = value
        return version.version, _encode(record)

    def _same(
        self, schema: TypeSchema, entity_id: str, current: EntityVersion | None, name: str, value: Value
    ) -> bool:
        if current is None or name not in current.fields:
            return False
        stored = current.fields[name]
        if "v" in stored:  # a plain value: compare the tagged forms, no parsing on the hot path
            return stored["v"] == value.to_json()
        fdef = schema.field(name)
        if protection.matches_exact(schema.type_name, fdef, current.fields[name], value, self._keys):
            return True
        cached = self._cached_plain(schema.type_name, entity_id, current.version, name)
        if cached is None:  # write-only: what this process last wrote stands in for decrypting
            cached = self._last_written.get((schema.type_name, entity_id, current.version, name))
        return cached is not None and cached == value

    def _add_version(self, type_name: str, entity_id: str, version: EntityVersion) -> None:
        state = self._state(type_name)
        state.entities.setdefault(entity_id, []).append(version)
        if self._undo is not None:
            self._undo.append((type_name, entity_id))
        for name, stored in version.fields.items():
            key = _exact_key(stored)
            if key is not None:
                state.exact.setdefault(name, {}).setdefault(key, set()).add(entity_id)
        for name, toks in version.tokens.items():
            index = state.tokens.setdefault(name, {})
            for tok in toks:
                index.setdefault(tok, set()).add(entity_id)

    def _remember_plain(self, type_name: str, entity_id: str, version: int, name: str, value: Value) -> None:
        if self._plain is not None:
            self._plain[(type_name, entity_id, version, name)] = value

    def _cached_plain(self, type_name: str, entity_id: str, version: int, name: str) -> Value | None:
        return None if self._plain is None else self._plain.get((type_name, entity_id, version, name))

    def fill_plaintext_cache(self) -> None:
        """Decrypt every Rsa value once (needs the private key): `contains` on an Rsa field
        without a blind index scans this in-memory cache. Never persisted."""
        if self._plain is None:
            return
        for state in self._types.values():
            for entity_id, versions in state.entities.items():
                for ver in versions:
                    for name, stored in ver.fields.items():
                        fdef = state.schema.field(name)
                        if fdef is not None and fdef.protection == Protection.RSA:
                            plain = protection.decrypt(state.schema.type_name, fdef, stored, self._keys)
                            if plain is not None:
                                key = (state.schema.type_name, entity_id, ver.version, name)
                                self._plain[key] = plain

    # --- reading ----------------------------------------------------------------------

    def versions(self, type_name: str, entity_id: str) -> list[EntityVersion]:
        versions = self._state(type_name).entities.get(entity_id)
        if not versions:
            raise NotFound(f"no entity {entity_id!r} of type {type_name}")
        return list(versions)

    def entity_ids(self, type_name: str) -> list[str]:
        return list(self._state(type_name).entities)

    def render(self, type_name: str, entity_id: str, version: int) -> dict:
        """A snapshot as recorded: protected fields rendered by protection.reveal."""
        state = self._state(type_name)
        versions = state.entities.get(entity_id) or []
        if not 0 < version <= len(versions):
            raise CorruptStore(f"a row pins version {version} of {type_name}/{entity_id}, which is missing")
        ver = versions[version - 1]
        fields = {
            name: protection.reveal(type_name, state.schema.field(name), stored, self._keys)
            for name, stored in ver.fields.items()
        }
        snapshot = {"entity_type": type_name, "entity_id": entity_id, "version": ver.version}
        snapshot.update({"recorded_at": ver.at, "deleted": ver.deleted, "fields": fields})
        return snapshot

    def matching_entities(self, flt: TargetFilter, include_past: bool) -> set[str]:
        """Entity ids of `flt.entity_type` whose field matches (any version, or the latest
        only when include_past is False)."""
        state = self._state(flt.entity_type, "targets")
        fdef = state.schema.field(flt.field)
        if fdef is None:
            raise BadInput(f"type {flt.entity_type} has no field {flt.field!r}")
        candidates = self._candidates(state, fdef, flt)
        return {
            eid
            for eid in candidates
            if any(
                self._version_matches(state, fdef, flt, eid, ver)
                for ver in (state.entities[eid] if include_past else state.entities[eid][-1:])
            )
        }

    def _candidates(self, state: _TypeState, fdef: FieldDef, flt: TargetFilter) -> Iterator[str] | set[str]:
        """A superset of the matching entities, from an index when one can answer."""
        name, mode = fdef.name, flt.mode
        if fdef.protection == Protection.NONE:
            keys = state.exact.get(name, {})
            if mode == "exact":
                return set(keys.get(_plain_key(flt.value), ()))
            return {eid for key, ids in keys.items() if _plain_matches(key, flt) for eid in ids}
        one_digest = len(self._keys.hmac_versions()) <= 1  # then one lookup answers exact
        if mode == "exact" and fdef.protection in (Protection.SHA256, Protection.HMAC) and one_digest:
            probe = protection.protect(state.schema.type_name, fdef, flt.value, self._keys)
            return set(state.exact.get(name, {}).get(_exact_key(probe), ()))
        alternatives = protection.probe_tokens(state.schema.type_name, fdef, mode, flt.value, self._keys)
        if alternatives is not None:
            index = state.tokens.get(name, {})
            found: set[str] = set()
            for toks in alternatives:
                if not toks:  # an empty probe constrains nothing
                    return set(state.entities)
                found |= set.intersection(*(index.get(t, set()) for t in toks))
            return found
        if mode == "exact" or (fdef.protection == Protection.RSA and self._can_recheck(fdef)):
            return set(state.entities)
        raise BadInput(
            f"{mode} on field {name} of type {state.schema.type_name} ({fdef.protection.value}-protected) "
            "needs a matching blind index (search: Exact/Prefix/Ngram)"
            + (" or the plaintext cache (store.plaintext_cache)" if fdef.protection == Protection.RSA else "")
        )

    def _can_recheck(self, fdef: FieldDef) -> bool:
        """Rsa values can be compared in plaintext: from the cache, or by decrypting."""
        return self._plain is not None or any(self._keys.can_decrypt(v) for v in self._keys.rsa_versions())

    def _version_matches(
        self, state: _TypeState, fdef: FieldDef, flt: TargetFilter, eid: str, ver: EntityVersion
    ) -> bool:
        stored = ver.fields.get(fdef.name)
        if stored is None:
            return False
        type_name = state.schema.type_name
        if fdef.protection == Protection.NONE:
            return _plain_matches(_exact_key(stored), flt)
        plain = self._cached_plain(type_name, eid, ver.version, fdef.name)
        if plain is None and fdef.protection == Protection.RSA:
            plain = protection.decrypt(type_name, fdef, stored, self._keys)
        if plain is not None:
            return _plain_matches(_plain_key(plain), flt)
        if flt.mode == "exact":
            return protection.matches_exact(type_name, fdef, stored, flt.value, self._keys)
        alternatives = protection.probe_tokens(type_name, fdef, flt.mode, flt.value, self._keys) or []
        have = set(ver.tokens.get(fdef.name, ()))
        return any(toks <= have for toks in alternatives)  # a candidate filter: may over-match

    def _state(self, type_name: str, where: str = "") -> _TypeState:
        state = self._types.get(type_name)
        if state is None:
            place = f"{where}: " if where else ""
            raise BadInput(f"{place}unknown type {type_name!r}; define it first (define_type)")
        return state


def _encode(record: dict) -> bytes:
    record["rv"] = RECORD_VERSION
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def _exact_key(stored: dict) -> str | None:
    """The in-memory exact-match key of a stored value: its text, or its digest."""
    if "v" in stored:
        return _plain_key(Value.from_json(stored["v"], "registry"))
    for tag in ("sha256", "hmac"):
        if tag in stored:
            return f"{tag}:{stored.get('kv', 0)}:{stored[tag]}"
    return None


def _plain_key(value: Value) -> str:
    return value.text()


def _plain_matches(key: str | None, flt: TargetFilter) -> bool:
    if key is None:
        return False
    probe = flt.value.text()
    if flt.mode == "exact":
        return key == probe
    if flt.mode == "exact_ci":
        return key.casefold() == probe.casefold()
    if flt.mode == "prefix":  # prefix and contains ignore case, as blind-index tokens do
        return key.casefold().startswith(probe.casefold())
    return probe.casefold() in key.casefold()
