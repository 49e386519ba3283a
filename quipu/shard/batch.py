"""The body of `POST /v1/logs/batch`: a JSON array or NDJSON of AppendRequests, each
optionally with its own `idempotency_key`.

Shared by the shard (which validates every event) and the ingest front (which only splits
a batch per owning shard and assigns missing keys): both must read one body the same way,
or a batch the front accepted could be one the shard reads differently.
"""

from quipu.core.errors import BadInput
from quipu.shard.http_edge import parse_json

BATCH_KEY_FIELD = "idempotency_key"
MAX_BATCH_EVENTS = 10_000


def parse_batch(raw: bytes) -> list:
    """The batch's items, unvalidated: a JSON array when the body starts with `[`, else one
    JSON value per non-blank line. BadInput for bad JSON, an empty batch or too many items."""
    if raw.lstrip().startswith(b"["):
        items = parse_json(raw, "request body")
    else:
        lines = [line for line in raw.splitlines() if line.strip()]
        items = [parse_json(line, f"NDJSON line {n + 1}") for n, line in enumerate(lines)]
    if not isinstance(items, list) or not items:
        raise BadInput("a batch is a non-empty JSON array or NDJSON of events")
    if len(items) > MAX_BATCH_EVENTS:
        raise BadInput(f"a batch holds at most {MAX_BATCH_EVENTS} events; split it")
    return items
