"""A store directory: the lock, its tables, the checkpoints, retention and verification.

Layout under the root (docs/format.md): `LOCK`, `STORE` (identity), one folder per table,
`checkpoints.log`, `quarantine/` (bytes cut from torn tails, kept as evidence).
"""

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import orjson

from quipu.core.checkpoint import LOG_NAME, AnchorHook, Checkpoint, CheckpointLog, RekeyEvent
from quipu.core.errors import BadInput, CorruptStore, NotFound, UnsupportedFormat
from quipu.core.files import fsync_dir, replace_durably
from quipu.core.integrity import IntegrityReport, verify_tables
from quipu.core.keyring import KeyRing
from quipu.core.lock import StoreLock
from quipu.core.table import Table, TableConfig, now_micros

log = logging.getLogger(__name__)

STORE_NAME = "STORE"
STORE_VERSION = 1
QUARANTINE_NAME = "quarantine"
REBUILDING, REPLACED = ".rebuilding", ".replaced"  # suffixes of a table swap in progress
DEFAULT_TABLE = "logs"


class Ledger:
    """Open with `Ledger.open(root, ...)`; one process holds a root at a time."""

    def __init__(
        self,
        root: Path,
        lock: StoreLock,
        store_id: bytes,
        keys: KeyRing,
        anchor: AnchorHook | None,
        clock: Callable[[], int],
    ) -> None:
        self.root = root
        self.store_id = store_id
        self._lock = lock
        self._keys = keys
        self._anchor = anchor
        self._clock = clock
        self._checkpoints = CheckpointLog(root / LOG_NAME)
        self._tables: dict[str, Table] = {}

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        tables: Mapping[str, TableConfig] | None = None,
        *,
        keys: KeyRing | None = None,
        anchor: AnchorHook | None = None,
        clock: Callable[[], int] = now_micros,
    ) -> "Ledger":
        """Open or create the store at `root` with the named tables (default: `logs`)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        lock = StoreLock(root)
        ledger = None
        try:
            ledger = cls(root, lock, _store_id(root, clock), keys or KeyRing(), anchor, clock)
            for name, config in (tables or {DEFAULT_TABLE: TableConfig()}).items():
                ledger._open_table(name, config)
        except BaseException:
            if ledger is not None:
                ledger.close()
            else:
                lock.release()
            raise
        return ledger

    def _open_table(self, name: str, config: TableConfig) -> None:
        if not name.isidentifier():
            raise BadInput(f"table name {name!r} must be a plain identifier")
        _finish_rebuild(self.root, name)
        self._tables[name] = self._table_at(self.root / name, name, config, self._checkpoint_on_seal)

    def _table_at(
        self, directory: Path, name: str, config: TableConfig, on_seal: Callable[[Table], None]
    ) -> Table:
        return Table(
            directory, name, self.store_id, config, self.root / QUARANTINE_NAME, self._clock, on_seal
        )

    def rebuild_table(self, name: str, records: Iterable[tuple[int, bytes]]) -> tuple[int, bytes]:
        """Replace a table by a new one holding `records` (the offline re-key); returns the
        old (tree size, root) for the signed re-key event that makes verify accept it.

        The new table is built beside the old one, then the directories are swapped and the
        old one deleted, all under the store lock; a crash at any step is finished or undone
        on the next open (`_finish_rebuild`).
        """
        old = self.table(name)
        old_size, old_root, config = old.tree_size, old.root(), old.config
        building, replaced = self.root / f"{name}{REBUILDING}", self.root / f"{name}{REPLACED}"
        shutil.rmtree(building, ignore_errors=True)
        fresh = self._table_at(building, name, config, lambda _table: None)
        fresh.append_stamped(records)
        fresh.close()
        old.close()
        os.rename(self.root / name, replaced)
        os.rename(building, self.root / name)
        fsync_dir(self.root)
        shutil.rmtree(replaced)
        self._tables[name] = self._table_at(self.root / name, name, config, self._checkpoint_on_seal)
        return old_size, old_root

    def record_rekey(self, table: str, old_size: int, old_root: bytes) -> RekeyEvent:
        """Sign and log the re-key of `table`, then checkpoint it under the new key."""
        key = self._keys.signing_key()
        if key is None:
            raise BadInput("a re-key needs the new RSA private key to sign its event")
        current = self.table(table)
        event = RekeyEvent(
            table, self._clock(), old_size, old_root, current.tree_size, current.root(), key.version
        ).signed_with(key)
        self._checkpoints.append(event)
        self._sign_checkpoint(current)
        return event

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def table(self, name: str = DEFAULT_TABLE) -> Table:
        try:
            return self._tables[name]
        except KeyError:
            raise NotFound(f"no table {name!r} in store {self.root}") from None

    @property
    def tables(self) -> dict[str, Table]:
        return dict(self._tables)

    # --- convenience for the default table -----------------------------------------

    def append(self, payload: bytes, ts: int | None = None) -> int:
        return self.table().append(payload, ts)

    def flush(self) -> None:
        for table in self._tables.values():
            table.flush()

    # --- checkpoints ---------------------------------------------------------------

    def checkpoint(self, table: str = DEFAULT_TABLE) -> Checkpoint | None:
        """Sign and append a checkpoint of `table` now; None without a private key."""
        return self._sign_checkpoint(self.table(table))

    def _checkpoint_on_seal(self, table: Table) -> None:
        self._sign_checkpoint(table)

    def _sign_checkpoint(self, table: Table) -> Checkpoint | None:
        key = self._keys.signing_key()
        if key is None:
            return None
        state = table.state()
        checkpoint = Checkpoint(
            table.name,
            self._clock(),
            state.segment_seq,
            state.record_count,
            state.tree_size,
            state.merkle_root,
            state.chain_head,
            key.version,
        ).signed_with(key)
        self._checkpoints.append(checkpoint)
        self._notify_anchor(checkpoint)
        return checkpoint

    def _notify_anchor(self, checkpoint: Checkpoint) -> None:
        """Anchoring must never cost a write: its failures are logged, not raised."""
        if self._anchor is None:
            return
        try:
            self._anchor(checkpoint)
        except Exception:
            log.exception("anchor hook failed for checkpoint of %s", checkpoint.table)

    # --- retention -----------------------------------------------------------------

    def run_retention(self, now: int | None = None) -> dict[str, int]:
        """Unlink expired sealed segments of every table; returns how many went per table."""
        now = self._clock() if now is None else now
        dropped = {}
        for name, table in self._tables.items():
            count = table.expired_segments(now)
            if count:
                table.drop_oldest(count, self._sign_checkpoint)
                log.info("retention: %s dropped %d sealed segments", name, count)
            dropped[name] = count
        return dropped

    # --- verification --------------------------------------------------------------

    def verify_integrity(self) -> IntegrityReport:
        """Re-check CRCs, chains, seeds, Merkle spines and every checkpoint."""
        return verify_tables(list(self._tables.values()), self._checkpoints.entries(), self._keys)

    def close(self) -> None:
        for table in self._tables.values():
            table.close()
        self._lock.release()


def _finish_rebuild(root: Path, name: str) -> None:
    """Complete or undo a table swap a crash interrupted (see Ledger.rebuild_table)."""
    replaced, building = root / f"{name}{REPLACED}", root / f"{name}{REBUILDING}"
    if replaced.exists():
        if (root / name).exists():
            shutil.rmtree(replaced)  # the swap happened: the old table only has to go
        else:
            os.rename(replaced, root / name)  # the swap did not happen: keep the old table
    shutil.rmtree(building, ignore_errors=True)  # a half-built table is never used


def _store_id(root: Path, clock: Callable[[], int]) -> bytes:
    """The store's identity, created once: it seeds every table's chain."""
    path = root / STORE_NAME
    if not path.exists():
        if any(p.name != "LOCK" for p in root.iterdir()):
            raise CorruptStore(f"{root}: {STORE_NAME} is missing from a non-empty store")
        store_id = secrets.token_bytes(16)
        body = {"v": STORE_VERSION, "store_id": store_id.hex(), "created_at": clock()}
        replace_durably(path, orjson.dumps(body) + b"\n")
        return store_id
    try:
        body = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as err:
        raise CorruptStore(f"{path} is not readable JSON: {err}") from err
    if body.get("v") != STORE_VERSION:
        raise UnsupportedFormat(f"{path}: store format version {body.get('v')} is not supported")
    return bytes.fromhex(body["store_id"])
