"""A batch as the front sees it: items with their Idempotency-Keys (assigned where absent),
and the per-event results put back in the caller's order whatever shard answered them.

The front does not judge events: an item that is not an object, or whose key is malformed,
goes to the shard unchanged and the shard's `rejected` answer is the one the caller gets.
The front only needs each valid key, to ask a tenant's previous owners about it.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

from quipu.core.errors import BadInput
from quipu.core.event import validate_idempotency_key
from quipu.shard.batch import BATCH_KEY_FIELD
from quipu.shard.http_edge import RETRY_AFTER_SECONDS, json_response

STATUSES = ("queued", "duplicate", "rejected", "retry")


def new_key() -> str:
    """The key a front gives an event that came without one: a UUIDv4, as v1 recommends."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class KeyedBatch:
    items: list  # as parsed, with `idempotency_key` added where it was absent
    keys: list[str | None]  # each item's key, None where the shard will reject the item anyway

    @classmethod
    def of(cls, items: Sequence[object]) -> "KeyedBatch":
        keyed: list = []
        keys: list[str | None] = []
        for item in items:
            if isinstance(item, dict) and item.get(BATCH_KEY_FIELD) is None:
                item = {**item, BATCH_KEY_FIELD: new_key()}
            keyed.append(item)
            keys.append(_valid_key(item))
        return cls(keyed, keys)

    def body(self, indices: Iterable[int]) -> list:
        return [self.items[i] for i in indices]


def _valid_key(item: object) -> str | None:
    if not isinstance(item, dict):
        return None
    try:
        return validate_idempotency_key(item[BATCH_KEY_FIELD], BATCH_KEY_FIELD)
    except BadInput:
        return None


class BatchResults:
    """One result per event, by its index in the caller's batch, each naming the event's
    key: a key the front assigned is the caller's only way to retry that event safely."""

    def __init__(self, keys: Sequence[str | None]) -> None:
        self._keys = keys
        self._results: list[dict | None] = [None] * len(keys)

    def fill(self, indices: Sequence[int], shard_results: Sequence[dict]) -> None:
        """The shard's results for the events `indices` (sent in that order), re-indexed."""
        for i, result in zip(indices, shard_results, strict=True):
            self._results[i] = {"index": i, **{k: v for k, v in result.items() if k != "index"}}

    def mark(self, indices: Iterable[int], status: str, error: str | None = None) -> None:
        for i in indices:
            self._results[i] = {"index": i, "status": status} | ({"error": error} if error else {})

    def response(self) -> web.Response:
        """202 with every result, or 503 + Retry-After when every event is to be retried
        (as the shard answers): a client that looks only at the status still backs off."""
        results = [r if r is not None else _lost(i) for i, r in enumerate(self._results)]
        for result, key in zip(results, self._keys, strict=True):
            if key is not None:
                result[BATCH_KEY_FIELD] = key
        counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
        if counts["retry"] == len(results):
            return json_response({"results": results, **counts}, 503, {"Retry-After": RETRY_AFTER_SECONDS})
        return json_response({"results": results, **counts}, 202)


def _lost(index: int) -> dict:
    """An event no shard answered for (never expected): retried, never silently dropped."""
    return {"index": index, "status": "retry", "error": "no shard answered for this event; retry it"}
