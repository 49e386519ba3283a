"""Field protection: stored forms, reveal, exact matching, blind-index tokens and re-keying.

The pinned-formula tests recompute each stored form from the construction documented in
quipu/core/protection.py with nothing but hashlib/hmac/cryptography, so the documentation
and the code cannot drift apart.
"""

import base64
import hashlib
import hmac

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quipu.core.errors import BadInput, CorruptStore
from quipu.core.keyring import HmacKey, KeyRing, RsaKey
from quipu.core.protection import (
    decrypt,
    index_tokens,
    matches_exact,
    probe_tokens,
    protect,
    retoken,
    reveal,
    rewrap,
)
from quipu.core.schema import BlindIndex, FieldDef, Protection
from quipu.core.values import Value

TYPE = "patient"
SECRET_V1 = b"\x11" * 32
SECRET_V2 = b"\x22" * 32
# No hex digits or base64-looking runs, so an accidental hit in a digest is impossible.
PLAIN = "Zyrtqx Wolkmup-Hovring"
PROTECTED = [Protection.SHA256, Protection.HMAC, Protection.RSA]


def field(protection: Protection, search: BlindIndex | None = None, name: str = "name") -> FieldDef:
    return FieldDef.text(name).protect(protection).blind(search or BlindIndex())


@pytest.fixture
def ring(rsa_private) -> KeyRing:
    """Reads and writes everything: RSA v1 with its private key, HMAC v1."""
    return KeyRing([RsaKey(1, rsa_private.public_key(), rsa_private)], [HmacKey(1, SECRET_V1)])


@pytest.fixture
def write_only(rsa_private) -> KeyRing:
    """A write-only node: the RSA public key and the HMAC key, no RSA private key."""
    return KeyRing([RsaKey(1, rsa_private.public_key())], [HmacKey(1, SECRET_V1)])


@pytest.fixture
def rotated(ring, other_rsa_private) -> KeyRing:
    """The ring after one rotation of both kinds: v2 active, v1 kept for reading."""
    return ring.with_versions(
        [RsaKey(2, other_rsa_private.public_key(), other_rsa_private)], [HmacKey(2, SECRET_V2)]
    )


def flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [Value.text_("Ada"), Value.number(42), Value.json({"b": 1, "a": [2]})])
def test_plain_value_is_stored_tagged_and_round_trips(ring, value):
    plain = FieldDef("v", value.kind)
    stored = protect(TYPE, plain, value, ring)
    assert stored == {"v": value.to_json()}
    assert reveal(TYPE, plain, stored, ring) == value.to_json()
    assert decrypt(TYPE, plain, stored, ring) == value
    assert matches_exact(TYPE, plain, stored, value, ring)


@pytest.mark.parametrize("protection", PROTECTED)
def test_protected_value_matches_itself_and_nothing_else(ring, protection):
    f = field(protection)
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    assert matches_exact(TYPE, f, stored, Value.text_(PLAIN), ring)
    assert not matches_exact(TYPE, f, stored, Value.text_(PLAIN + "x"), ring)
    assert not matches_exact(TYPE, f, stored, Value.text_(PLAIN.lower()), ring), "exact is case-sensitive"


def test_sha256_digest_follows_the_documented_formula(ring):
    stored = protect(TYPE, field(Protection.SHA256), Value.text_(PLAIN), ring)
    expected = hashlib.sha256(b"quipu-sha256-v1\0patient\0name\0" + PLAIN.encode()).hexdigest()
    assert stored == {"sha256": expected}
    assert reveal(TYPE, field(Protection.SHA256), stored, ring) == {"Sha256": expected}


def test_sha256_needs_no_key_and_is_deterministic():
    f = field(Protection.SHA256)
    assert protect(TYPE, f, Value.text_(PLAIN), KeyRing()) == protect(TYPE, f, Value.text_(PLAIN), KeyRing())
    assert decrypt(TYPE, f, protect(TYPE, f, Value.text_(PLAIN), KeyRing()), KeyRing()) is None


