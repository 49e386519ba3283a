"""A table: one append-only sequence of records with its own chain and Merkle tree.

Records live in segments (`<table>/<seq>.qseg`); the tree lives in the spine
(`<table>/spine.qspn`). A record's position in the tree is its global index, which never
changes: retention unlinks old segments but the tree size only grows. Appends are
single-writer (the lock also serialises the group-commit timer); reads of sealed segments
need no lock.
"""

import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quipu.core.chain import genesis_seed
from quipu.core.errors import BadInput, Conflict, CorruptStore, NotFound
from quipu.core.files import classify_disk_full, fsync_dir
from quipu.core.proof import ConsistencyProof, InclusionProof
from quipu.core.retention import RetentionPolicy
from quipu.core.segment import (
    SUFFIX,
    TMP_SUFFIX,
    Record,
    Segment,
    SegmentHeader,
    segment_name,
)
from quipu.core.spine import MerkleSpine
from quipu.core.sync import IntervalSync, SyncPolicy

log = logging.getLogger(__name__)

SPINE_NAME = "spine.qspn"
SPINE_WRITE_BYTES = 1 << 16  # os_managed: hand the spine to the OS in 64 KiB writes


def now_micros() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class TableConfig:
    max_segment_bytes: int = 16 << 20
    sync: SyncPolicy = field(default_factory=lambda: SyncPolicy.every_n_or_interval(1000, 0.02))
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)

    def __post_init__(self) -> None:
        if self.max_segment_bytes < 4096:
            raise BadInput(f"max_segment_bytes must be at least 4096, got {self.max_segment_bytes}")


@dataclass(frozen=True)
class TableState:
    segment_seq: int
    record_count: int
    tree_size: int
    merkle_root: bytes
    chain_head: bytes
    first_index: int


