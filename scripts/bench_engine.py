#!/usr/bin/env python3
"""Engine benchmark: Quipu append throughput, proofs and open time against SQLite and pymerkle.

Everything runs side by side in one process, on the same pre-generated payloads, in temp
directories under /tmp that are removed afterwards. Every measured loop is bounded both by
a record count and by a time budget, so the run always stops by itself.

    .venv/bin/python scripts/bench_engine.py --quick     # smoke test, ~20 s
    .venv/bin/python scripts/bench_engine.py             # 200k appends, 1M-record proofs
    .venv/bin/python scripts/bench_engine.py --profile   # cProfile of the group-commit hot path

Phases:
  1. append throughput of ~300-byte records for each sync policy, per-record `append` and
     batched `append_many`, timing includes the final `ledger.flush()`; baselines: SQLite
     (WAL, synchronous=FULL, one commit per 1,000 records) and pymerkle's SqliteTree
     (`append_entries` per 1,000 records).
  2. a store of --proof-records records (os_managed + append_many): inclusion and
     consistency proof latency over random indices / first sizes; pymerkle for comparison.
  3. open time of that store (close, then `Ledger.open`, median of 3).
  4. peak RSS (ru_maxrss) and current RSS (psutil) after each phase.

pymerkle is optional (`pip install -e '.[bench]'`); without it its rows are skipped.
"""

import argparse
import cProfile
import gc
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import benchkit as bk
from benchkit import fmt_rate, mem, perf, ratio, run_chunks
from cryptography.hazmat.primitives.asymmetric import rsa

import quipu.core.ledger as quipu_ledger
from quipu.core.keyring import KeyRing, RsaKey
from quipu.core.ledger import Ledger
from quipu.core.merkle import verify_consistency, verify_inclusion
from quipu.core.sync import SyncPolicy
from quipu.core.table import TableConfig

try:
    import pymerkle
    from pymerkle import SqliteTree
except ImportError:  # the `bench` extra is not installed
    pymerkle = None
    SqliteTree = None

BATCH = 1000  # records per append_many / executemany / append_entries / SQLite commit
PAYLOAD_SIZE = 300
POOL_RECORDS = 64 * BATCH  # distinct payloads, generated up front and cycled through
SEED = 20240601
MAX_SEGMENT_BYTES = 16 << 20
GROUP_COMMIT = (1000, 0.02)

TARGET_APPEND_RATIO = 1.0
TARGET_PROOF_MS = 1.0
TARGET_OPEN_S = 1.0


# --- payloads ------------------------------------------------------------------------


def make_pool_chunks(seed: int) -> list[list[bytes]]:
    """POOL_RECORDS distinct deterministic ~300-byte payloads, as chunks of BATCH."""
    rng = random.Random(seed)
    pool = []
    for i in range(POOL_RECORDS):
        head = b'{"seq":%d,"actor":"user-%04d","action":"read","blob":"' % (i, rng.randrange(10_000))
        pool.append(head + rng.randbytes(PAYLOAD_SIZE - len(head)))
    return [pool[i : i + BATCH] for i in range(0, POOL_RECORDS, BATCH)]


def chunks_for(pool_chunks: list[list[bytes]], records: int) -> list[list[bytes]]:
    """`records` payloads as BATCH-sized chunks (the last may be shorter), cycling the
    pool: references only, so building this costs nothing measurable."""
    full, rest = divmod(records, BATCH)
    chunks = [pool_chunks[k % len(pool_chunks)] for k in range(full)]
    if rest:
        chunks.append(pool_chunks[full % len(pool_chunks)][:rest])
    return chunks


def chunk_step(
    style: str, one: Callable[[bytes], object], many: Callable[[list[bytes]], object]
) -> Callable[[list[bytes]], object]:
    """The per-chunk step of a run: `many(chunk)` for batch styles, else `one` per record."""
    if style != "per-record":
        return many

    def step(chunk: list[bytes]) -> None:
        for p in chunk:
            one(p)

    return step


