"""A log row: how one audit event is recorded in the `logs` table, and its log_id.

The row is canonical JSON (sorted keys, no spaces), so its bytes, and therefore its Merkle
leaf, are reproducible from its fields. It pins the exact registry version of its actor and
of each target, which is what lets a hit render "as recorded" after later renames. Layout
in docs/format.md ("Log rows").
"""

import re
from dataclasses import dataclass

import orjson

from quipu.core.errors import BadInput, CorruptStore

ROW_VERSION = 1
_HEX_ID = re.compile(r"[0-9A-Fa-f]{32}")
_DECIMAL_ID = re.compile(r"[0-9]{1,39}")  # 2**128 has 39 digits
_INDEX_BITS = 40  # leaf positions up to ~10^12 per store
_TAG_BYTES = 3


@dataclass(frozen=True)
class EntityRef:
    """An entity as a row pins it: its type, id and the registry version current then."""

    entity_type: str
    entity_id: str
    version: int

    def to_list(self) -> list:
        return [self.entity_type, self.entity_id, self.version]


@dataclass(frozen=True)
class LogRow:
    log_id: str
    occurred_at: int
    tenant: str | None
    actor: EntityRef
    method: str
    url: str
    content: dict  # tagged Content JSON
    targets: tuple[EntityRef, ...]
    custom: dict  # column name -> tagged Value JSON
    idempotency_key: str | None = None  # stored only when set, so keyless rows stay as before

    def encode(self) -> bytes:
        body = {
            "v": ROW_VERSION,
            "id": self.log_id,
            "at": self.occurred_at,
            "tn": self.tenant,
            "a": self.actor.to_list(),
            "m": self.method,
            "u": self.url,
            "c": self.content,
            "t": [t.to_list() for t in self.targets],
            "x": self.custom,
        }
        if self.idempotency_key is not None:
            body["k"] = self.idempotency_key
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, raw: bytes) -> "LogRow":
        try:
            obj = orjson.loads(raw)
            if obj["v"] != ROW_VERSION:
                raise CorruptStore(f"log row format version {obj['v']} is not supported")
            return cls(
                obj["id"],
                obj["at"],
                obj["tn"],
                EntityRef(*obj["a"]),
                obj["m"],
                obj["u"],
                obj["c"],
                tuple(EntityRef(*t) for t in obj["t"]),
                obj["x"],
                obj.get("k"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptStore(f"a log row is not readable: {err}") from err


def make_log_id(occurred_at: int, store_id: bytes, leaf_index: int) -> str:
    """32 hex chars, time-ordered: occurred_at (8 bytes, big-endian), a 3-byte tag of the
    store (ids from different shards do not collide), the 5-byte leaf index (so a log_id
    finds its record and its Merkle leaf without any lookup table)."""
    return (occurred_at.to_bytes(8, "big") + store_id[:_TAG_BYTES] + leaf_index.to_bytes(5, "big")).hex()


def canonical_log_id(log_id: str) -> str:
    """The 32-lowercase-hex form of a log_id given as hex (any case) or as a decimal u128.

    Only those two spellings: Python's int() would also take "0x", "_", signs, spaces and
    non-ASCII digits, and a log id is an identifier, not a number literal."""
    if _HEX_ID.fullmatch(log_id):
        return log_id.lower()
    if _DECIMAL_ID.fullmatch(log_id) and int(log_id) < 1 << 128:
        return int(log_id).to_bytes(16, "big").hex()
    raise BadInput("log_id must be 32 hex characters (or a decimal u128)")


def parse_log_id(log_id: str, store_id: bytes) -> int:
    """The leaf index a log_id names in this store, or -1 when it names another store.

    BadInput when it is malformed; NotFound is the caller's call once the row is read."""
    data = bytes.fromhex(canonical_log_id(log_id))
    if data[8 : 8 + _TAG_BYTES] != store_id[:_TAG_BYTES]:
        return -1
    return int.from_bytes(data[8 + _TAG_BYTES :], "big")


def log_id_time(log_id: str) -> int:
    return int(log_id[:16], 16)
