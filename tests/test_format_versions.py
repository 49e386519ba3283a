"""Readers refuse formats they do not know, by name, instead of misreading them."""

import struct

import pytest

from quipu.core.errors import BadInput, CorruptStore, UnsupportedFormat
from quipu.core.ledger import Ledger
from quipu.core.sync import SyncPolicy


def make_store(root, keys):
    with Ledger.open(root, keys=keys) as ledger:
        ledger.append(b"record")
        ledger.checkpoint()


@pytest.mark.parametrize(
    ("relpath", "name"), [("logs/0000000001.qseg", "segment"), ("logs/spine.qspn", "spine")]
)
def test_unknown_file_format_version_is_refused_by_name(tmp_path, keys, relpath, name):
    make_store(tmp_path, keys)
    path = tmp_path / relpath
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 4, 99)  # both formats keep the version right after the magic
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedFormat, match=f"{name} format version 99"):
        Ledger.open(tmp_path, keys=keys)


def test_unknown_store_version_is_refused(tmp_path, keys):
    make_store(tmp_path, keys)
    (tmp_path / "STORE").write_text('{"v": 3, "store_id": "00"}\n')
    with pytest.raises(UnsupportedFormat, match="store format version 3"):
        Ledger.open(tmp_path, keys=keys)


def test_unknown_checkpoint_version_is_reported_by_verify(tmp_path, keys):
    make_store(tmp_path, keys)
    log = tmp_path / "checkpoints.log"
    log.write_bytes(log.read_bytes().replace(b'"v":1', b'"v":2'))
    with Ledger.open(tmp_path, keys=keys) as ledger:
        report = ledger.verify_integrity()
    assert not report.ok
    assert "checkpoint format version 2" in report.problems[0]


def test_missing_store_identity_in_used_directory_is_refused(tmp_path, keys):
    make_store(tmp_path, keys)
    (tmp_path / "STORE").unlink()
    with pytest.raises(CorruptStore, match="STORE is missing"):
        Ledger.open(tmp_path, keys=keys)


@pytest.mark.parametrize(
    "text", ["sometimes", "every_n", "every_n:0", "every_n:x", "every_n_or_interval:10", "always:1"]
)
def test_bad_sync_policy_text_is_a_clear_error(text):
    with pytest.raises(BadInput, match="sync policy"):
        SyncPolicy.parse(text)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("always", SyncPolicy.always()),
        ("os_managed", SyncPolicy.os_managed()),
        ("every_n:64", SyncPolicy.every_n(64)),
        ("every_n_or_interval:1000:0.02", SyncPolicy.every_n_or_interval(1000, 0.02)),
    ],
)
def test_sync_policy_text_round_trips(text, policy):
    assert SyncPolicy.parse(text) == policy
