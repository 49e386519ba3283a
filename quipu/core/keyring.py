"""Versioned keys: the highest version is active, every older version stays for reading.

Two kinds of key live in a ring:

- **RSA** key versions sign checkpoints and wrap the data keys of Rsa-protected fields.
  Checkpoint signatures and ciphertexts name the key version that made them, so rotating
  never invalidates history. A ring with only public keys (a write-only node) can verify
  and encrypt but never sign or decrypt; checkpointing is skipped there.
- **HMAC** key versions key the Hmac-protected field digests and every keyed blind-index
  token. Digests are one-way, so they can never be re-keyed: old versions must stay in the
  ring for as long as rows digested under them should match a query.

Rotation is `ring.with_versions(...)`: a new ring with more versions, the highest active.
A lost key is unrecoverable (no escrow), so back the key files up apart from the store.
"""

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.core.errors import BadInput

MIN_HMAC_SECRET_BYTES = 32  # HMAC-SHA-256 gains nothing from more, and loses strength with less
MIN_GENERATED_RSA_BITS = 2048  # NIST SP 800-57: below 2048 bits is no longer acceptable
_HEX_TEXT = re.compile(rb"(?:[0-9a-fA-F]{2})+")


@dataclass(frozen=True)
class RsaKey:
    version: int
    public: rsa.RSAPublicKey
    private: rsa.RSAPrivateKey | None = None

    @classmethod
    def from_pem(
        cls, version: int, public_pem: bytes | None = None, private_pem: bytes | None = None
    ) -> "RsaKey":
        """Load a key version; the public key is derived when only the private one is given."""
        private = _load_private(private_pem) if private_pem else None
        if public_pem:
            public = serialization.load_pem_public_key(public_pem)
        elif private is not None:
            public = private.public_key()
        else:
            raise BadInput(f"RSA key version {version} needs a public or a private PEM")
        if not isinstance(public, rsa.RSAPublicKey):
            raise BadInput(f"RSA key version {version}: the public PEM is not an RSA key")
        return cls(version, public, private)


@dataclass(frozen=True)
class HmacKey:
    """One HMAC secret version. `repr` shows the version only, so a logged ring leaks nothing."""

    version: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise BadInput("an HMAC key version must be an integer >= 1")
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_HMAC_SECRET_BYTES:
            raise BadInput(
                f"HMAC key version {self.version} is shorter than {MIN_HMAC_SECRET_BYTES} bytes; "
                f"generate one with `head -c {MIN_HMAC_SECRET_BYTES} /dev/urandom | xxd -p -c 64`"
            )

    @classmethod
    def from_file(cls, version: int, path: str | os.PathLike[str]) -> "HmacKey":
        """Load a secret from a file holding either hex text or raw bytes.

        A file that is entirely an even number of hex digits (surrounding whitespace ignored)
        is read as hex, since that is what `xxd -p` or `openssl rand -hex` write; anything
        else is taken as raw bytes, unchanged. Both forms must give >= 32 secret bytes.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise BadInput(
                f"HMAC key version {version}: cannot read key file {path} ({err.strerror}); "
                "check the path and its permissions"
            ) from err
        text = data.strip()
        secret = bytes.fromhex(text.decode("ascii")) if _HEX_TEXT.fullmatch(text) else data
        return cls(version, secret)

    @classmethod
    def generate(cls, version: int = 1) -> "HmacKey":
        """A fresh random secret of the minimum length, from the OS CSPRNG."""
        return cls(version, os.urandom(MIN_HMAC_SECRET_BYTES))


_Key = TypeVar("_Key", RsaKey, HmacKey)


class KeyRing:
    """RSA and HMAC key versions: the highest of each kind is active, older ones read."""

    def __init__(self, rsa_keys: Iterable[RsaKey] = (), hmac_keys: Iterable[HmacKey] = ()) -> None:
        self._rsa: dict[int, RsaKey] = _by_version("RSA", rsa_keys)
        self._hmac: dict[int, HmacKey] = _by_version("HMAC", hmac_keys)

    @classmethod
    def generate(cls, rsa_bits: int = MIN_GENERATED_RSA_BITS) -> "KeyRing":
        """A fresh v1 RSA key pair and v1 HMAC secret, for tests and first-run setup.

        The keys exist only in memory: a caller that keeps the ring must export and back
        them up, or every value protected under them is lost with the process.
        """
        if rsa_bits < MIN_GENERATED_RSA_BITS:
            raise BadInput(f"rsa_bits must be at least {MIN_GENERATED_RSA_BITS}, got {rsa_bits}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        return cls([RsaKey(1, private.public_key(), private)], [HmacKey.generate(1)])

    def with_versions(self, rsa_keys: Iterable[RsaKey] = (), hmac_keys: Iterable[HmacKey] = ()) -> "KeyRing":
        """A new ring holding these versions and this ring's (rotation). A version that is
        already present is refused rather than replaced: replacing one would orphan every
        value protected under it."""
        return KeyRing([*self._rsa.values(), *rsa_keys], [*self._hmac.values(), *hmac_keys])

    def signing_key(self) -> RsaKey | None:
        """The highest RSA version that has its private key, or None (write-only)."""
        usable = [k for k in self._rsa.values() if k.private is not None]
        return max(usable, key=lambda k: k.version, default=None)

    def rsa_public(self, version: int) -> rsa.RSAPublicKey | None:
        key = self._rsa.get(version)
        return key.public if key else None

    @property
    def has_rsa(self) -> bool:
        return bool(self._rsa)

    @property
    def has_hmac(self) -> bool:
        return bool(self._hmac)

    def rsa_key(self, version: int | None = None) -> RsaKey | None:
        """That RSA version, or with None the highest one (which encrypts new values,
        even when only its public half is loaded)."""
        return _pick(self._rsa, version)

    def rsa_versions(self) -> list[int]:
        """Loaded RSA versions, highest (active) first."""
        return sorted(self._rsa, reverse=True)

    def hmac_key(self, version: int | None = None) -> HmacKey | None:
        """That HMAC version, or with None the highest one (which digests new values)."""
        return _pick(self._hmac, version)

    def hmac_versions(self) -> list[int]:
        """Loaded HMAC versions, highest (active) first: a query tries each of them."""
        return sorted(self._hmac, reverse=True)

    def can_decrypt(self, version: int) -> bool:
        """Whether values wrapped under this RSA version can be read (its private key is here)."""
        key = self._rsa.get(version)
        return key is not None and key.private is not None

    def __repr__(self) -> str:
        return f"KeyRing(rsa_versions={self.rsa_versions()}, hmac_versions={self.hmac_versions()})"


def _by_version(kind: str, keys: Iterable[_Key]) -> dict[int, _Key]:
    found: dict[int, _Key] = {}
    for key in keys:
        if key.version in found:
            raise BadInput(f"{kind} key version {key.version} is given twice")
        found[key.version] = key
    return found


def _pick(keys: dict[int, _Key], version: int | None) -> _Key | None:
    if version is None:
        return keys[max(keys)] if keys else None
    return keys.get(version)


def _load_private(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadInput("the private PEM is not an RSA key")
    return key