def now_micros() -> int:
    return time.time_ns() // 1000


# --- results -------------------------------------------------------------------------


@dataclass
class AppendResult:
    system: str
    policy: str
    style: str
    records: int
    seconds: float
    planned: int
    note: str = ""

    @property
    def rate(self) -> float:
        return bk.per_second(self.records, self.seconds)

    @property
    def us_per_record(self) -> float:
        return bk.micros_each(self.seconds, self.records)


@dataclass
class Latency(bk.LatencyStats):
    label: str
    size: int
    samples: list[float]  # milliseconds


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- quipu ---------------------------------------------------------------------------


def quipu_config(policy: SyncPolicy) -> dict[str, TableConfig]:
    return {"logs": TableConfig(max_segment_bytes=MAX_SEGMENT_BYTES, sync=policy)}


def bench_quipu(
    root: Path,
    policy_name: str,
    policy: SyncPolicy,
    style: str,
    chunks: list[list[bytes]],
    keys: KeyRing,
    budget: float,
) -> AppendResult:
    ledger = Ledger.open(root, quipu_config(policy), keys=keys)
    try:
        t = ledger.table()
        step = chunk_step(style, t.append, t.append_many)
        gc.collect()
        start = perf()
        done = run_chunks(chunks, step, budget)
        ledger.flush()
        elapsed = perf() - start
        if t.tree_size != done:
            raise RuntimeError(f"quipu tree size {t.tree_size} != {done} records appended")
        sealed = len(t.segments) - 1
    finally:
        ledger.close()
    note = f"{sealed} seals+checkpoints, {dir_bytes(root) / (1 << 20):.0f} MiB on disk"
    return AppendResult("quipu", policy_name, style, done, elapsed, sum(map(len, chunks)), note)


# --- baselines -----------------------------------------------------------------------

SQLITE_SCHEMA = "CREATE TABLE logs (id INTEGER PRIMARY KEY, ts INTEGER, payload BLOB)"
SQLITE_INSERT = "INSERT INTO logs (ts, payload) VALUES (?, ?)"


def bench_sqlite(root: Path, style: str, chunks: list[list[bytes]], budget: float) -> AppendResult:
    root.mkdir(parents=True)
    path = root / "bench.db"
    con = sqlite3.connect(path)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        con.execute("PRAGMA synchronous=FULL")
        con.execute(SQLITE_SCHEMA)
        con.commit()
        cur = con.cursor()
        execute, commit = cur.execute, con.commit
        if style == "per-record":

            def step(chunk: list[bytes]) -> None:
                for p in chunk:
                    execute(SQLITE_INSERT, (now_micros(), p))
                commit()

        else:

            def step(chunk: list[bytes]) -> None:
                ts = now_micros()
                cur.executemany(SQLITE_INSERT, [(ts, p) for p in chunk])
                commit()

        gc.collect()
        start = perf()
        done = run_chunks(chunks, step, budget)
        commit()
        elapsed = perf() - start
        (rows,) = con.execute("SELECT COUNT(*) FROM logs").fetchone()
        if rows != done:
            raise RuntimeError(f"sqlite holds {rows} rows, {done} were inserted")
    finally:
        con.close()
    note = f"journal_mode={mode}, synchronous=FULL, {dir_bytes(root) / (1 << 20):.0f} MiB on disk"
    style_name = "per-record execute" if style == "per-record" else "executemany 1000"
    return AppendResult("sqlite", "commit/1000", style_name, done, elapsed, sum(map(len, chunks)), note)


def pymerkle_pragmas(tree: "SqliteTree") -> str:
    mode = tree.con.execute("PRAGMA journal_mode").fetchone()
    sync = tree.con.execute("PRAGMA synchronous").fetchone()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return f"journal_mode={mode}, synchronous={names.get(sync, sync)} (pymerkle defaults)"