def test_hmac_digest_follows_the_documented_formula(ring):
    stored = protect(TYPE, field(Protection.HMAC), Value.text_(PLAIN), ring)
    subkey = hmac.digest(SECRET_V1, b"quipu-field-v1\0patient\0name", "sha256")
    expected = hmac.digest(subkey, PLAIN.encode(), "sha256").hex()
    assert stored == {"hmac": expected, "kv": 1}
    assert reveal(TYPE, field(Protection.HMAC), stored, ring) == {"Hmac": expected}
    assert decrypt(TYPE, field(Protection.HMAC), stored, ring) is None, "Hmac is one-way"


def test_hmac_value_does_not_match_under_another_secret_of_the_same_version(ring):
    f = field(Protection.HMAC)
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    impostor = KeyRing(hmac_keys=[HmacKey(1, b"\x99" * 32)])
    assert not matches_exact(TYPE, f, stored, Value.text_(PLAIN), impostor)


def test_rsa_value_round_trips_through_encryption(ring):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    assert set(stored) == {"rsa"} and set(stored["rsa"]) == {"kv", "wk", "n", "ct"}
    assert stored["rsa"]["kv"] == 1
    assert decrypt(TYPE, f, stored, ring) == Value.text_(PLAIN)
    assert reveal(TYPE, f, stored, ring) == {"Text": PLAIN}


def test_rsa_envelope_follows_the_documented_construction(ring, rsa_private):
    stored = protect(TYPE, field(Protection.RSA), Value.text_(PLAIN), ring)["rsa"]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    data_key = rsa_private.decrypt(base64.b64decode(stored["wk"]), oaep)
    nonce = base64.b64decode(stored["n"])
    aad = b"quipu-rsa-v1\0patient\0name\0" + b"1"
    plaintext = AESGCM(data_key).decrypt(nonce, base64.b64decode(stored["ct"]), aad)
    assert (len(data_key), len(nonce)) == (32, 12)
    assert orjson.loads(plaintext) == {"Text": PLAIN}


def test_rsa_encryption_uses_a_fresh_data_key_and_nonce_every_time(ring):
    f = field(Protection.RSA)
    first, second = (protect(TYPE, f, Value.text_(PLAIN), ring)["rsa"] for _ in range(2))
    assert first["wk"] != second["wk"] and first["n"] != second["n"] and first["ct"] != second["ct"]


# -- tamper, wrong key, moved ciphertext ---------------------------------------------------


@pytest.mark.parametrize("part", ["wk", "n", "ct"])
def test_tampered_rsa_ciphertext_raises_corrupt_store_naming_type_and_field(ring, part):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    stored["rsa"][part] = flip_b64(stored["rsa"][part])
    for call in (decrypt, reveal):
        with pytest.raises(CorruptStore, match="field name of type patient") as caught:
            call(TYPE, f, stored, ring)
        assert PLAIN not in str(caught.value)
    with pytest.raises(CorruptStore):
        matches_exact(TYPE, f, stored, Value.text_(PLAIN), ring)


def test_rsa_ciphertext_moved_to_another_field_fails_authentication(ring):
    stored = protect(TYPE, field(Protection.RSA, name="name"), Value.text_(PLAIN), ring)
    with pytest.raises(CorruptStore, match="field alias of type patient"):
        decrypt(TYPE, field(Protection.RSA, name="alias"), stored, ring)


def test_rsa_ciphertext_moved_to_another_type_fails_authentication(ring):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    with pytest.raises(CorruptStore, match="field name of type doctor"):
        decrypt("doctor", f, stored, ring)


def test_rsa_ciphertext_relabelled_with_another_key_version_fails_authentication(rotated):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), rotated)
    stored["rsa"]["kv"] = 1  # written under v2, claims v1
    with pytest.raises(CorruptStore, match="key version 1"):
        decrypt(TYPE, f, stored, rotated)


