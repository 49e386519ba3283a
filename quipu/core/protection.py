"""Field protection: how one registry field value is stored, shown, matched and indexed.

Every function here is pure over (type name, `FieldDef`, value or stored form, `KeyRing`):
no files, clocks or globals. The registry stores what `protect` returns and the blind-index
tokens `index_tokens` returns; queries ask `matches_exact` and `probe_tokens`; rendering
asks `reveal`. Protection covers registry fields only (see SPEC §4).

Stored forms
------------
JSON-able dicts whose single top-level key names the protection. `type` and `field` are the
UTF-8 names, `text` is `value.text()` (the canonical string) in UTF-8, `\\0` is one NUL byte
(names may not contain NUL, so the framing is unambiguous; the value comes last).

- None:   `{"v": <value.to_json()>}`
- Sha256: `{"sha256": hex(SHA-256("quipu-sha256-v1\\0" type "\\0" field "\\0" text))}`.
  Keyless: anyone with the disk can hash guesses, so low-entropy values (SSNs, phone
  numbers) can be brute-forced; use Hmac for those.
- Hmac:   `{"hmac": hex(HMAC-SHA-256(subkey, text)), "kv": n}` where
  `subkey = HMAC-SHA-256(secret_n, "quipu-field-v1\\0" type "\\0" field)` and n is the
  HMAC key version that was active at write time (queries re-digest under that version).
- Rsa:    `{"rsa": {"kv": n, "wk": b64(RSA-OAEP(dk)), "n": b64(nonce), "ct": b64(ct)}}`:
  a fresh 32-byte data key `dk` per value, wrapped with RSA version n (OAEP, SHA-256,
  MGF1-SHA-256, no label); a fresh 12-byte nonce; `ct` is AES-256-GCM of the plaintext
  (ciphertext || 16-byte tag) with associated data
  `"quipu-rsa-v1\\0" type "\\0" field "\\0" decimal(n)`, so a ciphertext copied to another
  field or type, or relabelled with another key version, fails authentication.
  The plaintext is the orjson encoding of `value.to_json()`, so the value kind survives.
  b64 is standard base64 with padding.

Blind-index tokens
------------------
The value text is case-folded (`str.casefold`), then cut by the field's `BlindIndex`:
Exact -> the whole text; Prefix(n) -> its prefixes of length 1..n; Ngram(n) -> every
n-character window (a text shorter than n is one whole token). Each token is digested:

- Hmac/Rsa fields: `"v<n>:" + hex(HMAC-SHA-256(tsubkey, token))`, with
  `tsubkey = HMAC-SHA-256(secret_n, "quipu-token-v1\\0" type "\\0" field)` under the active
  HMAC version n. A separate label from the value MAC, so an Exact token never equals the
  field's stored digest (a token cannot be replayed as a value MAC, or the reverse).
- None/Sha256 fields: `hex(SHA-256("quipu-token-sha256-v1\\0" type "\\0" field "\\0" token))`.
  Keyless, so as brute-forceable as Sha256 itself.

A row's tokens are stored deduplicated and sorted, so their order does not reveal where
each fragment sits in the value. Anyone holding the HMAC key (a compromised server holds
it to search) can dictionary-attack tokens, Ngram ones fragment by fragment, even for Rsa
fields; keep blind indexes off low-entropy values.
"""

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import TypeVar

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quipu.core.errors import BadInput, CorruptStore
from quipu.core.keyring import HmacKey, KeyRing
from quipu.core.schema import BlindIndex, FieldDef, Protection
from quipu.core.values import KINDS, Value

SHA256_DOMAIN = b"quipu-sha256-v1\0"
FIELD_MAC_LABEL = b"quipu-field-v1\0"
TOKEN_MAC_LABEL = b"quipu-token-v1\0"
TOKEN_SHA256_DOMAIN = b"quipu-token-sha256-v1\0"
RSA_AAD_LABEL = b"quipu-rsa-v1\0"
DATA_KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM nonce size NIST SP 800-38D recommends
MATCH_MODES = ("exact", "exact_ci", "prefix", "contains")
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

TokenDigest = Callable[[str], str]
_Part = TypeVar("_Part", str, int, dict)


def protect(type_name: str, field: FieldDef, value: Value, keys: KeyRing) -> dict:
    """The stored form of `value` under the field's protection (see the module docstring)."""
    context = _context(type_name, field)
    match field.protection:
        case Protection.NONE:
            return {"v": value.to_json()}
        case Protection.SHA256:
            return {"sha256": _sha256_hex(SHA256_DOMAIN, context, value.text())}
        case Protection.HMAC:
            key = _active_hmac(type_name, field, keys)
            return {"hmac": _value_mac(key, context, value.text()), "kv": key.version}
        case Protection.RSA:
            return {"rsa": _encrypt(type_name, field, value, keys)}
    raise _unknown_protection(type_name, field)