def bench_pymerkle(root: Path, style: str, chunks: list[list[bytes]], budget: float) -> AppendResult:
    root.mkdir(parents=True)
    tree = SqliteTree(str(root / "pymerkle.db"))
    try:
        pragmas = pymerkle_pragmas(tree)
        step = chunk_step(style, tree.append_entry, tree.append_entries)
        gc.collect()
        start = perf()
        done = run_chunks(chunks, step, budget)
        elapsed = perf() - start
        if tree.get_size() != done:
            raise RuntimeError(f"pymerkle size {tree.get_size()} != {done} records appended")
    finally:
        tree.close()
    note = f"{pragmas}, {dir_bytes(root) / (1 << 20):.0f} MiB on disk"
    if style == "per-record":
        style_name, policy = "append_entry", "commit/record"
    else:
        style_name, policy = "append_entries 1000", "commit/1000"
    return AppendResult("pymerkle", policy, style_name, done, elapsed, sum(map(len, chunks)), note)


# --- phase 1 -------------------------------------------------------------------------


def phase_append(
    tmp: Path, pool_chunks: list[list[bytes]], keys: KeyRing, args: argparse.Namespace
) -> list[AppendResult]:
    print(
        f"\n=== Phase 1: append throughput ({PAYLOAD_SIZE}-byte records, batches of {BATCH}, "
        f"{args.repeat} interleaved round(s), median-time round kept) ==="
    )
    full = chunks_for(pool_chunks, args.records)
    slow = chunks_for(pool_chunks, args.always_records)
    policies = [
        ("always", SyncPolicy.always(), slow, full),
        ("every_n(64)", SyncPolicy.every_n(64), full, full),
        ("group commit(1000,20ms)", SyncPolicy.every_n_or_interval(*GROUP_COMMIT), full, full),
        ("os_managed", SyncPolicy.os_managed(), full, full),
    ]
    cases: list[Callable[[Path], AppendResult]] = []
    for name, policy, per_record_chunks, batch_chunks in policies:
        for style, chunks in (("per-record", per_record_chunks), ("append_many 1000", batch_chunks)):
            cases.append(
                lambda root, n=name, p=policy, st=style, c=chunks: bench_quipu(
                    root, n, p, st, c, keys, args.budget
                )
            )
    for style in ("per-record", "executemany"):
        cases.append(lambda root, st=style: bench_sqlite(root, st, full, args.budget))
    if SqliteTree is not None:
        for style, chunks in (("per-record", slow), ("batch", full)):
            cases.append(lambda root, st=style, c=chunks: bench_pymerkle(root, st, c, args.budget))
    else:
        print("  pymerkle is not installed: its rows are skipped")

    def describe(r: AppendResult) -> str:
        return (
            f"{r.system:8} {r.policy:24} {r.style:20} {r.records:>9,} rec {r.seconds:8.3f} s "
            f"{fmt_rate(r.rate):>11} rec/s{bk.budget_cut(r.records, r.planned)}"
        )

    results = bk.run_rounds(cases, args.repeat, tmp, "append", describe, "rec/s")
    mem("phase 1 (append)")
    return results


def print_append_table(results: list[AppendResult]) -> None:
    print("\n--- Append throughput (timing includes final flush/commit) ---")
    base = next((r for r in results if r.system == "sqlite" and r.style.startswith("executemany")), None)
    header = (
        f"{'system':8} {'sync / commit':24} {'style':20} {'records':>9} {'seconds':>8} "
        f"{'rec/s':>11} {'us/rec':>8} {'vs sqlite-em':>12}  notes"
    )
    bk.print_header(header)
    for r in results:
        rel = f"{ratio(r.rate, base.rate):.2f}x" if base else "-"
        print(
            f"{r.system:8} {r.policy:24} {r.style:20} {r.records:>9,} {r.seconds:>8.3f} "
            f"{fmt_rate(r.rate):>11} {r.us_per_record:>8.2f} {rel:>12}  {r.note}"
        )


