"""The duplicate window: which Idempotency-Keys a shard has already accepted, and how far.

A client retries a write whose answer it never saw; the retry must not record the event
twice. The window remembers the latest `capacity` keys per (tenant, key) and what became of
each: queued (accepted, not yet written), parked (in the dead-letter queue) or recorded (in
the store). Bounded on purpose: an unbounded map is a memory leak with a slow fuse, and a
retry normally comes within seconds, not after 100,000 newer keys.

The window is memory only. `rebuild` restores it on start from what is on disk: the `k` of
the store's latest rows (recorded) and the keys parked in the DLQ (parked). That is what
makes a retry after a restart still a duplicate, and lets a redrive skip an entry the store
already holds.
"""

import threading
from collections import OrderedDict
from enum import Enum

from quipu.core.audit_store import AuditStore
from quipu.core.errors import BadInput, CorruptStore
from quipu.shard.dlq import DeadLetterQueue

Key = tuple[str | None, str]


class KeyState(Enum):
    QUEUED = "queued"
    PARKED = "parked"
    RECORDED = "recorded"


class IdempotencyWindow:
    """A bounded, thread-safe map (tenant, key) -> KeyState; the oldest insertion goes first.

    Insertion order rather than last use: a key that keeps being retried must not stay in
    the window forever while newer, never-retried keys are pushed out.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise BadInput(f"idempotency_window must be at least 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._keys: OrderedDict[Key, KeyState] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def claim(self, tenant: str | None, key: str) -> bool:
        """True if the key is new (now QUEUED); False if it is already known: a duplicate.
        One call under one lock, so two racing requests with one key cannot both win."""
        with self._lock:
            if (tenant, key) in self._keys:
                return False
            self._put((tenant, key), KeyState.QUEUED)
            return True

    def mark(self, tenant: str | None, key: str, state: KeyState) -> None:
        """Record what became of a key (re-adding it if it was pushed out meanwhile)."""
        with self._lock:
            if (tenant, key) in self._keys:
                self._keys[(tenant, key)] = state
            else:
                self._put((tenant, key), state)

    def forget(self, tenant: str | None, key: str) -> None:
        """Drop a key whose event was refused or lost, so the client's retry can record it."""
        with self._lock:
            self._keys.pop((tenant, key), None)

    def state(self, tenant: str | None, key: str) -> KeyState | None:
        with self._lock:
            return self._keys.get((tenant, key))

    def rebuild(self, store: AuditStore, dlq: DeadLetterQueue) -> None:
        """Refill from disk: parked keys first, then the store's, so a key that is in both
        (a crash between a redrive's store flush and its DLQ rewrite) ends up RECORDED."""
        with self._lock:
            self._keys.clear()
        for path in dlq.batches():
            try:
                entries = dlq.load(path)
            except CorruptStore:
                dlq.quarantine(path)
                continue
            for entry in entries:
                if entry.event.idempotency_key is not None:
                    self.mark(entry.event.tenant, entry.event.idempotency_key, KeyState.PARKED)
        for tenant, key in store.recent_idempotency_keys(self.capacity):
            self.mark(tenant, key, KeyState.RECORDED)

    def _put(self, item: Key, state: KeyState) -> None:
        self._keys[item] = state
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
