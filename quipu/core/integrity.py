"""verify_integrity(): re-derive everything a tamperer would have to forge, report the first break.

Per table, in order: every segment's identity and place (store id, sequence, first index,
seed continuing the previous segment), every frame's CRC, every record's chain value, every
record's leaf against the Merkle spine, every spine node against its children; then every
checkpoint's signature, its Merkle root and chain head, and that the latest checkpoint's
head and record count still hold. A break is a result (`ok: False`), not an exception.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from quipu.core.chain import chain_next, genesis_seed
from quipu.core.checkpoint import Checkpoint, CheckpointEntry, RekeyEvent
from quipu.core.errors import CorruptStore
from quipu.core.keyring import KeyRing
from quipu.core.merkle import leaf_hash
from quipu.core.segment import KIND_SEAL, Segment, record_fields, seal_fields, segment_name
from quipu.core.table import Table


@dataclass
class IntegrityReport:
    ok: bool = True
    segments_checked: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "segments_checked": self.segments_checked,
            "records": self.records,
            "problems": list(self.problems),
        }


def verify_tables(
    tables: Sequence[Table], entries: Sequence[CheckpointEntry], keys: KeyRing
) -> IntegrityReport:
    report = IntegrityReport()
    for entry in entries:
        if entry.problem:
            report.problem(entry.problem)
    for table in tables:
        check = _TableCheck(table, report)
        cps = [
            (e.line_no, e.checkpoint) for e in entries if e.checkpoint and e.checkpoint.table == table.name
        ]
        rekeys = [(e.line_no, e.rekey) for e in entries if e.rekey and e.rekey.table == table.name]
        if rekeys:
            # The table was rewritten by an audited re-key: what came before it can only be
            # checked for its signatures; the re-key event must match the table now.
            line, event = rekeys[-1]
            for old_line, cp in (c for c in cps if c[0] < line):
                check.signature(f"checkpoint (checkpoints.log line {old_line})", cp, keys)
            check.rekey(line, event, keys)
            cps = [c for c in cps if c[0] > line]
        check.run(cps, keys)
    return report


class _TableCheck:
    def __init__(self, table: Table, report: IntegrityReport) -> None:
        self.table = table
        self.report = report
        self.name = table.name
        self.chain_at: dict[int, bytes] = {}  # index -> chain value, for checkpoint heads
        self.seed_at: dict[int, bytes] = {}  # segment base index -> seed

    def problem(self, text: str) -> None:
        self.report.problem(f"{self.name}: {text}")

    def run(self, checkpoints: list[tuple[int, Checkpoint]], keys: KeyRing) -> None:
        state = self.table.state()
        want = {cp.tree_size - 1 for _, cp in checkpoints}
        leaves = self.table.spine.recomputed_leaves()
        try:
            self._check_segments(self.table.segments, leaves, want, state.tree_size)
            for _ in leaves:  # finish recomputing interior nodes past the last record
                pass
        except CorruptStore as err:
            self.problem(f"Merkle spine: {err}")
        self._check_checkpoints(checkpoints, keys, state.tree_size, state.first_index)

    def _check_segments(
        self, segments: list[Segment], leaves: Iterator[bytes], want: set[int], tree_size: int
    ) -> None:
        first = segments[0].header.base_index
        for _ in range(first):  # purged records: their leaves stay in the spine
            next(leaves, None)
        index = first
        expected_seed = genesis_seed(self.table.store_id, self.name) if first == 0 else None
        prev_seq = None
        for pos, seg in enumerate(segments):
            self.report.segments_checked += 1
            h = seg.header
            where = seg.path.name
            if h.store_id != self.table.store_id:
                return self.problem(f"segment {where} belongs to another store")
            if where != segment_name(h.seq):
                return self.problem(f"segment {where} holds sequence {h.seq} (segments swapped or renamed)")
            if prev_seq is not None and h.seq != prev_seq + 1:
                return self.problem(f"segment {where} follows sequence {prev_seq}: a segment was removed")
            if h.base_index != index:
                return self.problem(
                    f"segment {where} starts at record {h.base_index}, expected {index} "
                    "(records missing or reordered)"
                )
            if expected_seed is not None and h.seed != expected_seed:
                return self.problem(
                    f"segment {where}: seed does not continue the previous segment's chain "
                    "(segment removed, reordered or replaced)"
                )
            self.seed_at[index] = h.seed
            last = pos == len(segments) - 1
            head = self._check_frames(seg, leaves, want, last)
            if head is None:
                return None
            index, expected_seed, prev_seq = h.base_index + seg.count, head, h.seq
        if index != tree_size:
            self.problem(f"the segments hold records up to {index} but the Merkle tree has {tree_size}")
        return None

    def _check_frames(
        self, seg: Segment, leaves: Iterator[bytes], want: set[int], last: bool
    ) -> bytes | None:
        """Walk one segment; returns its chain head, or None after reporting a break."""
        where, head, index, sealed = seg.path.name, seg.header.seed, seg.header.base_index, None
        offsets = []
        for frame in seg.frames():
            if frame.problem:
                return self.problem(f"segment {where}: {frame.problem} at offset {frame.offset}")
            if sealed is not None:
                return self.problem(f"segment {where}: data after the seal at offset {frame.offset}")
            if frame.kind == KIND_SEAL:
                sealed = seal_fields(frame.body)
                if sealed.record_count != index - seg.header.base_index or sealed.chain_head != head:
                    return self.problem(f"segment {where}: seal does not match its records")
                continue
            offsets.append(frame.offset)
            ts, chain, payload = record_fields(frame.body)
            leaf = leaf_hash(payload)
            if chain != chain_next(head, ts, leaf):
                return self.problem(f"record {index} (segment {where}): chain value mismatch (record edited)")
            if next(leaves, None) != leaf:
                return self.problem(f"record {index} (segment {where}): leaf differs from the Merkle spine")
            if index in want:
                self.chain_at[index] = chain
            head = chain
            index += 1
            self.report.records += 1
        if not last and sealed is None:
            return self.problem(f"segment {where} is not sealed but is not the newest")
        stored = seg.stored_offsets() if sealed is not None else None
        if stored is not None and list(stored) != offsets:
            self.problem(f"segment {where}: its offsets file does not match it (delete the .qoff to rebuild)")
        return head

    def signature(self, tag: str, signed: Checkpoint | RekeyEvent, keys: KeyRing) -> None:
        public = keys.rsa_public(signed.key_version)
        if public is None:
            self.problem(f"{tag}: key version {signed.key_version} is not in the key ring")
        elif not signed.signature_valid(public):
            self.problem(f"{tag}: signature does not verify (edited, or signed by another key)")

    def rekey(self, line: int, event: RekeyEvent, keys: KeyRing) -> None:
        tag = f"re-key event (checkpoints.log line {line})"
        self.signature(tag, event, keys)
        spine = self.table.spine
        if event.new_tree_size > spine.size or spine.root(event.new_tree_size) != event.new_root:
            self.problem(f"{tag}: the table no longer matches the tree the re-key produced (rewritten)")

    def _check_checkpoints(
        self, checkpoints: list[tuple[int, Checkpoint]], keys: KeyRing, tree_size: int, first: int
    ) -> None:
        spine = self.table.spine
        prev_size = 0
        for line, cp in checkpoints:
            tag = f"checkpoint (checkpoints.log line {line})"
            self.signature(tag, cp, keys)
            if cp.tree_size < prev_size:
                self.problem(f"{tag}: tree size went back from {prev_size} to {cp.tree_size}")
            prev_size = max(prev_size, cp.tree_size)
            if cp.tree_size > tree_size:
                self.problem(f"{tag}: covers {cp.tree_size} records but the tree has {tree_size} (truncated)")
                continue
            if cp.tree_size and spine.root(cp.tree_size) != cp.merkle_root:
                self.problem(f"{tag}: Merkle root at size {cp.tree_size} differs (log rewritten)")
            seen = self.chain_at.get(cp.tree_size - 1)
            if seen is not None and seen != cp.chain_head:
                self.problem(f"{tag}: chain head differs from the record it covers (chain rewritten)")
        if checkpoints:
            self._check_latest(checkpoints[-1][1], tree_size, first)

    def _check_latest(self, cp: Checkpoint, tree_size: int, first: int) -> None:
        """Every count-reducing operation checkpoints, so the latest one never depends on
        purged data: its head must still be on disk and the record count must add up."""
        if cp.tree_size > tree_size:
            return
        head = self.chain_at.get(cp.tree_size - 1) if cp.record_count else self.seed_at.get(cp.tree_size)
        if head != cp.chain_head:
            self.problem(
                f"latest checkpoint head (record {cp.tree_size - 1}) is missing from the chain "
                "(truncated or rewritten)"
            )
        cp_first = cp.tree_size - cp.record_count
        if first > cp_first:
            self.problem(
                f"records {cp_first}..{first - 1} were removed after the latest checkpoint "
                "(segments deleted outside retention)"
            )
        elif first < cp_first:
            self.problem(
                f"a retention purge is incomplete: records before {cp_first} are still on disk; "
                "run run_retention()"
            )