# --- phase 2 / 3 ---------------------------------------------------------------------


def time_calls(
    label: str, size: int, args_list: Sequence[int], fn: Callable[[int], object], budget: float
) -> Latency:
    samples = []
    deadline = perf() + budget
    for a in args_list:
        start = perf()
        fn(a)
        samples.append((perf() - start) * 1e3)
        if perf() > deadline:
            break
    return Latency(label, size, samples)


def time_proofs(
    prover: str,
    size: int,
    indices: Sequence[int],
    firsts: Sequence[int],
    inclusion: Callable[[int], object],
    consistency: Callable[[int], object],
    budget: float,
) -> list[Latency]:
    """Inclusion then consistency latency of one prover, the same way for quipu and pymerkle."""
    lats = [
        time_calls(f"{prover} inclusion", size, indices, inclusion, budget),
        time_calls(f"{prover} consistency", size, firsts, consistency, budget),
    ]
    for lat in lats:
        print(f"  {lat.label}: median {lat.median:.4f} ms over {len(lat.samples):,} proofs", flush=True)
    return lats


def phase_proofs(
    tmp: Path, pool_chunks: list[list[bytes]], keys: KeyRing, args: argparse.Namespace
) -> tuple[list[Latency], dict[str, object]]:
    print(f"\n=== Phase 2: proofs on a {args.proof_records:,}-record store ===")
    info: dict[str, object] = {}
    root = tmp / "proof-store"
    chunks = chunks_for(pool_chunks, args.proof_records)
    config = quipu_config(SyncPolicy.os_managed())

    ledger = Ledger.open(root, config, keys=keys)
    t = ledger.table()
    gc.collect()
    start = perf()
    done = run_chunks(chunks, t.append_many, args.build_budget)
    ledger.flush()
    build_s = perf() - start
    size = t.tree_size
    info.update(build_s=build_s, size=size, planned=sum(map(len, chunks)))
    info["disk"] = dir_bytes(root)
    info["segments"] = len(t.segments)
    cut = "" if done >= info["planned"] else f" (build budget {args.build_budget:.0f} s hit)"
    print(
        f"  quipu build (os_managed, append_many {BATCH}): {size:,} records in {build_s:.2f} s "
        f"= {fmt_rate(size / build_s)} rec/s, {info['segments']} segments, "
        f"{info['disk'] / (1 << 20):,.0f} MiB{cut}",
        flush=True,
    )
    mem("quipu proof-store build")

    rng = random.Random(SEED + 1)
    samples = min(args.proof_samples, size)
    indices = [rng.randrange(size) for _ in range(samples)]
    firsts = [rng.randrange(1, size + 1) for _ in range(samples)]
    for i in indices[:20]:  # warm-up, and the proofs must actually verify
        p = t.prove_inclusion(i)
        verify_inclusion(p.leaf_index, p.tree_size, p.leaf_hash, p.path, p.root)
    for f in firsts[:20]:
        c = t.prove_consistency(f)
        verify_consistency(c.first_size, c.second_size, c.first_root, c.second_root, c.proof)
    lats = time_proofs("quipu", size, indices, firsts, t.prove_inclusion, t.prove_consistency, args.budget)
    quipu_root = t.root()
    mem("quipu proofs")

    # Phase 3: open time. The page cache is warm (the store was just written).
    ledger.close()
    opens = []
    for _ in range(3):
        start = perf()
        reopened = Ledger.open(root, config, keys=keys)
        opens.append(perf() - start)
        same = reopened.table().tree_size == size and reopened.table().root() == quipu_root
        reopened.close()
        if not same:
            raise RuntimeError("the reopened store does not have the size/root it was closed with")
    info["opens"] = opens
    print(
        f"\n=== Phase 3: open time of the {size:,}-record store ===\n"
        f"  Ledger.open: {', '.join(f'{o * 1e3:.1f} ms' for o in opens)} "
        f"(median {statistics.median(opens) * 1e3:.1f} ms; warm page cache)",
        flush=True,
    )
    mem("phase 3 (open)")
    shutil.rmtree(root)

    if SqliteTree is None:
        print("  pymerkle is not installed: its proof comparison is skipped")
        return lats, info
    lats += pymerkle_proofs(tmp, chunks, size, quipu_root, rng, args, info)
    return lats, info


