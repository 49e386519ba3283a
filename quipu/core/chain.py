"""The per-record hash chain and the seeds that tie each segment to the one before it.

The chain is Quipu's own construction (not RFC 6962): chain(i) = SHA-256("QCHN" ||
chain(i-1) || ts(i) as u64 LE || leaf_hash(i)). It binds every record to all earlier ones
and to its timestamp, so an edit, reorder or removal breaks every later value. The first
segment of a table starts from a genesis seed derived from the store id and table name, so
a segment copied from another store or table does not continue this chain.
"""

import hashlib

CHAIN_TAG = b"QCHN"
GENESIS_TAG = b"quipu-genesis-v1\x00"


def genesis_seed(store_id: bytes, table: str) -> bytes:
    """The seed of a table's first segment: unique per store and table."""
    return hashlib.sha256(GENESIS_TAG + store_id + table.encode()).digest()


def chain_next(prev: bytes, ts: int, leaf: bytes) -> bytes:
    """The chain value of a record with timestamp `ts` and leaf hash `leaf` after `prev`."""
    return hashlib.sha256(CHAIN_TAG + prev + ts.to_bytes(8, "little") + leaf).digest()