def reveal(type_name: str, field: FieldDef, stored: dict, keys: KeyRing) -> dict:
    """The rendered JSON of a stored value: digests stay digests (one-way), and an Rsa value
    is shown as plaintext only when the ring can decrypt it, else as its ciphertext (the
    write-only mode, where clients decrypt locally)."""
    match field.protection:
        case Protection.NONE:
            return _from_tagged(type_name, field, _part(type_name, field, stored, "v", dict)).to_json()
        case Protection.SHA256:
            return {"Sha256": _part(type_name, field, stored, "sha256", str)}
        case Protection.HMAC:
            _part(type_name, field, stored, "kv", int)  # a digest without its version is damage
            return {"Hmac": _part(type_name, field, stored, "hmac", str)}
        case Protection.RSA:
            value = decrypt(type_name, field, stored, keys)
            return (
                value.to_json() if value is not None else {"Rsa": dict(_envelope(type_name, field, stored))}
            )
    raise _unknown_protection(type_name, field)


def decrypt(type_name: str, field: FieldDef, stored: dict, keys: KeyRing) -> Value | None:
    """The plaintext value, or None when it cannot be had: Sha256/Hmac are one-way, and an
    Rsa value needs the private key of the version that wrapped it.

    Raises CorruptStore when an Rsa ciphertext fails authentication (edited, or moved from
    another field or type): that is damage to report, never a value to show.
    """
    match field.protection:
        case Protection.NONE:
            return _from_tagged(type_name, field, _part(type_name, field, stored, "v", dict))
        case Protection.SHA256 | Protection.HMAC:
            return None
        case Protection.RSA:
            return _decrypt(type_name, field, _envelope(type_name, field, stored), keys)
    raise _unknown_protection(type_name, field)


def matches_exact(type_name: str, field: FieldDef, stored: dict, probe: Value, keys: KeyRing) -> bool:
    """Whether the stored value equals `probe` (canonical text, case-sensitive).

    Every protection compares `text()`, so changing nothing but protection never changes
    which rows match. Hmac re-digests under the version the row was written with (rows from
    before a rotation still match); False when that version or the Rsa private key is absent.
    """
    context = _context(type_name, field)
    match field.protection:
        case Protection.NONE | Protection.RSA:
            value = decrypt(type_name, field, stored, keys)
            return value is not None and value.text() == probe.text()
        case Protection.SHA256:
            want = _part(type_name, field, stored, "sha256", str)
            return _same_digest(_sha256_hex(SHA256_DOMAIN, context, probe.text()), want)
        case Protection.HMAC:
            want = _part(type_name, field, stored, "hmac", str)
            key = keys.hmac_key(_part(type_name, field, stored, "kv", int))
            return key is not None and _same_digest(_value_mac(key, context, probe.text()), want)
    raise _unknown_protection(type_name, field)


def index_tokens(type_name: str, field: FieldDef, value: Value, keys: KeyRing) -> list[str]:
    """The blind-index tokens to store beside this value ([] without a search index),
    digested under the active HMAC version for keyed fields."""
    fragments = _fragments(field.search, value.text().casefold())
    if not fragments:
        return []
    key = _active_hmac(type_name, field, keys) if _keyed(field) else None
    digest = _token_digest(type_name, field, key)
    return sorted({digest(fragment) for fragment in fragments})


def probe_tokens(
    type_name: str, field: FieldDef, mode: str, probe: Value, keys: KeyRing
) -> list[set[str]] | None:
    """The token sets a query must find: a row is a candidate when its tokens include every
    token of at least one set. One set per HMAC version in the ring (a row's tokens were
    digested under the version active when it was written); an empty set constrains nothing.

    None when this field's index cannot answer `mode` for this probe (no index of the right
    kind, or a `contains` probe shorter than the n-gram length), so the caller can refuse
    with a clear error or fall back to the plaintext cache. Candidates may over-match (case
    for `exact`, a longer prefix than n, n-grams out of order): re-check when decryptable.
    """
    if mode not in MATCH_MODES:
        raise BadInput(f"unknown match mode {mode!r}; use one of {', '.join(MATCH_MODES)}")
    fragments = _probe_fragments(field.search, mode, probe.text().casefold())
    if fragments is None:
        return None
    if not _keyed(field):
        return [{_token_digest(type_name, field, None)(f) for f in fragments}]
    _active_hmac(type_name, field, keys)  # refuses a ring without HMAC keys
    digests = [_token_digest(type_name, field, keys.hmac_key(v)) for v in keys.hmac_versions()]
    return [{digest(f) for f in fragments} for digest in digests]


