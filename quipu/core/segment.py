"""Append-only segment files: a versioned header, then length + CRC framed records.

A segment is written only at its end, sealed with a trailer frame once it reaches
`max_segment_bytes`, then made read-only and never written again. Opening the active
segment walks its frames; a torn tail (a crash mid-write) fails its length or CRC check,
is moved to the quarantine folder and cut off, so it is never misread and never silently
destroyed. Layouts are in docs/format.md.
"""

import hashlib
import logging
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quipu.core.chain import CHAIN_TAG
from quipu.core.errors import CorruptStore, UnsupportedFormat
from quipu.core.files import fsync_dir, replace_durably, write_all
from quipu.core.merkle import LEAF_PREFIX

log = logging.getLogger(__name__)
_sha256 = hashlib.sha256

MAGIC = b"QSEG"
VERSION = 1
SUFFIX = ".qseg"
TMP_SUFFIX = ".tmp"
OFFSETS_SUFFIX = ".qoff"
OFFSETS_MAGIC = b"QOFF"
OFFSETS_VERSION = 1
_OFFSETS_HEADER = struct.Struct("<4sHHQ")  # magic, version, reserved, record count

# magic, version, header size, store id, seq, base index, created_at (µs), seed
_HEADER = struct.Struct("<4sHH16sQQQ32s")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size

_FRAME = struct.Struct("<II")  # body length, CRC-32 (zlib) of the body
KIND_RECORD = 1
KIND_SEAL = 2
_RECORD = struct.Struct("<BQ32s")  # kind, ts (µs), chain value; the payload follows
_SEAL = struct.Struct("<BQQQQ32s")  # kind, sealed_at, record count, min ts, max ts, chain head
SEAL_FRAME_SIZE = _FRAME.size + _SEAL.size
_RECORD_OVERHEAD = _FRAME.size + _RECORD.size
MAX_FRAME_BODY = 1 << 30


def segment_name(seq: int) -> str:
    return f"{seq:010d}{SUFFIX}"


@dataclass(frozen=True)
class SegmentHeader:
    store_id: bytes
    seq: int
    base_index: int  # global index (tree position) of the segment's first record
    created_at: int
    seed: bytes  # chain value the first record continues from

    def pack(self) -> bytes:
        raw = _HEADER.pack(
            MAGIC,
            VERSION,
            HEADER_SIZE,
            self.store_id,
            self.seq,
            self.base_index,
            self.created_at,
            self.seed,
        )
        return raw + _HEADER_CRC.pack(zlib.crc32(raw))

    @classmethod
    def unpack(cls, path: Path, raw: bytes) -> "SegmentHeader":
        if len(raw) < HEADER_SIZE:
            raise CorruptStore(f"{path}: segment header is truncated")
        magic, version, size, store_id, seq, base, created, seed = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise CorruptStore(f"{path}: not a Quipu segment (magic {magic!r})")
        if version != VERSION or size != HEADER_SIZE:
            raise UnsupportedFormat(f"{path}: segment format version {version} is not supported")
        (crc,) = _HEADER_CRC.unpack_from(raw, _HEADER.size)
        if crc != zlib.crc32(raw[: _HEADER.size]):
            raise CorruptStore(f"{path}: segment header CRC mismatch")
        return cls(store_id, seq, base, created, seed)


@dataclass(frozen=True)
class SealInfo:
    sealed_at: int
    record_count: int
    min_ts: int
    max_ts: int
    chain_head: bytes


@dataclass(frozen=True)
class Record:
    index: int
    ts: int
    chain: bytes
    payload: bytes


@dataclass(frozen=True)
class Frame:
    """One decoded frame, or the reason the bytes at `offset` are not one."""

    offset: int
    end: int
    kind: int
    body: bytes
    problem: str | None = None


