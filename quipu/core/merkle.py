"""RFC 6962 Merkle tree hashing and proof verification: pure functions, bytes in, bytes out.

Everything a third party needs to check a Quipu proof is in this module; it touches no file,
clock or global. The verifiers follow the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2,
which verify proofs built exactly as RFC 6962 §2.1.1 (PATH) and §2.1.2 (PROOF) define them.
Proof construction lives apart, in `quipu.core.proof`.

A proof commits to a root, not to a tree size: as in RFC 9162, an inclusion path for
(leaf 0, size 8) also verifies for sizes 5..7 against the same root. What binds a size to
a root is the signed checkpoint; check the (tree_size, root) pair there.
"""

import hashlib
from collections.abc import Sequence

from quipu.core.errors import ProofError

LEAF_PREFIX = b"\x00"  # RFC 6962 §2.1: leaf hashes are SHA-256(0x00 || d(i)).
NODE_PREFIX = b"\x01"  # RFC 6962 §2.1: interior nodes are SHA-256(0x01 || left || right).
HASH_SIZE = 32

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 §2.1: MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return _sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return _sha256(NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    """RFC 6962 §2.1: the hash of an empty list is SHA-256 of the empty string."""
    return _sha256(b"").digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (RFC 6962 §2.1's k), for n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def mth(entries: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash of a list of entries (raw leaf data, not leaf hashes)."""
    return mth_of_leaf_hashes([leaf_hash(e) for e in entries])


def mth_of_leaf_hashes(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes already computed, by the §2.1 recursion (split at k)."""
    n = len(leaves)
    if n == 0:
        return empty_root()
    if n == 1:
        return leaves[0]
    k = split_point(n)
    return node_hash(mth_of_leaf_hashes(leaves[:k]), mth_of_leaf_hashes(leaves[k:]))


def root_from_inclusion_proof(leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """Fold an inclusion path into the root it implies (RFC 9162 §2.1.3.2, steps 1-4).

    Requires 0 <= leaf_index < tree_size; `leaf` is the leaf *hash*.
    """
    if not 0 <= leaf_index < tree_size:
        raise ProofError(f"leaf index {leaf_index} is outside a tree of size {tree_size}")
    _check_hashes([leaf, *path])
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion path is shorter than the tree is deep")
    return r


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf` (a leaf hash) sits at `leaf_index` of the tree with `root`.

    Raises ProofError when it does not; returns None when it does.
    """
    got = root_from_inclusion_proof(leaf_index, tree_size, leaf, path)
    if got != root:
        raise ProofError(
            f"inclusion proof for leaf {leaf_index} yields root {got.hex()}, "
            f"expected {root.hex()} at tree size {tree_size}"
        )


def verify_consistency(
    first_size: int,
    second_size: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree of `second_root` extends the tree of `first_root` (append-only).

    Requires 0 < first_size <= second_size (RFC 9162 §2.1.4.2); equal sizes need an empty
    proof and equal roots. Raises ProofError when the proof does not hold.
    """
    if not 0 < first_size <= second_size:
        raise ProofError(
            f"consistency needs 0 < first_size <= second_size; "
            f"got first_size={first_size}, second_size={second_size}"
        )
    _check_hashes([first_root, second_root, *proof])
    if first_size == second_size:
        if proof:
            raise ProofError("a proof between equal tree sizes must be empty")
        if first_root != second_root:
            raise ProofError(f"trees of equal size {first_size} have different roots")
        return
    fr, sr = _roots_from_consistency_proof(first_size, second_size, first_root, proof)
    if fr != first_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {first_size}")
    if sr != second_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {second_size}")


def _roots_from_consistency_proof(
    first_size: int, second_size: int, first_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 1-6: the (first, second) roots a consistency proof implies."""
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if first_size & (first_size - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    return fr, sr


def _check_hashes(values: Sequence[bytes]) -> None:
    for v in values:
        if not isinstance(v, bytes | bytearray) or len(v) != HASH_SIZE:
            raise ProofError(f"every hash in a proof must be {HASH_SIZE} bytes")
