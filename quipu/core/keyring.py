"""Versioned keys: the highest version signs, every version stays to verify old material.

Checkpoint signatures name the key version that made them, so rotating the signing key
never invalidates history; a store opened with only public keys (a write-only node) can
verify but never sign, and checkpointing is skipped there.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.core.errors import BadInput


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


class KeyRing:
    """RSA key versions for checkpoint signing (and, later, field protection)."""

    def __init__(self, rsa_keys: Iterable[RsaKey] = ()) -> None:
        self._rsa: dict[int, RsaKey] = {}
        for key in rsa_keys:
            if key.version in self._rsa:
                raise BadInput(f"RSA key version {key.version} is given twice")
            self._rsa[key.version] = key

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


def _load_private(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadInput("the private PEM is not an RSA key")
    return key
