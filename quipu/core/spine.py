"""The Merkle spine: every node of a table's RFC 6962 tree that is a complete subtree.

The spine holds leaf hashes and interior nodes, never records, so it outlives retention:
after old segments are unlinked, inclusion proofs for retained records and consistency
proofs for any earlier tree size still come out of it. Nodes are stored in post-order in
one append-only file (`spine.qspn`, layout in docs/format.md): appending leaf i writes its
hash and then every subtree it completes, so the file only ever grows at its end. A proof
reads O(log n) nodes with `pread`; nothing is loaded at open but the right edge.
"""

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from quipu.core.errors import CorruptStore, UnsupportedFormat
from quipu.core.files import write_all
from quipu.core.merkle import HASH_SIZE, NODE_PREFIX, empty_root, node_hash, split_point
from quipu.core.proof import consistency_path, inclusion_path

MAGIC = b"QSPN"
VERSION = 1
_sha256 = hashlib.sha256
_HEADER = struct.Struct("<4sHH8x")  # magic, version, reserved(u16), reserved(8 bytes)
HEADER_SIZE = _HEADER.size


def nodes_for(leaves: int) -> int:
    """How many nodes a spine of `leaves` leaves holds: 2n - popcount(n)."""
    return 2 * leaves - leaves.bit_count()


def node_position(level: int, index: int) -> int:
    """Post-order position of the complete subtree at `level` covering leaves
    [index * 2^level, (index + 1) * 2^level).

    It is written right after its last leaf and the `level` parents below it; any parents
    above it that the same leaf completes come later.
    """
    end = (index + 1) << level
    trailing = (end & -end).bit_length() - 1
    return nodes_for(end) - 1 - (trailing - level)


