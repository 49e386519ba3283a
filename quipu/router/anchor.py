"""The cross-shard anchor: every shard's (tree_size, merkle_root) and the shard map's hash,
signed together at one moment, appended to the anchors log.

One shard's checkpoints prove that shard grew append-only, but they are signed by the shard
itself: a shard deleted whole, restored from an older copy or rebuilt from scratch carries
checkpoints that agree with it. The anchor is signed by the router and kept apart from the
shards (and handed to an export hook), so later `verify` can demand a consistency proof
from each anchored head to the shard's current tree, and compare the map with the one the
anchor saw. Format in docs/format.md ("Anchors").

Signature: RSA PKCS#1 v1.5 over SHA-256 (quipu/core/signature.py) of the tag
`quipu-anchor-v1\\x00` and then the canonical JSON (orjson, sorted keys) of every field but
`signature`. The tag keeps an anchor signature from ever being valid as a checkpoint's (and
the other way round).
"""

import base64
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.core.errors import BadInput, UnsupportedFormat
from quipu.core.files import append_line, drop_torn_line
from quipu.core.keyring import RsaKey
from quipu.core.signature import rsassa_pkcs1_v15_sign, rsassa_pkcs1_v15_verify

log = logging.getLogger(__name__)
FORMAT = "quipu-anchor"
VERSION = 1
SIGNING_TAG = b"quipu-anchor-v1\x00"


@dataclass(frozen=True)
class Head:
    shard: str
    tree_size: int
    merkle_root: str  # hex

    def to_json(self) -> dict:
        return {"shard": self.shard, "tree_size": self.tree_size, "merkle_root": self.merkle_root}


@dataclass(frozen=True)
class Anchor:
    signed_at: int  # µs since the epoch
    manifest_hash: str  # sha256 hex of shards.json's canonical bytes
    heads: tuple[Head, ...]
    omitted: tuple[tuple[str, str], ...] = ()  # (shard, why): shards this anchor could not cover
    key_version: int = 0
    signature: bytes = b""

    def head(self, shard: str) -> Head | None:
        return next((h for h in self.heads if h.shard == shard), None)

    def body(self) -> dict:
        """Every field but the signature: what is signed."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "signed_at": self.signed_at,
            "manifest_hash": self.manifest_hash,
            "heads": [h.to_json() for h in self.heads],
            "omitted": [{"shard": s, "reason": why} for s, why in self.omitted],
            "key_version": self.key_version,
        }

    def signed_bytes(self) -> bytes:
        return SIGNING_TAG + orjson.dumps(self.body(), option=orjson.OPT_SORT_KEYS)

    def signed_with(self, key: RsaKey) -> "Anchor":
        if key.private is None:
            raise BadInput("signing an anchor needs the private key (anchor.private_key_pem_file)")
        unsigned = replace(self, key_version=key.version, signature=b"")
        return replace(unsigned, signature=rsassa_pkcs1_v15_sign(key.private, unsigned.signed_bytes()))

    def signature_valid(self, public: rsa.RSAPublicKey) -> bool:
        return rsassa_pkcs1_v15_verify(public, self.signed_bytes(), self.signature)

    def to_json(self) -> dict:
        return self.body() | {"signature": base64.b64encode(self.signature).decode()}

    @classmethod
    def from_json(cls, obj: object) -> "Anchor":
        """UnsupportedFormat for another format or version; ValueError/KeyError/TypeError
        for a malformed one (the anchors log reports both as unreadable lines)."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise UnsupportedFormat(f"not an anchor (format is not {FORMAT!r})")
        if obj.get("version") != VERSION:
            raise UnsupportedFormat(f"anchor format version {obj.get('version')!r} is not supported")
        heads = tuple(
            Head(str(h["shard"]), _int(h["tree_size"]), str(h["merkle_root"])) for h in obj["heads"]
        )
        omitted = tuple((str(o["shard"]), str(o["reason"])) for o in obj["omitted"])
        return cls(
            _int(obj["signed_at"]),
            str(obj["manifest_hash"]),
            heads,
            omitted,
            _int(obj["key_version"]),
            base64.b64decode(obj["signature"], validate=True),
        )


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


@dataclass(frozen=True)
class AnchorEntry:
    """One line of the anchors log: an anchor, or why the line could not be read."""

    line_no: int
    anchor: Anchor | None
    problem: str | None = None


class AnchorLog:
    """The append-only anchors log (NDJSON, one anchor a line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._drop_torn_line()

    def append(self, anchor: Anchor) -> None:
        """Append one line and fsync it before anyone (the export hook) is told."""
        append_line(self.path, orjson.dumps(anchor.to_json()))

    def entries(self) -> list[AnchorEntry]:
        if not self.path.exists():
            return []
        out = []
        for no, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                out.append(AnchorEntry(no, Anchor.from_json(orjson.loads(line))))
            except (UnsupportedFormat, ValueError, KeyError, TypeError) as err:
                out.append(AnchorEntry(no, None, f"anchors log line {no} is unreadable: {err}"))
        return out

    def anchors(self) -> list[Anchor]:
        return [e.anchor for e in self.entries() if e.anchor is not None]

    def _drop_torn_line(self) -> None:
        """A crash mid-append leaves a last line without its newline; it was never
        acknowledged (fsync had not returned), so it is cut off."""
        dropped = drop_torn_line(self.path)
        if dropped:
            log.warning("%s: dropping a torn last line of %d bytes", self.path, dropped)


def latest_heads(anchors: list[Anchor]) -> dict[str, Head]:
    """Per shard, its head in the newest anchor that covers it: the point its current tree
    must extend. An anchor that had to leave a shard out does not reset that point."""
    out: dict[str, Head] = {}
    for anchor in anchors:
        for head in anchor.heads:
            out[head.shard] = head
    return out
