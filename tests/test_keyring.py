"""KeyRing: versioned RSA and HMAC keys, rotation, generation, loading, and no secret leaks."""

import os

import pytest

from quipu.core.errors import BadInput
from quipu.core.keyring import HmacKey, KeyRing, RsaKey

SECRET = bytes(range(32))


def hmac_key(version: int) -> HmacKey:
    return HmacKey(version, bytes([version]) * 32)


def test_hmac_secret_shorter_than_32_bytes_is_refused():
    with pytest.raises(BadInput, match="shorter than 32 bytes"):
        HmacKey(1, b"x" * 31)


@pytest.mark.parametrize("version", [0, -1, True, "1"])
def test_hmac_version_must_be_a_positive_integer(version):
    with pytest.raises(BadInput, match="version"):
        HmacKey(version, SECRET)


def test_hmac_secret_is_not_in_repr_of_key_or_ring():
    key = HmacKey(3, b"\xaa" * 40)
    ring = KeyRing(hmac_keys=[key])
    for shown in (repr(key), str(key), repr(ring), str(ring)):
        assert "\\xaa" not in shown
        assert key.secret.hex() not in shown
    assert "3" in repr(key)


def test_highest_version_is_active_and_versions_list_highest_first(rsa_key, other_rsa_private):
    v2 = RsaKey(2, other_rsa_private.public_key(), other_rsa_private)
    ring = KeyRing([v2, rsa_key], [hmac_key(1), hmac_key(3), hmac_key(2)])
    assert ring.rsa_versions() == [2, 1]
    assert ring.hmac_versions() == [3, 2, 1]
    assert ring.rsa_key() is v2
    assert ring.rsa_key(1) is rsa_key
    assert ring.hmac_key().version == 3
    assert ring.hmac_key(1).secret == bytes([1]) * 32
    assert ring.hmac_key(9) is None and ring.rsa_key(9) is None


def test_empty_ring_has_no_active_keys():
    ring = KeyRing()
    assert ring.rsa_key() is None and ring.hmac_key() is None
    assert ring.rsa_versions() == [] and ring.hmac_versions() == []
    assert not ring.has_rsa and not ring.has_hmac
    assert ring.signing_key() is None


def test_rotation_adds_a_higher_version_and_keeps_older_ones_for_reading(rsa_key, other_rsa_private):
    ring = KeyRing([rsa_key], [hmac_key(1)])
    rotated = ring.with_versions(
        rsa_keys=[RsaKey(2, other_rsa_private.public_key(), other_rsa_private)], hmac_keys=[hmac_key(2)]
    )
    assert rotated.rsa_key().version == 2 and rotated.hmac_key().version == 2
    assert rotated.rsa_key(1) is rsa_key and rotated.hmac_key(1) == hmac_key(1)
    assert rotated.can_decrypt(1) and rotated.can_decrypt(2)
    assert rotated.signing_key().version == 2
    # The old ring is untouched: rotation builds a new ring.
    assert ring.rsa_versions() == [1] and ring.hmac_versions() == [1]


def test_rotation_refuses_to_replace_a_version_already_in_the_ring():
    ring = KeyRing(hmac_keys=[hmac_key(1)])
    with pytest.raises(BadInput, match="HMAC key version 1 is given twice"):
        ring.with_versions(hmac_keys=[HmacKey(1, b"\x07" * 32)])


def test_a_version_given_twice_is_refused(rsa_key):
    with pytest.raises(BadInput, match="RSA key version 1 is given twice"):
        KeyRing([rsa_key, rsa_key])
    with pytest.raises(BadInput, match="HMAC key version 2 is given twice"):
        KeyRing(hmac_keys=[hmac_key(2), hmac_key(2)])


def test_can_decrypt_needs_the_private_key_of_that_version(rsa_key):
    write_only = KeyRing([RsaKey(1, rsa_key.public)])
    assert not write_only.can_decrypt(1)
    assert KeyRing([rsa_key]).can_decrypt(1)
    assert not KeyRing([rsa_key]).can_decrypt(2)


def test_checkpoint_interface_is_unchanged(rsa_key):
    """Checkpoint code calls KeyRing([...]) positionally, signing_key, rsa_public, has_rsa."""
    ring = KeyRing([rsa_key])
    assert ring.signing_key() is rsa_key
    assert ring.rsa_public(1) is rsa_key.public
    assert ring.rsa_public(2) is None
    assert ring.has_rsa
    assert KeyRing([RsaKey(1, rsa_key.public)]).signing_key() is None


def test_generate_gives_a_v1_rsa_pair_and_a_v1_hmac_secret():
    ring = KeyRing.generate()
    assert ring.rsa_versions() == [1] and ring.hmac_versions() == [1]
    assert ring.signing_key().version == 1 and ring.can_decrypt(1)
    assert ring.rsa_key().public.key_size == 2048
    assert len(ring.hmac_key().secret) == 32
    assert KeyRing.generate().hmac_key().secret != ring.hmac_key().secret


def test_generate_refuses_rsa_keys_below_2048_bits():
    with pytest.raises(BadInput, match="at least 2048"):
        KeyRing.generate(rsa_bits=1024)


def test_hmac_key_file_with_hex_text_is_decoded(tmp_path):
    path = tmp_path / "hmac.hex"
    path.write_text(SECRET.hex() + "\n")
    assert HmacKey.from_file(2, path) == HmacKey(2, SECRET)


def test_hmac_key_file_with_raw_bytes_is_used_unchanged(tmp_path):
    raw = os.urandom(48) + b"\n"  # a newline in raw bytes is part of the secret
    path = tmp_path / "hmac.bin"
    path.write_bytes(raw)
    assert HmacKey.from_file(1, path).secret == raw


def test_hmac_key_file_that_is_too_short_is_refused_without_showing_it(tmp_path):
    path = tmp_path / "short.hex"
    path.write_text("ab" * 31)  # 31 bytes once decoded
    with pytest.raises(BadInput, match="shorter than 32 bytes") as caught:
        HmacKey.from_file(1, path)
    assert "abab" not in str(caught.value)


def test_missing_hmac_key_file_is_bad_input_naming_the_path(tmp_path):
    path = tmp_path / "absent.hex"
    with pytest.raises(BadInput, match="cannot read key file") as caught:
        HmacKey.from_file(1, path)
    assert str(path) in str(caught.value)


def test_rsa_key_loads_from_private_pem(private_pem_path):
    key = RsaKey.from_pem(4, private_pem=private_pem_path.read_bytes())
    ring = KeyRing([key])
    assert ring.can_decrypt(4) and ring.rsa_key().version == 4