def pymerkle_proofs(
    tmp: Path,
    chunks: list[list[bytes]],
    quipu_size: int,
    quipu_root: bytes,
    rng: random.Random,
    args: argparse.Namespace,
    info: dict[str, object],
) -> list[Latency]:
    root = tmp / "proof-pymerkle"
    root.mkdir()
    tree = SqliteTree(str(root / "pymerkle.db"))
    try:
        gc.collect()
        start = perf()
        done = run_chunks(chunks, tree.append_entries, args.pymerkle_budget)
        build_s = perf() - start
        size = tree.get_size()
        info["pm_build_s"], info["pm_size"] = build_s, size
        info["pm_disk"] = dir_bytes(root)
        complete = done >= quipu_size
        info["pm_complete"] = complete
        cut = (
            ""
            if complete
            else f" -- build budget {args.pymerkle_budget:.0f} s hit: NOT built to "
            f"{quipu_size:,}; its proofs below are at {size:,}"
        )
        print(
            f"  pymerkle build (append_entries {BATCH}): {size:,} records in {build_s:.2f} s = "
            f"{fmt_rate(size / build_s)} rec/s, {info['pm_disk'] / (1 << 20):,.0f} MiB{cut}",
            flush=True,
        )
        mem("pymerkle proof-store build")
        samples = min(args.proof_samples, size)
        indices = [rng.randrange(1, size + 1) for _ in range(samples)]  # pymerkle is 1-based
        firsts = [rng.randrange(1, size + 1) for _ in range(samples)]
        start = perf()
        tree.prove_inclusion(indices[0])
        info["pm_first_proof_ms"] = (perf() - start) * 1e3
        for i in indices[1:20]:
            tree.prove_inclusion(i)
        for f in firsts[:20]:
            tree.prove_consistency(f)
        lats = time_proofs(
            "pymerkle", size, indices, firsts, tree.prove_inclusion, tree.prove_consistency, args.budget
        )
        cache = tree.get_cache_info()
        info["pm_cache"] = (
            f"subroot cache {cache.size / (1 << 20):.1f} MiB, hits {cache.hits:,}, misses {cache.misses:,}"
        )
        if complete:
            info["roots_match"] = tree.get_root(quipu_size) == quipu_root
    finally:
        tree.close()
    mem("pymerkle proofs")
    shutil.rmtree(root)
    return lats


def print_proof_table(lats: list[Latency], info: dict[str, object]) -> None:
    print("\n--- Proof generation latency (ms; warm page cache; quipu has no cache, pymerkle caches) ---")
    header = f"{'prover':22} {'tree size':>10} {'proofs':>7} {'median':>9} {'p90':>9} {'p99':>9} {'max':>9}"
    bk.print_header(header)
    for lat in lats:
        print(
            f"{lat.label:22} {lat.size:>10,} {len(lat.samples):>7,} {lat.median:>9.4f} "
            f"{lat.pct(0.9):>9.4f} {lat.pct(0.99):>9.4f} {max(lat.samples):>9.4f}"
        )
    by = {lat.label: lat for lat in lats}
    for kind in ("inclusion", "consistency"):
        q, p = by.get(f"quipu {kind}"), by.get(f"pymerkle {kind}")
        if q and p:
            print(f"  {kind}: pymerkle median / quipu median = {ratio(p.median, q.median):.2f}x")
    if "pm_first_proof_ms" in info:
        print(
            f"  pymerkle first (cold-cache) inclusion proof: {info['pm_first_proof_ms']:.1f} ms; "
            f"{info['pm_cache']}"
        )
    if "roots_match" in info:
        print(f"  quipu and pymerkle RFC 6962 roots at {info['size']:,} leaves match: {info['roots_match']}")