def test_rsa_value_read_with_a_different_private_key_raises_corrupt_store(ring, other_rsa_private):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    wrong = KeyRing([RsaKey(1, other_rsa_private.public_key(), other_rsa_private)])
    with pytest.raises(CorruptStore, match="not the key that wrapped it"):
        decrypt(TYPE, f, stored, wrong)


@pytest.mark.parametrize(
    ("protection", "stored"),
    [
        (Protection.NONE, {"sha256": "ab"}),
        (Protection.NONE, {"v": {"Colour": "red"}}),
        (Protection.SHA256, {"sha256": 5}),
        (Protection.HMAC, {"hmac": "ab"}),
        (Protection.HMAC, {"hmac": "ab", "kv": True}),
        (Protection.RSA, {"rsa": {"wk": "", "n": "", "ct": ""}}),
        (Protection.RSA, {"rsa": {"kv": 1, "wk": "not base64!", "n": "", "ct": ""}}),
        (Protection.RSA, {"v": {"Text": "x"}}),
    ],
)
def test_stored_form_of_the_wrong_shape_is_corrupt_store(ring, protection, stored):
    f = field(protection) if protection is not Protection.NONE else FieldDef.text("name")
    with pytest.raises(CorruptStore, match="field name of type patient"):
        reveal(TYPE, f, stored, ring)


def test_damaged_digest_compares_unequal_instead_of_raising(ring):
    f = field(Protection.SHA256)
    assert not matches_exact(TYPE, f, {"sha256": "\u00e9" * 64}, Value.text_(PLAIN), ring)


# -- write-only mode and missing keys ------------------------------------------------------


def test_write_only_ring_protects_but_returns_ciphertext(write_only, ring):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), write_only)
    assert reveal(TYPE, f, stored, write_only) == {"Rsa": stored["rsa"]}
    assert decrypt(TYPE, f, stored, write_only) is None
    assert not matches_exact(TYPE, f, stored, Value.text_(PLAIN), write_only)
    # The holder of the private key reads what the write-only node wrote.
    assert decrypt(TYPE, f, stored, ring) == Value.text_(PLAIN)


@pytest.mark.parametrize(
    ("protection", "kind", "keys"),
    [(Protection.HMAC, "HMAC", "rsa_only"), (Protection.RSA, "RSA", "hmac_only")],
)
def test_missing_key_is_bad_input_naming_field_and_fix(rsa_key, protection, kind, keys):
    ring = {"rsa_only": KeyRing([rsa_key]), "hmac_only": KeyRing(hmac_keys=[HmacKey(1, SECRET_V1)])}[keys]
    with pytest.raises(BadInput) as caught:
        protect(TYPE, field(protection), Value.text_(PLAIN), ring)
    message = str(caught.value)
    assert f"field name of type patient is {protection.value}-protected" in message
    assert f"no {kind} key" in message and "add" in message
    assert PLAIN not in message


def test_blind_index_of_an_rsa_field_needs_an_hmac_key(rsa_key):
    f = field(Protection.RSA, BlindIndex("Exact"))
    with pytest.raises(BadInput, match=r"keys\.hmac_key_file"):
        index_tokens(TYPE, f, Value.text_(PLAIN), KeyRing([rsa_key]))
    with pytest.raises(BadInput, match=r"keys\.hmac_key_file"):
        probe_tokens(TYPE, f, "exact", Value.text_(PLAIN), KeyRing([rsa_key]))


# -- HMAC rotation -----------------------------------------------------------------------


def test_hmac_value_written_under_v1_still_matches_after_v2_is_active(ring, rotated):
    f = field(Protection.HMAC)
    old = protect(TYPE, f, Value.text_(PLAIN), ring)
    new = protect(TYPE, f, Value.text_(PLAIN), rotated)
    assert (old["kv"], new["kv"]) == (1, 2)
    assert old["hmac"] != new["hmac"]
    assert matches_exact(TYPE, f, old, Value.text_(PLAIN), rotated)
    assert matches_exact(TYPE, f, new, Value.text_(PLAIN), rotated)


