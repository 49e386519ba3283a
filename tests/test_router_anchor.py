"""The anchor format: what its signature covers, and the anchors log."""

import base64
import json

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from quipu.core.checkpoint import Checkpoint
from quipu.core.errors import BadInput, UnsupportedFormat
from quipu.core.keyring import RsaKey
from quipu.router.anchor import SIGNING_TAG, Anchor, AnchorLog, Head, latest_heads


def anchor(**fields) -> Anchor:
    base = {
        "signed_at": 1_700_000_000_000_000,
        "manifest_hash": "ab" * 32,
        "heads": (Head("shard-0000", 12, "cd" * 32), Head("shard-0001", 0, "ef" * 32)),
        "omitted": (("shard-0002", "shard-0002 is not reachable"),),
    }
    return Anchor(**(base | fields))


def test_signed_anchor_verifies_and_survives_json(rsa_key):
    signed = anchor().signed_with(rsa_key)
    assert signed.key_version == rsa_key.version
    assert signed.signature_valid(rsa_key.public)
    again = Anchor.from_json(orjson.loads(orjson.dumps(signed.to_json())))
    assert again == signed and again.signature_valid(rsa_key.public)


def test_signature_covers_the_documented_bytes(rsa_key):
    """docs/format.md: PKCS#1 v1.5 / SHA-256 over the tag and the sorted-key JSON of every
    field but the signature. Checked here from the JSON form alone, as an outside verifier."""
    obj = anchor().signed_with(rsa_key).to_json()
    signature = base64.b64decode(obj.pop("signature"))
    message = b"quipu-anchor-v1\x00" + json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    rsa_key.public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    assert SIGNING_TAG == b"quipu-anchor-v1\x00"


@pytest.mark.parametrize(
    "change",
    [
        {"manifest_hash": "00" * 32},
        {"signed_at": 1},
        {"heads": (Head("shard-0000", 11, "cd" * 32), Head("shard-0001", 0, "ef" * 32))},
        {"heads": (Head("shard-0000", 12, "cd" * 32),)},
        {"omitted": ()},
        {"key_version": 2},
    ],
    ids=["manifest", "time", "tree-size", "dropped-head", "dropped-omission", "key-version"],
)
def test_any_edited_field_breaks_the_signature(rsa_key, change):
    signed = anchor().signed_with(rsa_key)
    edited = Anchor(**({k: getattr(signed, k) for k in signed.__dataclass_fields__} | change))
    assert not edited.signature_valid(rsa_key.public)


def test_another_key_does_not_verify(rsa_key, other_rsa_key):
    assert not anchor().signed_with(other_rsa_key).signature_valid(rsa_key.public)


def test_an_anchor_signature_is_not_a_checkpoint_signature(rsa_key):
    """Domain separation: the same key signs checkpoints; neither verifies as the other."""
    cp = Checkpoint("logs", 1, 0, 3, 3, b"\x01" * 32, b"\x02" * 32, 1).signed_with(rsa_key)
    fields = {k: getattr(anchor(), k) for k in ("signed_at", "manifest_hash", "heads", "omitted")}
    forged = Anchor(**fields, key_version=1, signature=cp.signature)
    assert not forged.signature_valid(rsa_key.public)


def test_signing_needs_the_private_key(rsa_key):
    with pytest.raises(BadInput, match="private key"):
        anchor().signed_with(RsaKey(1, rsa_key.public))


def test_unknown_format_version_is_refused_by_name(rsa_key):
    obj = anchor().signed_with(rsa_key).to_json()
    with pytest.raises(UnsupportedFormat, match="version 2"):
        Anchor.from_json(obj | {"version": 2})
    with pytest.raises(UnsupportedFormat, match="not an anchor"):
        Anchor.from_json(obj | {"format": "quipu-checkpoint"})


def test_anchors_log_appends_and_reports_unreadable_lines(tmp_path, rsa_key):
    log = AnchorLog(tmp_path / "anchors.log")
    first, second = anchor().signed_with(rsa_key), anchor(signed_at=2).signed_with(rsa_key)
    log.append(first)
    with open(log.path, "ab") as f:
        f.write(b'{"format": "quipu-anchor", "version": 1}\n')
    log.append(second)
    entries = log.entries()
    assert [e.anchor for e in entries] == [first, None, second]
    assert "line 2" in entries[1].problem
    assert log.anchors() == [first, second]


def test_torn_last_line_is_cut_off_on_open(tmp_path, rsa_key):
    path = tmp_path / "anchors.log"
    AnchorLog(path).append(anchor().signed_with(rsa_key))
    with open(path, "ab") as f:
        f.write(b'{"format": "quipu-anch')
    log = AnchorLog(path)
    assert path.read_bytes().endswith(b"\n")
    assert len(log.anchors()) == 1


def test_latest_heads_keep_the_last_head_of_each_shard(rsa_key):
    """An anchor that left a shard out does not reset the head that shard must extend."""
    older = anchor(heads=(Head("shard-0000", 5, "aa" * 32), Head("shard-0002", 3, "bb" * 32)))
    newer = anchor(heads=(Head("shard-0000", 9, "cc" * 32),))
    heads = latest_heads([older, newer])
    assert heads == {
        "shard-0000": Head("shard-0000", 9, "cc" * 32),
        "shard-0002": Head("shard-0002", 3, "bb" * 32),
    }
