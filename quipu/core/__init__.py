"""The embedded, synchronous storage engine: no asyncio, no HTTP.

Layers, bottom up: `merkle` (pure RFC 6962 hashing and verifiers), `proof` (RFC 6962 proof
construction over any subtree-hash source), `spine` (the stored Merkle nodes), `segment`
(framed append-only files), `chain`, `table` (segments + chain + spine), `checkpoint`,
`integrity` and `ledger` (a store directory: lock, tables, checkpoints, retention).

    from quipu.core import Ledger
    with Ledger.open("./audit-data") as ledger:
        index = ledger.append(b"record")
        ledger.flush()
        proof = ledger.table().prove_inclusion(index)
"""

from quipu.core.checkpoint import Checkpoint
from quipu.core.errors import (
    BadInput,
    Conflict,
    CorruptStore,
    NotFound,
    ProofError,
    QuipuError,
    StorageFull,
    StoreLocked,
    UnsupportedFormat,
)
from quipu.core.integrity import IntegrityReport
from quipu.core.keyring import KeyRing, RsaKey
from quipu.core.ledger import Ledger
from quipu.core.merkle import verify_consistency, verify_inclusion
from quipu.core.proof import ConsistencyProof, InclusionProof
from quipu.core.retention import RetentionPolicy
from quipu.core.sync import SyncPolicy
from quipu.core.table import TableConfig

__all__ = [
    "BadInput",
    "Checkpoint",
    "Conflict",
    "ConsistencyProof",
    "CorruptStore",
    "InclusionProof",
    "IntegrityReport",
    "KeyRing",
    "Ledger",
    "NotFound",
    "ProofError",
    "QuipuError",
    "RetentionPolicy",
    "RsaKey",
    "StorageFull",
    "StoreLocked",
    "SyncPolicy",
    "TableConfig",
    "UnsupportedFormat",
    "verify_consistency",
    "verify_inclusion",
]