# --- summary -------------------------------------------------------------------------


def find(results: list[AppendResult], system: str, policy: str, style: str) -> AppendResult | None:
    return next(
        (
            r
            for r in results
            if r.system == system and r.policy.startswith(policy) and r.style.startswith(style)
        ),
        None,
    )


def print_summary(results: list[AppendResult], lats: list[Latency], info: dict[str, object]) -> None:
    print("\n=== Targets (from the issue) ===")
    gc_rec = find(results, "quipu", "group commit", "per-record")
    gc_batch = find(results, "quipu", "group commit", "append_many")
    sq_rec = find(results, "sqlite", "commit", "per-record")
    sq_batch = find(results, "sqlite", "commit", "executemany")
    pm_batch = find(results, "pymerkle", "commit/1000", "append_entries")
    pm_rec = find(results, "pymerkle", "commit/record", "append_entry")
    q_always = find(results, "quipu", "always", "per-record")

    rows: list[tuple[str, str, str, str]] = []

    def append_row(label: str, a: AppendResult | None, b: AppendResult | None, target: float | None) -> None:
        if a is None or b is None:
            rows.append((label, "n/a", f">= {target:.1f}x" if target else "info", "skipped"))
            return
        r = ratio(a.rate, b.rate)
        verdict = ("PASS" if r >= target else "MISS") if target else "info"
        rows.append(
            (
                label,
                f"{r:.2f}x ({fmt_rate(a.rate)} vs {fmt_rate(b.rate)} rec/s)",
                f">= {target:.1f}x" if target else "-",
                verdict,
            )
        )

    append_row("group-commit per-record vs SQLite per-record", gc_rec, sq_rec, TARGET_APPEND_RATIO)
    append_row("group-commit append_many vs SQLite executemany", gc_batch, sq_batch, TARGET_APPEND_RATIO)
    append_row("group-commit per-record vs pymerkle append_entries", gc_rec, pm_batch, TARGET_APPEND_RATIO)
    append_row("group-commit append_many vs pymerkle append_entries", gc_batch, pm_batch, TARGET_APPEND_RATIO)
    append_row("always per-record vs pymerkle append_entry (commit/rec)", q_always, pm_rec, None)
    append_row(
        "group-commit per-record vs os_managed per-record",
        gc_rec,
        find(results, "quipu", "os_managed", "per-record"),
        None,
    )

    by = {lat.label: lat for lat in lats}
    size = info.get("size", 0)
    for kind in ("inclusion", "consistency"):
        lat = by.get(f"quipu {kind}")
        if lat:
            med = lat.median
            rows.append(
                (
                    f"quipu {kind} proof median at {size:,}",
                    f"{med:.4f} ms",
                    f"< {TARGET_PROOF_MS:.0f} ms",
                    "PASS" if med < TARGET_PROOF_MS else "MISS",
                )
            )
    opens = info.get("opens")
    if opens:
        med = statistics.median(opens)
        rows.append(
            (
                f"Ledger.open median at {size:,}",
                f"{med * 1e3:.1f} ms",
                f"< {TARGET_OPEN_S:.0f} s",
                "PASS" if med < TARGET_OPEN_S else "MISS",
            )
        )
    bk.print_targets(rows)
    if size and size < 1_000_000:
        print(f"  (proof/open targets are stated at 1M records; this run measured {size:,})")

    bk.print_memory(32)


# --- profile -------------------------------------------------------------------------


