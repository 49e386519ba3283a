"""RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2): the one signature scheme of Quipu's signed
records, checkpoints and re-key events (quipu/core/checkpoint.py) and the router's
cross-shard anchors (quipu/router/anchor.py).

Bytes in, bytes (or a verdict) out. Each record builds its own signed bytes, starting with
its own domain tag (`quipu-checkpoint-v1`, `quipu-rekey-v1`, `quipu-anchor-v1\\x00`), so a
signature over one kind never verifies as another's; the tags and layouts live with their
formats (docs/format.md), not here.
"""

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def rsassa_pkcs1_v15_sign(private: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """RFC 8017 §8.2.1 RSASSA-PKCS1-V1_5-SIGN, EMSA-PKCS1-v1_5 over SHA-256 of `message`."""
    return private.sign(message, padding.PKCS1v15(), hashes.SHA256())


def rsassa_pkcs1_v15_verify(public: rsa.RSAPublicKey, message: bytes, signature: bytes) -> bool:
    """RFC 8017 §8.2.2 RSASSA-PKCS1-V1_5-VERIFY: whether `signature` is `message`'s under
    `public`. A bad signature is a result (a detected tamper), not an exception."""
    try:
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
