"""A child process for crash tests: appends verifiable records until it is killed.

    python crash_writer.py ROOT [--pem PATH] [--segment-bytes N] [--sync-n N]
                           [--sync-seconds S] [--seed N] [--limit N] [--flush-at-end-only]

It opens the store, prints `open <last seq>` (-1 for an empty store), then appends records
whose payloads carry their sequence number and a checksum, continuing from the last record
on disk. Every so often it calls flush() and, once flush() has returned, prints
`acked <seq>`: every record up to <seq> is durable. After `--limit` records it flushes,
prints `acked` and `done`, and waits (still holding the store) to be killed. Output is
line-buffered and the parent reads it after a SIGKILL, so a line only counts once its
newline is there.

Not collected by pytest (no test_ prefix); the tests import `payload`/`parse_payload`.
"""

import argparse
import hashlib
import random
import sys
import time
from pathlib import Path


def payload(seq: int) -> bytes:
    """~200-300 bytes: the sequence number, deterministic padding, and a checksum."""
    head = b"seq=%010d;" % seq
    pad = hashlib.sha256(b"pad %d" % seq).hexdigest().encode() * 5
    body = head + pad[: 150 + seq % 120]
    return body + b";" + hashlib.sha256(body).hexdigest().encode()


def parse_payload(data: bytes) -> int:
    """The sequence number of a payload made by `payload`; ValueError if it is not one."""
    body, sep, digest = data.rpartition(b";")
    if not sep or hashlib.sha256(body).hexdigest().encode() != digest:
        raise ValueError(f"payload checksum mismatch: {data[:40]!r}...")
    if not body.startswith(b"seq="):
        raise ValueError(f"not a crash_writer payload: {data[:40]!r}")
    seq = int(body[4:14])
    if data != payload(seq):
        raise ValueError(f"payload of seq {seq} is not the expected bytes")
    return seq


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--pem")
    parser.add_argument("--segment-bytes", type=int, default=16384)
    parser.add_argument("--sync-n", type=int, default=50)
    parser.add_argument("--sync-seconds", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=1_000_000)
    parser.add_argument("--flush-at-end-only", action="store_true")
    args = parser.parse_args(argv)

    from quipu.core.keyring import KeyRing, RsaKey
    from quipu.core.ledger import Ledger
    from quipu.core.sync import SyncPolicy
    from quipu.core.table import TableConfig

    keys = KeyRing([RsaKey.from_pem(1, private_pem=Path(args.pem).read_bytes())] if args.pem else [])
    config = TableConfig(
        max_segment_bytes=args.segment_bytes,
        sync=SyncPolicy.every_n_or_interval(args.sync_n, args.sync_seconds),
    )
    ledger = Ledger.open(args.root, {"logs": config}, keys=keys)
    table = ledger.table()
    last = -1
    if table.record_count:
        tail = list(table.records(table.tree_size - 1))
        if not tail:
            sys.exit(f"reopened: tree size {table.tree_size} but no record {table.tree_size - 1}")
        last = parse_payload(tail[0].payload)
    print(f"open {last}", flush=True)

    rng = random.Random(args.seed)
    seq = last + 1
    until_flush = rng.randint(1, 80)
    while seq < args.limit:
        batch = rng.choice((1, 1, 1, 2, 5, 17))
        table.append_many(payload(s) for s in range(seq, seq + batch))
        seq += batch
        until_flush -= batch
        if until_flush <= 0 and not args.flush_at_end_only:
            ledger.flush()
            print(f"acked {seq - 1}", flush=True)
            until_flush = rng.randint(1, 80)
            if rng.random() < 0.05:
                ledger.checkpoint()
    ledger.flush()
    print(f"acked {seq - 1}", flush=True)
    print("done", flush=True)
    while True:  # wait to be killed, still holding the store
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