class Table:
    """Segments + hash chain + Merkle spine of one table. Built by `Table.open`."""

    def __init__(
        self,
        directory: Path,
        name: str,
        store_id: bytes,
        config: TableConfig,
        quarantine: Path,
        clock: Callable[[], int],
        on_seal: Callable[["Table"], None],
    ) -> None:
        self.directory = directory
        self.name = name
        self.store_id = store_id
        self.config = config
        self._quarantine = quarantine
        self._clock = clock
        self._on_seal = on_seal
        self._lock = threading.RLock()  # a seal checkpoints from inside append
        self._unsynced = 0
        self._closed = False
        self._scanned_base = 0
        # Runs before each fsync: a table whose records refer to another's syncs that first.
        self.before_sync: Callable[[], None] | None = None
        active_leaves: list[bytes] = []
        self._segments = self._open_segments(active_leaves)
        self._spine = MerkleSpine.open(directory / SPINE_NAME)
        self._rebuild_spine_tail(active_leaves)
        policy = config.sync
        self._sync_every = policy.n if policy.kind != "os_managed" else float("inf")
        self._os_managed = policy.kind == "os_managed"
        self._timer = (
            IntervalSync(policy.interval, self.sync_pending) if policy.kind == "every_n_or_interval" else None
        )

    # --- state ---------------------------------------------------------------------

    @property
    def tree_size(self) -> int:
        return self._spine.size

    @property
    def first_index(self) -> int:
        """Global index of the oldest retained record."""
        return self._segments[0].header.base_index

    @property
    def record_count(self) -> int:
        return self.tree_size - self.first_index

    @property
    def chain_head(self) -> bytes:
        return self._active.last_chain

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    @property
    def spine(self) -> MerkleSpine:
        return self._spine

    @property
    def _active(self) -> Segment:
        return self._segments[-1]

    def bytes_on_disk(self) -> int:
        return sum(s.size for s in self._segments)

    # --- writing -------------------------------------------------------------------

    def append(self, payload: bytes, ts: int | None = None) -> int:
        """Append one record; returns its global index (its leaf index in the tree)."""
        return self.append_many((payload,), ts).start

    def append_many(self, payloads: Iterable[bytes], ts: int | None = None) -> range:
        """Append records that share one timestamp (default: now); returns their indexes."""
        ts = self._clock() if ts is None else ts
        return self.append_stamped((ts, p) for p in payloads)

    def append_stamped(self, stamped: Iterable[tuple[int, bytes]]) -> range:
        """Append (ts, payload) records in one batch (one sync decision); returns their
        indexes. A record's ts is what retention by age and time-range skips go by."""
        with self._lock:
            if self._closed:
                raise Conflict(f"table {self.name} is closed")
            spine, limit, leaves = self._spine, self.config.max_segment_bytes, []
            start, remaining = spine.size, iter(_checked_stamps(stamped))
            while True:
                seg = self._active
                seg.append_records(remaining, limit, leaves)
                spine.extend(leaves)
                leaves.clear()
                if seg.size < limit:
                    break
                self._roll()
            count = spine.size - start
            if count:
                self._after_append(count)
            return range(start, start + count)

    def flush(self) -> None:
        """Make every record appended so far durable."""
        with self._lock:
            if not self._closed:
                self._sync()

    def sync_pending(self) -> None:
        """Sync if anything is unsynced (the group-commit timer calls this)."""
        with self._lock:
            if self._unsynced and not self._closed:
                self._sync()

    def _after_append(self, count: int) -> None:
        self._unsynced += count
        if self._unsynced >= self._sync_every:
            self._sync()
        elif self._os_managed:
            self._active.write_out()
            if self._spine.pending_bytes >= SPINE_WRITE_BYTES:
                self._spine.write_out()
        elif self._timer is not None and self._unsynced == count:
            self._timer.arm()

    def _sync(self) -> None:
        """fsync the records; the spine is only handed to the OS. The spine is derived
        from the records, and after a crash its missing tail is recomputed from the
        active segment on open, so it needs an fsync only when a segment is sealed.

        On a full disk the appended records stay buffered (their indexes are assigned)
        and StorageFull is raised; a later flush() writes them once space is back.
        """
        with classify_disk_full(f"syncing table {self.name}"):
            if self.before_sync is not None:
                self.before_sync()
            self._active.sync()
            self._spine.write_out()
        self._unsynced = 0

    def _roll(self) -> None:
        """Seal the active segment and start the next one, seeded with its chain head.

        The spine is fsynced first: once sealed, a segment's leaves are never recomputed.
        """
        with classify_disk_full(f"sealing a segment of table {self.name}"):
            self._seal_and_start_next()
        self._on_seal(self)

    def _seal_and_start_next(self) -> None:
        self._spine.sync()
        sealed = self._active
        sealed.seal(self._clock())
        self._unsynced = 0
        header = SegmentHeader(
            self.store_id, sealed.header.seq + 1, self.tree_size, self._clock(), sealed.last_chain
        )
        self._segments.append(Segment.create(self.directory / segment_name(header.seq), header))

    def state(self) -> "TableState":
        """A consistent view of the table for a checkpoint or a verify. It syncs first, so
        a signed head is never ahead of what is on disk."""
        with self._lock:
            if not self._closed:
                self._sync()
            return TableState(
                self._active.header.seq,
                self.record_count,
                self.tree_size,
                self._spine.root(),
                self.chain_head,
                self.first_index,
            )

    # --- retention -----------------------------------------------------------------

    def expired_segments(self, now: int, policy: RetentionPolicy | None = None) -> int:
        with self._lock:
            return (policy or self.config.retention).expired_prefix(self._segments, now)

    def drop_oldest(self, count: int, before_unlink: Callable[["Table"], None]) -> None:
        """Unlink the `count` oldest sealed segments (retention); never the active one.

        `before_unlink` runs once the table already describes the purged state and before
        any file goes: it signs the purge's checkpoint, so a crash in between leaves extra
        records on disk (verify says the purge is incomplete), never unaccounted-for gaps.
        """
        with self._lock:
            if not 0 <= count < len(self._segments):
                raise BadInput(f"cannot drop {count} of {len(self._segments)} segments")
            doomed, self._segments = self._segments[:count], self._segments[count:]
            before_unlink(self)
        for seg in doomed:
            seg.release_reader()
            for side in self.directory.glob(f"{seg.path.stem}.*"):  # side files share its stem
                if side != seg.path:
                    side.unlink()
            seg.path.unlink()
        if doomed:
            fsync_dir(self.directory)

    # --- proofs and reads ------------------------------------------------------------

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` records (default: the whole tree)."""
        with self._lock:
            if size is not None and not 0 <= size <= self.tree_size:
                raise BadInput(f"tree size {size} is outside 0..{self.tree_size} (table {self.name})")
            return self._spine.root(size)

    def prove_inclusion(self, index: int, tree_size: int | None = None) -> InclusionProof:
        with self._lock:
            size = self.tree_size if tree_size is None else tree_size
            if not 0 <= index < size <= self.tree_size:
                raise NotFound(f"no leaf {index} in a tree of size {size} (table {self.name})")
            return InclusionProof(
                index,
                size,
                self._spine.leaf(index),
                self._spine.inclusion_proof(index, size),
                self._spine.root(size),
            )

    def prove_consistency(self, first: int, second: int | None = None) -> ConsistencyProof:
        with self._lock:
            second = self.tree_size if second is None else second
            if not 0 < first <= second <= self.tree_size:
                raise BadInput(
                    f"consistency needs 0 < first <= second <= {self.tree_size}; "
                    f"got first={first}, second={second}"
                )
            return ConsistencyProof(
                first,
                second,
                self._spine.root(first),
                self._spine.root(second),
                self._spine.consistency_proof(first, second),
            )

    def read(self, index: int) -> Record:
        """The retained record at global `index` (NotFound once retention removed it).

        Only the active segment, whose tail may still sit in the write buffer, is read
        under the lock; sealed segments never change and are read without it.
        """
        with self._lock:
            segments = self._segments
            pos = bisect_right(segments, index, key=lambda s: s.header.base_index) - 1
            if pos < 0 or index >= self.tree_size:
                raise NotFound(f"record {index} is not retained in table {self.name}")
            seg = segments[pos]
            if seg is self._active:
                return seg.read(index - seg.header.base_index)
        return seg.read(index - seg.header.base_index)

    def records(self, start: int = 0) -> Iterator[Record]:
        """Retained records from global index `start` on, oldest first."""
        with self._lock:
            self._active.write_out()
            segments = list(self._segments)
        for i, seg in enumerate(segments):
            nxt = segments[i + 1].header.base_index if i + 1 < len(segments) else None
            if nxt is not None and nxt <= start:
                continue
            for rec in seg.records():
                if rec.index >= start:
                    yield rec

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._sync()
            for seg in self._segments:
                seg.close()
            self._spine.sync()
            self._spine.close()
            self._closed = True
        if self._timer is not None:
            self._timer.stop()

    # --- opening -------------------------------------------------------------------

    def _open_segments(self, scanned: list[bytes]) -> list[Segment]:
        """Open sealed segments by header and trailer, scan the newest one (its leaf hashes
        go to `scanned`), and start a new active segment if the newest is sealed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f"*{SUFFIX}{TMP_SUFFIX}"):
            leftover.unlink()  # a segment whose creation a crash interrupted: never used
        paths = sorted(self.directory.glob(f"*{SUFFIX}"), key=_file_seq)
        segments = [Segment.open_sealed(p) for p in paths[:-1]]
        if paths:
            last = Segment.open_active(paths[-1], self._quarantine, scanned)
            segments.append(last)
            self._scanned_base = last.header.base_index
            if last.seal_info is None:
                return segments
            # Named after the file, not the header, so a swapped file cannot collide.
            seq, base, seed = _file_seq(paths[-1]) + 1, self._scanned_base + last.count, last.last_chain
        else:
            seq, base, seed = 1, 0, genesis_seed(self.store_id, self.name)
            self._scanned_base = 0
        header = SegmentHeader(self.store_id, seq, base, self._clock(), seed)
        segments.append(Segment.create(self.directory / segment_name(seq), header))
        return segments

    def _rebuild_spine_tail(self, scanned: list[bytes]) -> None:
        """Recompute the spine from the newest segment on disk (the one scanned at open).

        Only records are fsynced between seals, so after a crash (or power loss) the spine's
        tail may be short, long or unwritten; the records are the truth.
        """
        base, spine, active_leaves = self._scanned_base, self._spine, scanned
        if spine.size < base:
            raise CorruptStore(
                f"{self.directory}: the Merkle spine ends at leaf {spine.size}, before the "
                f"active segment (leaf {base}); run verify_integrity()"
            )
        if spine.size > base + len(active_leaves):
            log.warning(
                "%s: spine has %d leaves but %d records exist; cutting the spine back",
                self.directory,
                spine.size,
                base + len(active_leaves),
            )
        spine.truncate(base)
        spine.extend(active_leaves)


def _file_seq(path: Path) -> int:
    """The sequence number a segment's file name carries (verify checks it against the header)."""
    try:
        return int(path.name.removesuffix(SUFFIX))
    except ValueError:
        raise CorruptStore(f"{path}: not a segment file name (expected {segment_name(1)})") from None


def _checked_stamps(stamped: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The whole batch, checked before any of it is written: a bad one appends nothing."""
    items = list(stamped)
    for ts, _ in items:
        if not 0 <= ts < 1 << 63:
            raise BadInput(f"record timestamp must be within 0..2^63-1 microseconds, got {ts}")
    return items