def rewrap(type_name: str, field: FieldDef, stored: dict, old_keys: KeyRing, new_keys: KeyRing) -> dict:
    """Re-encrypt an Rsa value under the new ring's highest RSA version, with a fresh data
    key and nonce (the offline re-key after a leak, so the leaked key reads nothing new)."""
    if field.protection is not Protection.RSA:
        raise BadInput(
            f"field {field.name} of type {type_name} is {field.protection.value}-protected; "
            "only Rsa values are re-wrapped"
        )
    return protect(type_name, field, _plaintext_for_rekey(type_name, field, stored, old_keys), new_keys)


def retoken(type_name: str, field: FieldDef, stored: dict, old_keys: KeyRing, new_keys: KeyRing) -> list[str]:
    """A value's blind-index tokens under the new ring's active HMAC version (after an HMAC
    key leak). Only None and Rsa values have a plaintext to re-tokenize; Sha256/Hmac digests
    are one-way, which is why old HMAC versions must stay in the ring."""
    value = _plaintext_for_rekey(type_name, field, stored, old_keys)
    return index_tokens(type_name, field, value, new_keys)


# -- digests ---------------------------------------------------------------------------------


def _context(type_name: str, field: FieldDef) -> bytes:
    """`type "\\0" field`: every digest and the AAD bind to where the value lives."""
    if "\0" in type_name or "\0" in field.name:
        raise BadInput("type and field names must not contain NUL characters")
    return type_name.encode() + b"\0" + field.name.encode()


def _sha256_hex(domain: bytes, context: bytes, text: str) -> str:
    return hashlib.sha256(domain + context + b"\0" + text.encode()).hexdigest()


def _same_digest(computed: str, stored: str) -> bool:
    """Constant-time comparison; bytes, because compare_digest refuses non-ASCII str and a
    damaged stored digest must compare unequal, not raise."""
    return hmac.compare_digest(computed.encode(), stored.encode())


def _subkey(key: HmacKey, label: bytes, context: bytes) -> bytes:
    """A per-field key, so equal values in two fields give unrelated digests and a value
    MAC and a blind-index token never share a key (NIST SP 800-108 style KDF in one block)."""
    return hmac.digest(key.secret, label + context, "sha256")


def _value_mac(key: HmacKey, context: bytes, text: str) -> str:
    return hmac.digest(_subkey(key, FIELD_MAC_LABEL, context), text.encode(), "sha256").hex()


def _token_digest(type_name: str, field: FieldDef, key: HmacKey | None) -> TokenDigest:
    """The digest for one field's tokens: keyed when `key` is given, else SHA-256."""
    context = _context(type_name, field)
    if key is None:
        return lambda token: _sha256_hex(TOKEN_SHA256_DOMAIN, context, token)
    subkey, prefix = _subkey(key, TOKEN_MAC_LABEL, context), f"v{key.version}:"
    return lambda token: prefix + hmac.digest(subkey, token.encode(), "sha256").hex()


def _active_hmac(type_name: str, field: FieldDef, keys: KeyRing) -> HmacKey:
    """The HMAC version new digests are made under; missing it is a configuration error."""
    key = keys.hmac_key()
    if key is None:
        raise _missing_key(type_name, field, "HMAC")
    return key


def _keyed(field: FieldDef) -> bool:
    """Hmac and Rsa fields key their tokens: an unkeyed token would undo the protection."""
    return field.protection in (Protection.HMAC, Protection.RSA)


# -- tokenizing ------------------------------------------------------------------------------


def _fragments(search: BlindIndex, text: str) -> list[str]:
    """The plaintext fragments a value is indexed by (already case-folded)."""
    match search.kind:
        case "Exact":
            return [text]
        case "Prefix":
            return [text[:length] for length in range(1, min(search.n, len(text)) + 1)]
        case "Ngram":
            return _ngrams(text, search.n)
    return []


def _ngrams(text: str, n: int) -> list[str]:
    if len(text) < n:
        return [text]
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def _probe_fragments(search: BlindIndex, mode: str, text: str) -> list[str] | None:
    """The fragments a matching row must have been indexed by, or None if it can't say."""
    match mode, search.kind:
        case (("exact" | "exact_ci"), "Exact"):
            return [text]
        case "prefix", "Prefix":
            return [text[: search.n]] if text else []
        case "contains", "Ngram":
            # A probe shorter than n is inside n-grams we cannot enumerate: no answer.
            return _ngrams(text, search.n) if len(text) >= search.n else None
    return None


# -- RSA hybrid encryption -------------------------------------------------------------------


def _aad(type_name: str, field: FieldDef, version: int) -> bytes:
    return RSA_AAD_LABEL + _context(type_name, field) + b"\0" + str(version).encode()


