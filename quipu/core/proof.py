"""RFC 6962 proof construction, written once over any source of subtree hashes.

`inclusion_path` is PATH(m, D[n]) of RFC 6962 §2.1.1 and `consistency_path` is PROOF(m, D[n])
of §2.1.2. Both only ever ask for MTH(D[lo:hi]) of ranges, so the same recursion serves the
reference functions over a list of entries (`audit_path`, `consistency_proof`) and the
stored-node prover of `quipu.core.spine`, which answers each range from O(log n) nodes.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quipu.core.merkle import leaf_hash, mth_of_leaf_hashes, split_point


@dataclass(frozen=True)
class InclusionProof:
    """Leaf `leaf_index` (leaf hash `leaf_hash`) is in the tree of `tree_size` with `root`."""

    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    path: list[bytes]
    root: bytes

    def to_dict(self) -> dict:
        """The v1 HTTP API's JSON form (hex hashes)."""
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "leaf": self.leaf_hash.hex(),
            "audit_path": [h.hex() for h in self.path],
            "merkle_root": self.root.hex(),
        }


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of `second_size` (`second_root`) extends the tree of `first_size`."""

    first_size: int
    second_size: int
    first_root: bytes
    second_root: bytes
    proof: list[bytes]

    def to_dict(self) -> dict:
        """The v1 HTTP API's JSON form (`merkle_root` is the second, current root), plus
        `first_root` so a verifier needs nothing else."""
        return {
            "first_size": self.first_size,
            "second_size": self.second_size,
            "first_root": self.first_root.hex(),
            "merkle_root": self.second_root.hex(),
            "proof": [h.hex() for h in self.proof],
        }


RangeHash = Callable[[int, int], bytes]
"""Returns MTH(D[lo:hi]) for 0 <= lo < hi <= tree size."""


def inclusion_path(index: int, size: int, range_hash: RangeHash) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]): sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = split_point(hi - lo)
        if m < k:
            path.append(range_hash(lo + k, hi))
            hi = lo + k
        else:
            path.append(range_hash(lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_path(first: int, second: int, range_hash: RangeHash) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for 0 < m <= n."""
    if not 0 < first <= second:
        raise ValueError(f"consistency needs 0 < first <= second; got {first}, {second}")
    proof: list[bytes] = []
    lo, hi, m, whole = 0, second, first, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            proof.append(range_hash(lo + k, hi))
            hi = lo + k
        else:
            proof.append(range_hash(lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        proof.append(range_hash(lo, hi))
    proof.reverse()
    return proof


def audit_path(index: int, entries: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) straight from the entries: the reference the stored prover must match."""
    return inclusion_path(index, len(entries), _list_range_hash(entries))


def consistency_proof(first: int, entries: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) straight from the entries: the reference the stored prover must match."""
    return consistency_path(first, len(entries), _list_range_hash(entries))


def _list_range_hash(entries: Sequence[bytes]) -> RangeHash:
    leaves = [leaf_hash(e) for e in entries]
    return lambda lo, hi: mth_of_leaf_hashes(leaves[lo:hi])
