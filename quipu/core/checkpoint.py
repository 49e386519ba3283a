"""Signed checkpoints: what a table looked like at a moment, under an RSA signature.

A checkpoint pins a table's tree size, Merkle root and chain head. The hash chain alone
cannot catch a full delete-and-rewrite or a truncated tail; a rewritten chain cannot
reproduce a signed head without the original records, and a truncated one loses it.
Signature: RSA PKCS#1 v1.5 over SHA-256 of `signed_bytes()` (docs/format.md). Checkpoints
are appended to `checkpoints.log`, one JSON object per line.
"""

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.core.errors import UnsupportedFormat
from quipu.core.files import append_line, drop_torn_line
from quipu.core.keyring import RsaKey
from quipu.core.signature import rsassa_pkcs1_v15_sign, rsassa_pkcs1_v15_verify

log = logging.getLogger(__name__)

VERSION = 1
SIGNING_TAG = b"quipu-checkpoint-v1"
REKEY_TAG = b"quipu-rekey-v1"
LOG_NAME = "checkpoints.log"

AnchorHook = Callable[["Checkpoint"], None]


class _SignedRecord:
    """What checkpoints and re-key events share: an RSA PKCS#1 v1.5 / SHA-256 signature
    (quipu/core/signature.py) over `signed_bytes()`, made with a key ring version and
    checked with its public key."""

    def signed_with(self, key: RsaKey):
        """This record with `key`'s version and signature."""
        if key.private is None:
            raise ValueError("signing needs the private key")
        unsigned = replace(self, key_version=key.version, signature=b"")
        return replace(unsigned, signature=rsassa_pkcs1_v15_sign(key.private, unsigned.signed_bytes()))

    def signature_valid(self, public: rsa.RSAPublicKey) -> bool:
        return rsassa_pkcs1_v15_verify(public, self.signed_bytes(), self.signature)


def _lines(fields: tuple) -> bytes:
    """Signed bytes: each field as text followed by a newline (docs/format.md)."""
    return "".join(f"{f}\n" for f in fields).encode()


@dataclass(frozen=True)
class Checkpoint(_SignedRecord):
    table: str
    created_at: int
    segment_seq: int
    record_count: int  # records on disk: shrinks after a retention purge
    tree_size: int  # leaves ever appended: never shrinks
    merkle_root: bytes
    chain_head: bytes
    key_version: int
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers: one field a line, hashes in hex."""
        fields = (
            SIGNING_TAG.decode(),
            self.table,
            self.created_at,
            self.segment_seq,
            self.record_count,
            self.tree_size,
            self.merkle_root.hex(),
            self.chain_head.hex(),
            self.key_version,
        )
        return _lines(fields)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": VERSION,
                "table": self.table,
                "created_at": self.created_at,
                "segment_seq": self.segment_seq,
                "record_count": self.record_count,
                "tree_size": self.tree_size,
                "merkle_root": self.merkle_root.hex(),
                "chain_head": self.chain_head.hex(),
                "key_version": self.key_version,
                "signature": base64.b64encode(self.signature).decode(),
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> "Checkpoint":
        obj = orjson.loads(line)
        if obj.get("v") != VERSION:
            raise UnsupportedFormat(f"checkpoint format version {obj.get('v')} is not supported")
        return cls(
            table=obj["table"],
            created_at=obj["created_at"],
            segment_seq=obj["segment_seq"],
            record_count=obj["record_count"],
            tree_size=obj["tree_size"],
            merkle_root=bytes.fromhex(obj["merkle_root"]),
            chain_head=bytes.fromhex(obj["chain_head"]),
            key_version=obj["key_version"],
            signature=base64.b64decode(obj["signature"], validate=True),
        )


@dataclass(frozen=True)
class RekeyEvent(_SignedRecord):
    """An audited rewrite of a table after a key leak (the offline re-key).

    It names the tree the table had before (size, root) and the one it has now; signed
    with the new key, it is what lets verify_integrity accept the rewrite, while a rewrite
    without one still fails every earlier checkpoint. Signed bytes: like a checkpoint's,
    with the tag `quipu-rekey-v1` and these fields in this order.
    """

    table: str
    created_at: int
    old_tree_size: int
    old_root: bytes
    new_tree_size: int
    new_root: bytes
    key_version: int
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        fields = (
            REKEY_TAG.decode(),
            self.table,
            self.created_at,
            self.old_tree_size,
            self.old_root.hex(),
            self.new_tree_size,
            self.new_root.hex(),
            self.key_version,
        )
        return _lines(fields)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": VERSION,
                "kind": "rekey",
                "table": self.table,
                "created_at": self.created_at,
                "old_tree_size": self.old_tree_size,
                "old_root": self.old_root.hex(),
                "new_tree_size": self.new_tree_size,
                "new_root": self.new_root.hex(),
                "key_version": self.key_version,
                "signature": base64.b64encode(self.signature).decode(),
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> "RekeyEvent":
        obj = orjson.loads(line)
        if obj.get("v") != VERSION:
            raise UnsupportedFormat(f"re-key event format version {obj.get('v')} is not supported")
        return cls(
            obj["table"],
            obj["created_at"],
            obj["old_tree_size"],
            bytes.fromhex(obj["old_root"]),
            obj["new_tree_size"],
            bytes.fromhex(obj["new_root"]),
            obj["key_version"],
            base64.b64decode(obj["signature"], validate=True),
        )


@dataclass(frozen=True)
class CheckpointEntry:
    """One line of checkpoints.log: a checkpoint, or why the line could not be read."""

    line_no: int
    checkpoint: Checkpoint | None
    problem: str | None = None
    rekey: "RekeyEvent | None" = None


class CheckpointLog:
    """The append-only `checkpoints.log` at the store root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._drop_torn_line()

    def append(self, checkpoint: "Checkpoint | RekeyEvent") -> None:
        """Append one line and fsync it before anyone (the anchor hook) is told."""
        append_line(self.path, checkpoint.to_json())

    def entries(self) -> list[CheckpointEntry]:
        if not self.path.exists():
            return []
        out = []
        for no, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                if b'"kind":"rekey"' in line:
                    out.append(CheckpointEntry(no, None, rekey=RekeyEvent.from_json(line)))
                else:
                    out.append(CheckpointEntry(no, Checkpoint.from_json(line)))
            except (UnsupportedFormat, ValueError, KeyError, TypeError) as err:
                out.append(CheckpointEntry(no, None, f"checkpoints.log line {no} unreadable: {err}"))
        return out

    def latest(self, table: str) -> Checkpoint | None:
        found = [e.checkpoint for e in self.entries() if e.checkpoint and e.checkpoint.table == table]
        return found[-1] if found else None

    def _drop_torn_line(self) -> None:
        """A crash mid-append leaves a last line without its newline: it was never
        acknowledged (fsync had not returned), so it is cut off."""
        dropped = drop_torn_line(self.path)
        if dropped:
            log.warning("%s: dropping a torn last line of %d bytes", self.path, dropped)