def test_hmac_value_from_a_version_missing_from_the_ring_does_not_match(rotated):
    f = field(Protection.HMAC)
    stored = protect(TYPE, f, Value.text_(PLAIN), rotated)
    assert not matches_exact(TYPE, f, stored, Value.text_(PLAIN), KeyRing(hmac_keys=[HmacKey(1, SECRET_V1)]))


def test_probe_tokens_offer_one_set_per_hmac_version_so_old_rows_still_match(ring, rotated):
    f = field(Protection.HMAC, BlindIndex("Exact"))
    old_tokens = set(index_tokens(TYPE, f, Value.text_(PLAIN), ring))
    new_tokens = set(index_tokens(TYPE, f, Value.text_(PLAIN), rotated))
    sets = probe_tokens(TYPE, f, "exact", Value.text_(PLAIN), rotated)
    assert len(sets) == 2
    assert sets[0] <= new_tokens and sets[1] <= old_tokens  # highest version first
    assert all(t.startswith("v2:") for t in new_tokens) and all(t.startswith("v1:") for t in old_tokens)


# -- blind-index tokens --------------------------------------------------------------------


@pytest.mark.parametrize("protection", [Protection.NONE, *PROTECTED])
@pytest.mark.parametrize("search", [BlindIndex("Exact"), BlindIndex("Prefix", 4), BlindIndex("Ngram", 3)])
def test_tokens_are_case_insensitive(ring, protection, search):
    f = field(protection, search)
    assert index_tokens(TYPE, f, Value.text_("Grace Hopper"), ring) == index_tokens(
        TYPE, f, Value.text_("GRACE hopper"), ring
    )


def test_exact_tokens_answer_exact_and_exact_ci_probes(ring):
    f = field(Protection.HMAC, BlindIndex("Exact"))
    tokens = set(index_tokens(TYPE, f, Value.text_("Grace Hopper"), ring))
    assert len(tokens) == 1
    for mode in ("exact", "exact_ci"):
        (probe,) = probe_tokens(TYPE, f, mode, Value.text_("grace HOPPER"), ring)
        assert probe == tokens
    (other,) = probe_tokens(TYPE, f, "exact", Value.text_("Grace"), ring)
    assert not other <= tokens


def test_prefix_tokens_cover_each_prefix_up_to_n(ring):
    f = field(Protection.HMAC, BlindIndex("Prefix", 4))
    tokens = set(index_tokens(TYPE, f, Value.text_("Hopper"), ring))
    assert len(tokens) == 4
    assert len(index_tokens(TYPE, f, Value.text_("Ho"), ring)) == 2
    for probe in ("h", "HO", "hop", "hopp", "Hopper", "hoppxx"):  # longer than n: first n chars
        (wanted,) = probe_tokens(TYPE, f, "prefix", Value.text_(probe), ring)
        assert wanted <= tokens, probe
    (wanted,) = probe_tokens(TYPE, f, "prefix", Value.text_("hx"), ring)
    assert not wanted <= tokens


def test_empty_prefix_probe_constrains_nothing(ring):
    f = field(Protection.HMAC, BlindIndex("Prefix", 3))
    assert probe_tokens(TYPE, f, "prefix", Value.text_(""), ring) == [set()]


def test_ngram_probe_of_any_substring_is_a_subset_of_the_value_tokens(ring):
    f = field(Protection.RSA, BlindIndex("Ngram", 3))
    text = "Grace Brewster Murray Hopper"
    tokens = set(index_tokens(TYPE, f, Value.text_(text), ring))
    assert len(tokens) == len({text.casefold()[i : i + 3] for i in range(len(text) - 2)})
    for start in range(len(text) - 3):
        for end in range(start + 3, len(text) + 1):
            (wanted,) = probe_tokens(TYPE, f, "contains", Value.text_(text[start:end].upper()), ring)
            assert wanted <= tokens, (start, end)
    (wanted,) = probe_tokens(TYPE, f, "contains", Value.text_("Hopper Grace"), ring)
    assert not wanted <= tokens