def _encrypt(type_name: str, field: FieldDef, value: Value, keys: KeyRing) -> dict:
    """A fresh data key per value: one key never encrypts two values, so a random 96-bit
    nonce is safe, and re-keying only rewraps 32 bytes per value."""
    key = keys.rsa_key()
    if key is None:
        raise _missing_key(type_name, field, "RSA")
    data_key, nonce = os.urandom(DATA_KEY_BYTES), os.urandom(NONCE_BYTES)
    plaintext = orjson.dumps(value.to_json())
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(type_name, field, key.version))
    return {
        "kv": key.version,
        "wk": _b64(key.public.encrypt(data_key, _OAEP)),
        "n": _b64(nonce),
        "ct": _b64(ciphertext),
    }


def _decrypt(type_name: str, field: FieldDef, envelope: dict, keys: KeyRing) -> Value | None:
    version = envelope.get("kv")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _corrupt(type_name, field, "its RSA envelope has no key version")
    key = keys.rsa_key(version)
    if key is None or key.private is None:
        return None
    try:
        data_key = key.private.decrypt(_unb64(envelope, "wk"), _OAEP)
        nonce = _unb64(envelope, "n")
        if len(data_key) != DATA_KEY_BYTES or len(nonce) != NONCE_BYTES:
            raise ValueError("wrong data key or nonce length")
        plaintext = AESGCM(data_key).decrypt(nonce, _unb64(envelope, "ct"), _aad(type_name, field, version))
        tagged = orjson.loads(plaintext)
    except (ValueError, InvalidTag) as err:
        # ValueError covers bad base64, a failed OAEP unwrap and bad JSON; none is shown.
        raise _corrupt(
            type_name,
            field,
            f"its RSA ciphertext fails authentication: it was edited or moved from another field "
            f"or type, or RSA key version {version} in the ring is not the key that wrapped it",
        ) from err
    return _from_tagged(type_name, field, tagged)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(envelope: dict, name: str) -> bytes:
    text = envelope.get(name)
    if not isinstance(text, str):
        raise ValueError(f"missing {name}")
    return base64.b64decode(text, validate=True)


# -- stored-form access ----------------------------------------------------------------------


def _part(type_name: str, field: FieldDef, stored: dict, name: str, kind: type[_Part]) -> _Part:
    """`stored[name]`, checked to be of `kind`: a wrong shape is damage, not a KeyError."""
    part = stored.get(name) if isinstance(stored, dict) else None
    if not isinstance(part, kind) or (kind is int and isinstance(part, bool)):
        raise _corrupt(type_name, field, f"its stored form has no valid {name!r} part")
    return part


def _envelope(type_name: str, field: FieldDef, stored: dict) -> dict:
    return _part(type_name, field, stored, "rsa", dict)


def _from_tagged(type_name: str, field: FieldDef, tagged: object) -> Value:
    """Parse a stored tagged value strictly: `Value.from_json` would also take plain JSON,
    and a stored form we did not write is damage, not input to be lenient with."""
    try:
        if not (isinstance(tagged, dict) and len(tagged) == 1 and next(iter(tagged)) in KINDS):
            raise BadInput("not a tagged value")
        return Value.from_json(tagged, f"{type_name}.{field.name}")
    except BadInput as err:
        raise _corrupt(type_name, field, "its stored value is not a valid tagged value") from err


def _plaintext_for_rekey(type_name: str, field: FieldDef, stored: dict, keys: KeyRing) -> Value:
    """The plaintext a re-key step needs, or BadInput saying why it cannot be had."""
    value = decrypt(type_name, field, stored, keys)
    if value is not None:
        return value
    if field.protection is Protection.RSA:
        version = _envelope(type_name, field, stored).get("kv")
        raise BadInput(
            f"field {field.name} of type {type_name}: the old key ring lacks the RSA private key "
            f"of version {version}; load it to re-key"
        )
    raise BadInput(
        f"field {field.name} of type {type_name} is {field.protection.value}-protected: its "
        "digests are one-way and cannot be re-keyed; keep the old HMAC versions in the ring"
    )


# -- errors ----------------------------------------------------------------------------------


def _missing_key(type_name: str, field: FieldDef, kind: str) -> BadInput:
    """Hmac fields and the blind index of Rsa fields need an HMAC key; Rsa values an RSA key."""
    hint = (
        "add keys.hmac_key_file (a secret of at least 32 bytes) to the configuration"
        if kind == "HMAC"
        else "add an RSA key version to the key ring (its public key is enough to write)"
    )
    return BadInput(
        f"field {field.name} of type {type_name} is {field.protection.value}-protected "
        f"but the key ring has no {kind} key; {hint}"
    )


def _corrupt(type_name: str, field: FieldDef, what: str) -> CorruptStore:
    return CorruptStore(
        f"field {field.name} of type {type_name}: {what}; check the key ring, run "
        "verify_integrity() and restore the store from a backup if it reports damage"
    )


def _unknown_protection(type_name: str, field: FieldDef) -> BadInput:
    return BadInput(f"field {field.name} of type {type_name} has an unknown protection")