class MerkleSpine:
    """Append-only store of complete-subtree hashes; proves inclusion and consistency."""

    def __init__(self, path: Path, fd: int, leaves: int) -> None:
        self._path = path
        self._fd = fd
        self._leaves = leaves
        self._written_nodes = nodes_for(leaves)  # nodes handed to the OS
        self._pending = bytearray()  # nodes appended but not yet written
        self._frontier = self._load_frontier(leaves)
        self._chunk_start, self._chunk = 0, b""

    @classmethod
    def open(cls, path: Path) -> "MerkleSpine":
        """Open (or create) a spine; a partial trailing node (torn write) is dropped."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if size == 0:
            os.write(fd, _HEADER.pack(MAGIC, VERSION, 0))
            size = HEADER_SIZE
        _check_header(path, os.pread(fd, HEADER_SIZE, 0))
        nodes = (size - HEADER_SIZE) // HASH_SIZE
        leaves = _leaves_within(nodes)
        if nodes_for(leaves) != nodes or size != HEADER_SIZE + nodes * HASH_SIZE:
            os.ftruncate(fd, HEADER_SIZE + nodes_for(leaves) * HASH_SIZE)
        return cls(path, fd, leaves)

    @property
    def size(self) -> int:
        """Tree size: the number of leaves ever appended."""
        return self._leaves

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Add leaf hashes and every complete subtree they close (node_hash inlined: hot path)."""
        pending, frontier, n = self._pending, self._frontier, self._leaves
        sha, prefix = _sha256, NODE_PREFIX
        for leaf in leaves:
            pending += leaf
            h, m = leaf, n
            while m & 1:
                h = sha(prefix + frontier.pop() + h).digest()
                pending += h
                m >>= 1
            frontier.append(h)
            n += 1
        self._leaves = n

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def write_out(self) -> None:
        """Hand pending nodes to the OS (no fsync)."""
        if self._pending:
            write_all(self._fd, self._pending, HEADER_SIZE + self._written_nodes * HASH_SIZE)
            self._written_nodes += len(self._pending) // HASH_SIZE
            self._pending.clear()

    def sync(self) -> None:
        """Make every appended node durable."""
        self.write_out()
        os.fsync(self._fd)

    def truncate(self, leaves: int) -> None:
        """Cut the spine back to `leaves` leaves (the table rebuilds the rest on open)."""
        self.write_out()
        os.ftruncate(self._fd, HEADER_SIZE + nodes_for(leaves) * HASH_SIZE)
        self._leaves = leaves
        self._written_nodes = nodes_for(leaves)
        self._frontier = self._load_frontier(leaves)

    def close(self) -> None:
        self.write_out()
        os.close(self._fd)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all)."""
        size = self._leaves if size is None else self._check_size(size)
        if size == 0:
            return empty_root()
        if size == self._leaves:
            return self._fold_frontier()
        return self.range_hash(0, size)

    def leaf(self, index: int) -> bytes:
        return self.node(0, index)

    def node(self, level: int, index: int) -> bytes:
        """The stored hash of a complete subtree (see node_position)."""
        pos = node_position(level, index)
        if pos >= self._written_nodes:
            off = (pos - self._written_nodes) * HASH_SIZE
            return bytes(self._pending[off : off + HASH_SIZE])
        return os.pread(self._fd, HASH_SIZE, HEADER_SIZE + pos * HASH_SIZE)

    def range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]): one stored node when the range is a complete aligned subtree,
        else the RFC 6962 §2.1 split into a stored left part and a recursive right part."""
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            return self.node(n.bit_length() - 1, lo // n)
        k = split_point(n)
        return node_hash(self.range_hash(lo, lo + k), self.range_hash(lo + k, hi))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 §2.1.1 audit path for leaf `index` in the tree of `size` leaves."""
        size = self._leaves if size is None else self._check_size(size)
        return inclusion_path(index, size, self.range_hash)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """RFC 6962 §2.1.2 proof that tree `second` extends tree `first`."""
        second = self._leaves if second is None else self._check_size(second)
        return consistency_path(first, second, self.range_hash)

    def recomputed_leaves(self) -> Iterator[bytes]:
        """Yield every leaf hash in order while recomputing each interior node from its
        children; a stored node that disagrees raises CorruptStore (verify reports it)."""
        self.write_out()
        stack: list[bytes] = []
        pos = 0
        for index in range(self._leaves):
            leaf = self._stream_node(pos)
            pos += 1
            h, n, level = leaf, index, 0
            while n & 1:
                h = node_hash(stack.pop(), h)
                level += 1
                if self._stream_node(pos) != h:
                    raise CorruptStore(
                        f"spine node (level {level}, index {index >> level}) does not match "
                        "the hash of its children"
                    )
                pos += 1
                n >>= 1
            stack.append(h)
            yield leaf

    def _stream_node(self, pos: int) -> bytes:
        """Sequential node reads for recomputed_leaves, 64 KiB at a time."""
        start = self._chunk_start
        if not start <= pos < start + len(self._chunk) // HASH_SIZE:
            self._chunk_start = start = pos
            self._chunk = os.pread(self._fd, 2048 * HASH_SIZE, HEADER_SIZE + pos * HASH_SIZE)
        off = (pos - start) * HASH_SIZE
        return self._chunk[off : off + HASH_SIZE]

    def _check_size(self, size: int) -> int:
        if not 0 <= size <= self._leaves:
            raise ValueError(f"tree size {size} is outside 0..{self._leaves}")
        return size

    def _fold_frontier(self) -> bytes:
        frontier = self._frontier
        h = frontier[-1]
        for left in reversed(frontier[:-1]):
            h = node_hash(left, h)
        return h

    def _load_frontier(self, leaves: int) -> list[bytes]:
        """The complete subtrees on the right edge: one per set bit of `leaves`, largest first."""
        frontier, lo = [], 0
        for level in range(leaves.bit_length() - 1, -1, -1):
            if leaves >> level & 1:
                frontier.append(self.node(level, lo >> level))
                lo += 1 << level
        return frontier


def _leaves_within(nodes: int) -> int:
    """The largest leaf count whose spine fits in `nodes` nodes."""
    lo, hi = 0, nodes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if nodes_for(mid) <= nodes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _check_header(path: Path, raw: bytes) -> None:
    if len(raw) < HEADER_SIZE:
        raise CorruptStore(f"{path}: spine header is truncated")
    magic, version, _ = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise CorruptStore(f"{path}: not a Merkle spine (magic {magic!r})")
    if version != VERSION:
        raise UnsupportedFormat(f"{path}: spine format version {version} is not supported")