def test_ngram_value_shorter_than_n_is_one_whole_token(ring):
    f = field(Protection.HMAC, BlindIndex("Ngram", 5))
    tokens = index_tokens(TYPE, f, Value.text_("Ada"), ring)
    assert len(tokens) == 1
    assert index_tokens(TYPE, field(Protection.HMAC, BlindIndex("Exact")), Value.text_("Ada"), ring) == tokens


def test_contains_probe_shorter_than_the_ngram_length_cannot_be_answered(ring):
    f = field(Protection.HMAC, BlindIndex("Ngram", 3))
    assert probe_tokens(TYPE, f, "contains", Value.text_("ab"), ring) is None


@pytest.mark.parametrize(
    ("search", "mode"),
    [
        (BlindIndex(), "exact"),
        (BlindIndex(), "contains"),
        (BlindIndex("Exact"), "prefix"),
        (BlindIndex("Exact"), "contains"),
        (BlindIndex("Prefix", 3), "exact"),
        (BlindIndex("Prefix", 3), "contains"),
        (BlindIndex("Ngram", 3), "exact_ci"),
        (BlindIndex("Ngram", 3), "prefix"),
    ],
)
def test_probe_tokens_are_none_when_the_index_cannot_answer_the_mode(ring, search, mode):
    assert probe_tokens(TYPE, field(Protection.HMAC, search), mode, Value.text_("abcdef"), ring) is None


def test_unknown_match_mode_is_bad_input(ring):
    with pytest.raises(BadInput, match="exact, exact_ci, prefix, contains"):
        probe_tokens(TYPE, field(Protection.HMAC, BlindIndex("Exact")), "regex", Value.text_("a"), ring)


def test_field_without_a_blind_index_has_no_tokens(ring):
    assert index_tokens(TYPE, field(Protection.HMAC), Value.text_(PLAIN), ring) == []


def test_keyed_tokens_name_their_version_and_unkeyed_tokens_are_bare_sha256(ring):
    search = BlindIndex("Exact")
    (keyed,) = index_tokens(TYPE, field(Protection.RSA, search), Value.text_("ada"), ring)
    subkey = hmac.digest(SECRET_V1, b"quipu-token-v1\0patient\0name", "sha256")
    assert keyed == "v1:" + hmac.digest(subkey, b"ada", "sha256").hex()
    (bare,) = index_tokens(TYPE, field(Protection.SHA256, search), Value.text_("Ada"), KeyRing())
    assert bare == hashlib.sha256(b"quipu-token-sha256-v1\0patient\0name\0ada").hexdigest()
    assert index_tokens(TYPE, field(Protection.NONE, search), Value.text_("Ada"), KeyRing()) == [bare]


def test_exact_token_differs_from_the_value_mac(ring):
    f = field(Protection.HMAC, BlindIndex("Exact"))
    (token,) = index_tokens(TYPE, f, Value.text_("ada"), ring)
    assert protect(TYPE, f, Value.text_("ada"), ring)["hmac"] not in token


def test_same_value_in_two_fields_gives_unrelated_digests_and_tokens(ring):
    for protection in (Protection.SHA256, Protection.HMAC):
        a, b = (field(protection, BlindIndex("Exact"), name=n) for n in ("ssn", "mrn"))
        assert protect(TYPE, a, Value.text_(PLAIN), ring) != protect(TYPE, b, Value.text_(PLAIN), ring)
        assert index_tokens(TYPE, a, Value.text_(PLAIN), ring) != index_tokens(
            TYPE, b, Value.text_(PLAIN), ring
        )


def test_tokens_do_not_reveal_fragment_order(ring):
    f = field(Protection.HMAC, BlindIndex("Ngram", 2))
    tokens = index_tokens(TYPE, f, Value.text_("abcabc"), ring)
    assert tokens == sorted(set(tokens)) and len(tokens) == 3  # ab, bc, ca once each


