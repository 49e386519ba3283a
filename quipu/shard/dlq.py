"""The dead-letter queue: accepted events the store could not take, kept on disk until a
redrive records them.

An event parks when it cannot be written as it is (an undefined actor or target type, a
full disk, a store error that outlived its retries). Once accepted, an event is never
dropped silently: it is in the store, here, or handed to the pipeline's fallback hook.

One file per parked batch, `<dlq>/<seq, 16 digits>.dlq`, written by temp file + fsync +
rename + directory fsync, so a crash leaves a whole batch or none (format: docs/format.md,
"Dead-letter queue"). A redrive rewrites a file with the entries that are still bad, or
removes it. A file that cannot be read is moved to `<dlq>/quarantine/` and counted, never
deleted: it is evidence, and one bad file must not stop the good ones from redriving.
The store's LOCK guards the directory, so one process writes it; the lock here orders the
writer thread against readers of `count()`.
"""

import contextlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from quipu.core.errors import BadInput, CorruptStore, UnsupportedFormat
from quipu.core.event import AuditEvent, validate_micros
from quipu.core.files import classify_disk_full, fsync_dir, replace_durably

VERSION = 1
SUFFIX = ".dlq"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class ParkedEvent:
    """An event waiting in the DLQ. Its occurred_at is always set (the accept time when the
    client gave none), so a redrive records the time the event happened, not the redrive's."""

    event: AuditEvent
    reason: str  # why it parked; an error message, which never holds event content
    parked_at: int  # µs since the epoch

    def __post_init__(self) -> None:
        if self.event.occurred_at is None:
            raise BadInput("a parked event needs its occurred_at (stamp the accept time first)")

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event.to_json(),
            "tenant": self.event.tenant,
            "key": self.event.idempotency_key,
            "reason": self.reason,
            "parked_at": self.parked_at,
        }

    @classmethod
    def from_json(cls, obj: object) -> "ParkedEvent":
        """BadInput when the entry is not a parked event; the caller names the file."""
        if not isinstance(obj, dict) or not isinstance(obj.get("reason"), str):
            raise BadInput("expected an object with event, tenant, key, reason, parked_at")
        event = AuditEvent.from_json(obj.get("event"), obj.get("tenant"))
        if obj.get("key") is not None:
            event = replace(event, idempotency_key=obj["key"])
        return cls(event, obj["reason"], validate_micros(obj.get("parked_at"), "parked_at"))


def encode(entries: list[ParkedEvent]) -> bytes:
    return orjson.dumps({"v": VERSION, "entries": [e.to_json() for e in entries]})


class DeadLetterQueue:
    """`DeadLetterQueue(<store root>/dlq)`: opens (creating) the directory, counts what is
    parked and quarantines the files it cannot read."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._quarantine = self.directory / QUARANTINE
        self._lock = threading.Lock()
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)
        for tmp in self.directory.glob(f"*{SUFFIX}.*.tmp"):  # a park torn by a crash: never renamed
            tmp.unlink()
        quarantined = sorted(self._quarantine.glob(f"*{SUFFIX}")) if self._quarantine.is_dir() else []
        self.quarantined = len(quarantined)  # files in quarantine/, across restarts
        self._sizes: dict[str, int] = {}  # file name -> entries it holds
        seqs = [_seq(p) for p in (*quarantined, *self.batches())]
        # Past quarantined names too: a new batch must never take (and later overwrite) one.
        self._next_seq = max((s for s in seqs if s is not None), default=0) + 1
        for path in self.batches():
            try:
                self._sizes[path.name] = len(self.load(path))
            except CorruptStore:
                self.quarantine(path)

    def count(self) -> int:
        """Events parked (in readable files)."""
        with self._lock:
            return sum(self._sizes.values())

    def batches(self) -> list[Path]:
        """The parked batch files, oldest first."""
        return sorted(p for p in self.directory.glob(f"*{SUFFIX}") if _seq(p) is not None)

    def park(self, entries: list[ParkedEvent]) -> None:
        """Write one batch durably; once this returns it survives a crash.

        StorageFull on ENOSPC (the caller falls back), OSError for any other failure."""
        if not entries:
            return
        with self._lock:
            path = self.directory / f"{self._next_seq:016d}{SUFFIX}"
            self._write(path, entries, "parking events in the dead-letter queue")
            self._next_seq += 1
            self._sizes[path.name] = len(entries)

    def load(self, path: Path) -> list[ParkedEvent]:
        """The entries of one batch file; CorruptStore when it cannot be read as version 1."""
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as err:
            raise CorruptStore(
                f"dead-letter file {path.name} cannot be read as JSON; quarantine it for inspection"
            ) from err
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            version = doc.get("v") if isinstance(doc, dict) else None
            raise UnsupportedFormat(
                f"dead-letter file {path.name} has format version {version!r}; this release reads "
                f"version {VERSION} only"
            )
        if not isinstance(doc.get("entries"), list):
            raise CorruptStore(f"dead-letter file {path.name} has no entries list")
        out = []
        for i, entry in enumerate(doc["entries"]):
            try:
                out.append(ParkedEvent.from_json(entry))
            except BadInput:
                # The BadInput text may quote the bad value; the file name and index suffice.
                raise CorruptStore(
                    f"dead-letter file {path.name}: entry {i} is not a valid parked event"
                ) from None
        return out

    def quarantine(self, path: Path) -> None:
        """Move an unreadable batch aside, out of every redrive, and count it."""
        with self._lock:
            self._quarantine.mkdir(exist_ok=True)
            os.replace(path, self._quarantine / path.name)
            fsync_dir(self._quarantine)
            fsync_dir(self.directory)
            self._sizes.pop(path.name, None)
            self.quarantined += 1

    def replace(self, path: Path, remaining: list[ParkedEvent]) -> None:
        """After a redrive: keep the entries still parked, or remove the file when none are.
        Called only once the redriven rows are durable in the store."""
        with self._lock:
            if remaining:
                self._write(path, remaining, "rewriting a dead-letter file")
                self._sizes[path.name] = len(remaining)
            else:
                path.unlink(missing_ok=True)
                fsync_dir(self.directory)
                self._sizes.pop(path.name, None)

    def _write(self, path: Path, entries: list[ParkedEvent], what: str) -> None:
        try:
            with classify_disk_full(what):
                replace_durably(path, encode(entries))
        except BaseException:
            # A temp file left by a failed write only takes space (on a full disk, the space).
            for tmp in self.directory.glob(f"{path.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise


def _seq(path: Path) -> int | None:
    stem = path.name.removesuffix(SUFFIX)
    return int(stem) if len(stem) == 16 and stem.isdigit() else None