class Segment:
    """One segment file. Writable while active; sealed segments are read-only."""

    def __init__(self, path: Path, header: SegmentHeader, size: int) -> None:
        self.path = path
        self.header = header
        self.size = size  # bytes including the unwritten buffer
        self.count = 0
        self.min_ts: int | None = None
        self.max_ts: int | None = None
        self.last_chain = header.seed
        self.seal_info: SealInfo | None = None
        self._fd: int | None = None
        self._written = size
        self._pending = bytearray()
        self._offsets: array | None = None  # frame offset of each record; loaded lazily if sealed
        self._read_fd: int | None = None

    # --- opening -------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, header: SegmentHeader) -> "Segment":
        """Create an empty active segment; it appears under its name only with a complete,
        durable header (temp file + fsync + rename), so a crash never leaves a headless one."""
        tmp = path.with_name(path.name + TMP_SUFFIX)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, header.pack())
        os.fsync(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)
        seg = cls(path, header, HEADER_SIZE)
        seg._fd = fd
        seg._offsets = array("I")
        return seg

    @classmethod
    def open_sealed(cls, path: Path) -> "Segment":
        """Read only the header and the seal trailer: opening a store never scans them."""
        with open(path, "rb") as f:
            header = SegmentHeader.unpack(path, f.read(HEADER_SIZE))
            size = os.fstat(f.fileno()).st_size
            seg = cls(path, header, size)
            if size >= HEADER_SIZE + SEAL_FRAME_SIZE:
                f.seek(size - SEAL_FRAME_SIZE)
                seg._apply_seal(decode_frame(f.read(SEAL_FRAME_SIZE), 0, size - SEAL_FRAME_SIZE))
        return seg

    @classmethod
    def open_active(cls, path: Path, quarantine: Path, leaves: list[bytes]) -> "Segment":
        """Walk every frame; cut a torn tail off (into `quarantine`) and open for append.

        The leaf hash of every record is added to `leaves`: the table rebuilds the spine's
        unsealed tail from them, since only the records themselves are fsynced. A segment
        that turns out to be sealed (a crash right after sealing) stays read-only.
        """
        data = path.read_bytes()
        seg = cls(path, SegmentHeader.unpack(path, data), HEADER_SIZE)
        seg._offsets = array("I")
        torn = None
        for frame in iter_frames(data):
            if frame.problem:
                torn = frame
                break
            if frame.kind == KIND_RECORD:
                seg._apply_record(frame.body)
                seg._offsets.append(frame.offset)
                leaves.append(_sha256(LEAF_PREFIX + frame.body[_RECORD.size :]).digest())
            elif frame.kind == KIND_SEAL:
                seg._apply_seal(frame)
            seg.size = seg._written = frame.end
        if seg.seal_info is None:
            seg._fd = os.open(path, os.O_RDWR)
            if torn is not None:
                _quarantine_tail(path, seg._fd, data, torn, quarantine)
        return seg

    def _apply_record(self, body: bytes) -> None:
        _, ts, chain = _RECORD.unpack_from(body)
        self.count += 1
        self.last_chain = chain
        self.min_ts = ts if self.min_ts is None else min(self.min_ts, ts)
        self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)

    def _apply_seal(self, frame: "Frame") -> None:
        if frame.problem is None and frame.kind == KIND_SEAL:
            _, sealed_at, count, min_ts, max_ts, head = _SEAL.unpack(frame.body)
            self.seal_info = SealInfo(sealed_at, count, min_ts, max_ts, head)
            self.count, self.last_chain = count, head
            self.min_ts, self.max_ts = min_ts, max_ts

    # --- writing -------------------------------------------------------------------

    def append_records(self, stamped: Iterator[tuple[int, bytes]], limit: int, leaves: list[bytes]) -> None:
        """Frame (ts, payload) records into the buffer until `stamped` is exhausted or the
        segment reaches `limit` bytes; each record's leaf hash is added to `leaves`.

        This is the write hot path, so the leaf hash (merkle.leaf_hash) and the chain step
        (chain.chain_next) are inlined; verify_integrity recomputes both with those functions.
        """
        sha, crc32, pack_record, pack_frame = _sha256, zlib.crc32, _RECORD.pack, _FRAME.pack
        pending, head, size = self._pending, self.last_chain, self.size
        stamp, count, note_offset = CHAIN_TAG, 0, self._offsets.append
        lo, hi = self.min_ts, self.max_ts
        for ts, payload in stamped:
            leaf = sha(LEAF_PREFIX + payload).digest()
            head = sha(stamp + head + ts.to_bytes(8, "little") + leaf).digest()
            prefix = pack_record(KIND_RECORD, ts, head)
            pending += pack_frame(len(prefix) + len(payload), crc32(payload, crc32(prefix)))
            pending += prefix
            pending += payload
            leaves.append(leaf)
            note_offset(size)
            size += _RECORD_OVERHEAD + len(payload)
            count += 1
            if lo is None or ts < lo:
                lo = ts
            if hi is None or ts > hi:
                hi = ts
            if size >= limit:
                break
        if count:
            self.size, self.last_chain, self.count = size, head, self.count + count
            self.min_ts, self.max_ts = lo, hi

    def write_out(self) -> None:
        if self._pending:
            if self._fd is None:
                raise CorruptStore(f"{self.path} is sealed or closed; it is never written again")
            write_all(self._fd, self._pending, self._written)
            self._written += len(self._pending)
            self._pending.clear()

    def sync(self) -> None:
        self.write_out()
        os.fsync(self._fd)

    def seal(self, sealed_at: int) -> SealInfo:
        """Append the trailer, make it durable, and close the file for good."""
        info = SealInfo(sealed_at, self.count, self.min_ts or 0, self.max_ts or 0, self.last_chain)
        body = _SEAL.pack(
            KIND_SEAL, info.sealed_at, info.record_count, info.min_ts, info.max_ts, info.chain_head
        )
        self._pending += _FRAME.pack(len(body), zlib.crc32(body)) + body
        self.size += SEAL_FRAME_SIZE
        self.sync()
        self.close()
        os.chmod(self.path, 0o444)
        self.seal_info = info
        self._write_offsets()
        return info

    def close(self) -> None:
        if self._fd is not None:
            self.write_out()
            os.close(self._fd)
            self._fd = None
        self.release_reader()

    def _reader(self) -> int:
        """A read-only fd kept open for random reads (a query reads many rows of a segment)."""
        if self._read_fd is None:
            fd = os.open(self.path, os.O_RDONLY)
            if self._read_fd is None:  # another reader thread may have won the race
                self._read_fd = fd
            else:
                os.close(fd)
        return self._read_fd

    def release_reader(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    # --- reading -------------------------------------------------------------------

    def read(self, ordinal: int) -> Record:
        """The `ordinal`-th record of this segment, by one offset lookup and two preads."""
        offsets = self._offsets if self._offsets is not None else self._load_offsets()
        if not 0 <= ordinal < self.count:
            raise IndexError(f"{self.path.name} has no record {ordinal}")
        at = offsets[ordinal]
        if at >= self._written:
            raw = bytes(self._pending[at - self._written : at - self._written + _FRAME.size])
            length = _FRAME.unpack(raw)[0]
            start = at - self._written + _FRAME.size
            body = bytes(self._pending[start : start + length])
        else:
            fd = self._fd if self._fd is not None else self._reader()
            length, _ = _FRAME.unpack(os.pread(fd, _FRAME.size, at))
            body = os.pread(fd, length, at + _FRAME.size)
        ts, chain, payload = record_fields(body)
        return Record(self.header.base_index + ordinal, ts, chain, payload)

    def _load_offsets(self) -> array:
        """Sealed segments keep their record offsets in `<seq>.qoff` (derived data: rebuilt
        by a scan when missing or unreadable)."""
        path = self.path.with_suffix(OFFSETS_SUFFIX)
        offsets = array("I")
        try:
            raw = path.read_bytes()
            magic, version, _, count = _OFFSETS_HEADER.unpack_from(raw)
            if magic == OFFSETS_MAGIC and version == OFFSETS_VERSION and count == self.count:
                offsets.frombytes(raw[_OFFSETS_HEADER.size :])
        except (OSError, struct.error, ValueError):
            offsets = array("I")
        if len(offsets) != self.count:
            offsets = array("I", (f.offset for f in self.frames() if f.kind == KIND_RECORD))
            self._offsets = offsets
            self._write_offsets()
        self._offsets = offsets
        return offsets

    def stored_offsets(self) -> array | None:
        """The offsets in `<seq>.qoff` as they are on disk (None when absent): verify compares
        them with the frames, since a wrong offsets file would make reads return wrong records."""
        path = self.path.with_suffix(OFFSETS_SUFFIX)
        if not path.exists():
            return None
        raw = path.read_bytes()
        offsets = array("I")
        offsets.frombytes(raw[_OFFSETS_HEADER.size :][: len(raw) - _OFFSETS_HEADER.size & ~3])
        return offsets

    def _write_offsets(self) -> None:
        if self._offsets is None or sys.byteorder != "little":
            return
        body = _OFFSETS_HEADER.pack(OFFSETS_MAGIC, OFFSETS_VERSION, 0, len(self._offsets))
        replace_durably(self.path.with_suffix(OFFSETS_SUFFIX), body + self._offsets.tobytes())

    def frames(self) -> Iterator[Frame]:
        """Every frame on disk (plus the unwritten buffer), stopping at the first bad one."""
        with open(self.path, "rb") as f:
            data = f.read() + bytes(self._pending)
        yield from iter_frames(data)

    def records(self) -> Iterator[Record]:
        index = self.header.base_index
        for frame in self.frames():
            if frame.problem or frame.kind != KIND_RECORD:
                return
            _, ts, chain = _RECORD.unpack_from(frame.body)
            yield Record(index, ts, chain, frame.body[_RECORD.size :])
            index += 1


def record_fields(body: bytes) -> tuple[int, bytes, bytes]:
    """(ts, chain, payload) of a record frame body."""
    _, ts, chain = _RECORD.unpack_from(body)
    return ts, chain, body[_RECORD.size :]


def seal_fields(body: bytes) -> SealInfo:
    _, sealed_at, count, min_ts, max_ts, head = _SEAL.unpack(body)
    return SealInfo(sealed_at, count, min_ts, max_ts, head)


def iter_frames(data: bytes, start: int = HEADER_SIZE) -> Iterator[Frame]:
    """Decode frames from `start` to the end of `data`; the last one may carry a problem."""
    offset, end = start, len(data)
    while offset < end:
        frame = decode_frame(data, offset, offset)
        yield frame
        if frame.problem:
            return
        offset = frame.end


def decode_frame(data: bytes, at: int, file_offset: int) -> Frame:
    """Decode the frame at data[at:]; `file_offset` is where it sits in its file."""
    if len(data) - at < _FRAME.size:
        return Frame(file_offset, file_offset, 0, b"", "torn frame header")
    length, crc = _FRAME.unpack_from(data, at)
    body_at = at + _FRAME.size
    if length == 0 or length > MAX_FRAME_BODY or body_at + length > len(data):
        return Frame(file_offset, file_offset, 0, b"", "frame length runs past the end")
    body = data[body_at : body_at + length]
    if zlib.crc32(body) != crc:
        return Frame(file_offset, file_offset, 0, b"", "frame CRC mismatch")
    kind = body[0]
    if (
        (kind == KIND_RECORD and length < _RECORD.size)
        or (kind == KIND_SEAL and length != _SEAL.size)
        or kind not in (KIND_RECORD, KIND_SEAL)
    ):
        return Frame(file_offset, file_offset, 0, b"", f"frame of unknown kind {kind}")
    return Frame(file_offset, file_offset + _FRAME.size + length, kind, body)


def _quarantine_tail(path: Path, fd: int, data: bytes, frame: Frame, quarantine: Path) -> None:
    """Keep the bytes we cannot read (never destroy evidence), then cut them off."""
    quarantine.mkdir(exist_ok=True)
    target = quarantine / f"{path.parent.name}-{path.stem}-{frame.offset}.torn"
    target.write_bytes(data[frame.offset :])
    log.warning(
        "%s: %s at offset %d; %d bytes moved to %s",
        path,
        frame.problem,
        frame.offset,
        len(data) - frame.offset,
        target,
    )
    os.ftruncate(fd, frame.offset)
    os.fsync(fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)