def run_profile(tmp: Path, pool_chunks: list[list[bytes]], keys: KeyRing, args: argparse.Namespace) -> None:
    """cProfile of group-commit per-record appends (main thread only; the timer thread's
    fsyncs are not in it, the count-triggered ones are)."""
    records = args.profile_records
    chunks = chunks_for(pool_chunks, records)
    root = tmp / "profile"
    ledger = Ledger.open(root, quipu_config(SyncPolicy.every_n_or_interval(*GROUP_COMMIT)), keys=keys)
    t = ledger.table()
    append = t.append

    def step(chunk: list[bytes]) -> None:
        for p in chunk:
            append(p)

    profiler = cProfile.Profile()
    start = perf()
    profiler.enable()
    done = run_chunks(chunks, step, args.budget)
    ledger.flush()
    profiler.disable()
    elapsed = perf() - start
    ledger.close()
    shutil.rmtree(root)
    print(
        f"\n=== cProfile: quipu group-commit per-record append, {done:,} records, {elapsed:.2f} s "
        f"under the profiler ({fmt_rate(done / elapsed)} rec/s; cProfile inflates call overhead) ==="
    )
    bk.print_profile(profiler, args.profile_top)


# --- main ----------------------------------------------------------------------------


def make_keys() -> KeyRing:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyRing([RsaKey(1, private.public_key(), private)])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records per append case")
    ap.add_argument(
        "--always-records",
        type=int,
        default=2_000,
        help="records for the fsync-per-append cases (quipu always, pymerkle append_entry)",
    )
    ap.add_argument("--proof-records", type=int, default=1_000_000, help="size of the proof/open store")
    ap.add_argument("--proof-samples", type=int, default=2_000, help="random proofs per kind")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per measured loop (cap)")
    ap.add_argument("--build-budget", type=float, default=240.0, help="seconds cap for the quipu proof store")
    ap.add_argument(
        "--pymerkle-budget", type=float, default=60.0, help="seconds cap for pymerkle's proof store"
    )
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the append cases")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (20k appends, 100k proof store)")
    ap.add_argument("--profile", action="store_true", help="only profile the group-commit per-record append")
    ap.add_argument("--profile-records", type=int, default=100_000)
    ap.add_argument("--profile-top", type=int, default=25)
    args = ap.parse_args(argv)
    if args.quick:
        args.records, args.always_records, args.repeat = 20_000, 500, 1
        args.proof_records, args.proof_samples = 100_000, 500
        args.budget, args.build_budget, args.pymerkle_budget = 20.0, 60.0, 20.0
        args.profile_records = 20_000
    bk.require_positive(
        ap, args, ("records", "always_records", "proof_records", "proof_samples", "profile_records", "repeat")
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wall = perf()
    bk.machine_info(
        [
            ("pymerkle", pymerkle.__version__ if pymerkle else "not installed"),
            ("quipu", str(Path(quipu_ledger.__file__).parent)),
        ]
    )
    start = perf()
    keys = make_keys()
    pool_chunks = make_pool_chunks(SEED)
    print(
        f"  setup       RSA-2048 key + {POOL_RECORDS:,} distinct {PAYLOAD_SIZE}-byte payloads "
        f"({POOL_RECORDS * PAYLOAD_SIZE / (1 << 20):.1f} MiB, cycled) in {perf() - start:.2f} s (not timed)"
    )
    mode = "quick" if args.quick else "full"
    if args.profile:
        print(f"  run         profile ({mode}): --profile-records {args.profile_records:,}")
    else:
        print(
            f"  run         {mode}: --records {args.records:,}, --always-records {args.always_records:,}, "
            f"--proof-records {args.proof_records:,}, --proof-samples {args.proof_samples:,}, "
            f"--repeat {args.repeat}, budget {args.budget:.0f} s/loop"
        )
    mem("setup")
    with bk.bench_tmpdir("quipu-bench-") as tmp:
        if args.profile:
            run_profile(tmp, pool_chunks, keys, args)
            return 0
        results = phase_append(tmp, pool_chunks, keys, args)
        lats, info = phase_proofs(tmp, pool_chunks, keys, args)
    print_append_table(results)
    print_proof_table(lats, info)
    print_summary(results, lats, info)
    print(f"\nTotal wall time {perf() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