# -- no plaintext on disk ------------------------------------------------------------------


@pytest.mark.parametrize("protection", PROTECTED)
def test_stored_form_and_tokens_never_contain_the_plaintext(ring, protection):
    f = field(protection, BlindIndex("Ngram", 3))
    value = Value.text_(PLAIN)
    blob = orjson.dumps(
        {"stored": protect(TYPE, f, value, ring), "tokens": index_tokens(TYPE, f, value, ring)}
    )
    for form in (PLAIN, PLAIN.casefold(), "Wolkmup", "wolkmup"):
        assert form.encode() not in blob


def test_grep_of_many_protected_values_finds_no_plaintext(ring, tmp_path):
    """Like `grep -r` over a store: protect many values, write every stored form and token
    to one file, and search it for each plaintext in the encodings a leak could take."""
    values = [f"Qu{i:03d}-Rwyx-Tolm-{'pqrs'[i % 4] * 3}" for i in range(60)]
    fields = [field(p, s) for p in PROTECTED for s in (BlindIndex("Exact"), BlindIndex("Prefix", 6))]
    dump = tmp_path / "store.ndjson"
    with dump.open("wb") as out:
        for text in values:
            for f in fields:
                value = Value.text_(text)
                row = {"stored": protect(TYPE, f, value, ring), "tokens": index_tokens(TYPE, f, value, ring)}
                out.write(orjson.dumps(row) + b"\n")
    data = dump.read_bytes()
    for text in values:
        for leak in (text.encode(), text.casefold().encode(), text.encode().hex().encode()):
            assert leak not in data, text
        assert base64.b64encode(text.encode())[:16] not in data, text


# -- re-keying -----------------------------------------------------------------------------


def test_rewrap_moves_an_rsa_value_to_the_new_version_with_a_fresh_data_key(ring, rotated, other_rsa_private):
    f = field(Protection.RSA)
    old = protect(TYPE, f, Value.text_(PLAIN), ring)
    new = rewrap(TYPE, f, old, ring, rotated)
    assert new["rsa"]["kv"] == 2
    assert new["rsa"]["wk"] != old["rsa"]["wk"] and new["rsa"]["n"] != old["rsa"]["n"]
    only_v2 = KeyRing([RsaKey(2, other_rsa_private.public_key(), other_rsa_private)])
    assert decrypt(TYPE, f, new, only_v2) == Value.text_(PLAIN)
    assert decrypt(TYPE, f, new, ring) is None, "the retired (leaked) v1 key reads nothing new"


def test_rewrap_needs_the_old_private_key(write_only, rotated):
    f = field(Protection.RSA)
    stored = protect(TYPE, f, Value.text_(PLAIN), write_only)
    with pytest.raises(BadInput, match="lacks the RSA private key of version 1"):
        rewrap(TYPE, f, stored, write_only, rotated)


def test_rewrap_refuses_fields_that_are_not_rsa(ring, rotated):
    f = field(Protection.HMAC)
    with pytest.raises(BadInput, match="only Rsa values are re-wrapped"):
        rewrap(TYPE, f, protect(TYPE, f, Value.text_(PLAIN), ring), ring, rotated)


def test_retoken_digests_an_rsa_value_under_the_new_hmac_version(ring, rotated):
    f = field(Protection.RSA, BlindIndex("Prefix", 3))
    stored = protect(TYPE, f, Value.text_(PLAIN), ring)
    tokens = retoken(TYPE, f, stored, ring, rotated)
    assert tokens == index_tokens(TYPE, f, Value.text_(PLAIN), rotated)
    assert all(t.startswith("v2:") for t in tokens)


@pytest.mark.parametrize("protection", [Protection.SHA256, Protection.HMAC])
def test_retoken_refuses_one_way_digests(ring, rotated, protection):
    f = field(protection, BlindIndex("Exact"))
    with pytest.raises(BadInput, match="one-way"):
        retoken(TYPE, f, protect(TYPE, f, Value.text_(PLAIN), ring), ring, rotated)
