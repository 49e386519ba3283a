#!/usr/bin/env python3
"""Store benchmark: AuditStore (append, queries, past-value search, open) against the SQLite
audit table a Python developer would write, and against a bare Python hashing loop.

Everything runs side by side in one process, on identical deterministic events, in temp
directories under /tmp that are removed afterwards. Every measured loop is bounded by a
count and by a time budget, so the run always stops by itself.

    .venv/bin/python scripts/bench_store.py --quick     # smoke test, ~1 min
    .venv/bin/python scripts/bench_store.py             # 1M events (several minutes)
    .venv/bin/python scripts/bench_store.py --profile   # cProfile of AuditStore.append_many

Events: one actor of 1,000 (`default_actor`), a document of 5,000 (always), plus its folder
(of 500, p=0.5) and its project (of 200, p=0.3): 1-3 targets; methods GET/PUT/POST/DELETE
(30/35/20/15 %); occurred_at increasing by 50 ms per event with +-100 ms jitter (so a few
arrive out of order); content ~100 bytes of text. Generated per block of 10,000 from a
seeded RNG (generation is never timed), as v1 AppendRequest-shaped dicts.

Systems (each starts from the same event dicts):
  sqlite   logs(id INTEGER PRIMARY KEY, log_id, ts, actor_type, actor_id, actor_name, method,
           url, content) + targets(log_rowid, entity_type, entity_id, entity_name); indexes
           on targets(entity_type, entity_name), targets(entity_type, entity_id),
           logs(actor_type, actor_id, ts), logs(ts); WAL, synchronous=FULL, executemany
           and one commit per 1,000 events. A rename is just a new event: old target rows
           keep the old name, so "by old name" finds the rows written under it.
  quipu    AuditStore, group commit every_n_or_interval(1000, 20 ms), append_many per
           1,000. Timed twice: `append_many` alone, and end to end (building the
           AuditEvent objects from the dicts + append_many), since an application pays both.
  ceiling  orjson.dumps(event dict) + chained SHA-256 (h = sha256(h + data)): the floor of
           any Python tamper-evident log, as a reference for both.

Phases:
  1. small-N: per-event `append()` vs `append_many`, per-event execute vs executemany,
     interleaved rounds, median round kept.
  2. the full build (--events), the three systems interleaved per block of 10,000 events
     (rotating who goes first), throughput per --slice slice.
  3. queries on the full store, median over --reps repetitions, each on another doc/actor,
     sqlite and quipu interleaved; results cross-checked between the two.
  4. rename --renames documents, then query them by their OLD name (past values).
  5. bytes on disk, AuditStore open time (close + open, median of 3) and the first
     queries after open (sealed-segment indexes load lazily).
  Peak RSS (ru_maxrss) and current RSS (psutil) after each phase.
"""

import argparse
import cProfile
import gc
import hashlib
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import benchkit as bk
import orjson
from benchkit import MEMORY, fmt_rate, mem, perf, ratio, rss_mib, run_chunks

import quipu.core.audit_store as quipu_store
from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.keyring import KeyRing
from quipu.core.query_spec import LogQuery, TargetFilter
from quipu.core.schema import FieldDef, TypeSchema, default_actor_type, default_target_type
from quipu.core.sync import SyncPolicy
from quipu.core.values import Content, Value

ACTORS, DOCS, FOLDERS, PROJECTS = 1000, 5000, 500, 200
METHODS = ("GET", "PUT", "POST", "DELETE")
METHOD_CUM = (30, 65, 85, 100)  # cumulative percent: GET 30, PUT 35, POST 20, DELETE 15
P_FOLDER, P_PROJECT = 0.5, 0.3
BATCH = 1000  # events per append_many / executemany / commit
BLOCK = 10 * BATCH  # events generated at once; the unit of interleaving
SEED = 20240601
T0 = 1_717_200_000_000_000  # 2024-06-01T00:00:00Z in µs
STEP = 50_000  # µs between events on average
JITTER = 2 * STEP
CONTENT_BYTES = 100
ACTOR_TYPE = "default_actor"
TARGET_TYPES = ("document", "project", "folder")
GROUP_COMMIT = (1000, 0.02)
PAGE = 100  # "latest 100 events"

TARGET_APPEND_RATIO = 2.0  # quipu ev/s >= 2x sqlite ev/s at 1M
TARGET_QUERY_RATIO = 1.0  # quipu median <= 1x sqlite median
TARGET_RSS_MIB = 1024.0
TARGET_EVENTS = 1_000_000


# --- events --------------------------------------------------------------------------

_PAD = "".join(random.Random(SEED).choices("abcdefghijklmnopqrstuvwxyz     ", k=512))


def doc_name(d: int, version: int = 1) -> str:
    return f"doc-{d}" if version == 1 else f"doc-{d}-v{version}"


def entity(entity_type: str, entity_id: str, name: str) -> dict:
    return {"entity_type": entity_type, "input": {"entity_id": entity_id, "fields": {"name": name}}}


def make_event(rng: random.Random, i: int) -> dict:
    """Event number i as a v1 AppendRequest-shaped dict (plain JSON values)."""
    a, d = rng.randrange(ACTORS), rng.randrange(DOCS)
    r = rng.randrange(100)
    method = next(m for m, cum in zip(METHODS, METHOD_CUM, strict=True) if r < cum)
    targets = [entity("document", f"doc{d}", doc_name(d))]
    f = d % FOLDERS
    if rng.random() < P_FOLDER:
        targets.append(entity("folder", f"folder{f}", f"folder-{f}"))
    if rng.random() < P_PROJECT:
        p = f % PROJECTS
        targets.append(entity("project", f"proj{p}", f"project-{p}"))
    head = f"{method} /docs/{d} by user{a} rev {rng.randrange(1_000_000)}: "
    off = rng.randrange(len(_PAD) - CONTENT_BYTES)
    return {
        "occurred_at": T0 + i * STEP + rng.randrange(-JITTER, JITTER + 1),
        "actor_type": ACTOR_TYPE,
        "actor": {"entity_id": f"u{a}", "fields": {"name": f"user{a}"}},
        "method": method,
        "url": f"/docs/{d}",
        "content": head + _PAD[off : off + max(0, CONTENT_BYTES - len(head))],
        "targets": targets,
    }


def gen_block(block: int, count: int) -> list[dict]:
    """Events block*BLOCK .. +count, the same in every run and for every system."""
    rng = random.Random(SEED * 1_000_003 + block)
    first = block * BLOCK
    return [make_event(rng, first + k) for k in range(count)]


def last_ts(events: int) -> int:
    return T0 + (events - 1) * STEP + JITTER  # no generated event is later


def rename_event(d: int, k: int, events: int, rng: random.Random) -> dict:
    """The k-th rename: doc d now carries its v2 name (an ordinary event, newest of all)."""
    a = rng.randrange(ACTORS)
    return {
        "occurred_at": last_ts(events) + (k + 1) * STEP,
        "actor_type": ACTOR_TYPE,
        "actor": {"entity_id": f"u{a}", "fields": {"name": f"user{a}"}},
        "method": "PUT",
        "url": f"/docs/{d}/rename",
        "content": f"rename {doc_name(d)} -> {doc_name(d, 2)}",
        "targets": [entity("document", f"doc{d}", doc_name(d, 2))],
    }


def batches(events: list[dict]) -> list[list[dict]]:
    return [events[k : k + BATCH] for k in range(0, len(events), BATCH)]


# --- results -------------------------------------------------------------------------


@dataclass
class Rate:
    """Events through one system, with the time split into building inputs and the call."""

    system: str
    style: str
    events: int = 0
    seconds: float = 0.0  # end to end (build + store call)
    call_seconds: float = 0.0  # the store call alone (append_many / executemany + commit)
    planned: int = 0
    note: str = ""

    @property
    def rate(self) -> float:
        return bk.per_second(self.events, self.seconds)

    @property
    def call_rate(self) -> float:
        return bk.per_second(self.events, self.call_seconds)

    @property
    def us_per_event(self) -> float:
        return bk.micros_each(self.seconds, self.events)


@dataclass
class Latency(bk.LatencyStats):
    label: str
    system: str
    samples: list[float] = field(default_factory=list)  # milliseconds
    first_ms: float = float("nan")  # the first call, before the warm-up


def disk_usage(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes as du counts them) of every file under path."""
    apparent = allocated = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def disk_breakdown(path: Path) -> dict[str, int]:
    """Apparent bytes by <table dir>/*<suffix> (top-level files by name)."""
    out: dict[str, int] = {}
    for p in path.rglob("*"):
        if p.is_file():
            rel = p.relative_to(path)
            key = f"{rel.parts[0]}/*{p.suffix}" if len(rel.parts) > 1 else rel.name
            out[key] = out.get(key, 0) + p.stat().st_size
    return out


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


# --- quipu ---------------------------------------------------------------------------


def open_store(root: Path, keys: KeyRing, define: bool = True) -> AuditStore:
    store = AuditStore.open(StoreConfig(root, keys=keys, sync=SyncPolicy.every_n_or_interval(*GROUP_COMMIT)))
    if define:
        store.define_type(default_actor_type())
        store.define_type(default_target_type())
        for name in TARGET_TYPES:
            store.define_type(TypeSchema(name, (FieldDef.text("name").idx(),)))
    return store


def _input(d: dict) -> EntityInput:
    return EntityInput(d["entity_id"], {"name": Value.text_(d["fields"]["name"])})


def to_event(d: dict) -> AuditEvent:
    """The AuditEvent an application builds from its event (public constructors only)."""
    return AuditEvent(
        d["actor_type"],
        _input(d["actor"]),
        d["method"],
        d["url"],
        Content("Text", d["content"]),
        targets=tuple(TargetSpec(t["entity_type"], _input(t["input"])) for t in d["targets"]),
        occurred_at=d["occurred_at"],
    )


def quipu_many(store: AuditStore, batch: list[dict], r: Rate) -> None:
    t0 = perf()
    events = [to_event(e) for e in batch]
    t1 = perf()
    ids = store.append_many(events)
    t2 = perf()
    if len(ids) != len(batch):
        raise RuntimeError(f"append_many returned {len(ids)} ids for {len(batch)} events")
    r.seconds += t2 - t0
    r.call_seconds += t2 - t1
    r.events += len(batch)


def quipu_each(store: AuditStore, batch: list[dict], r: Rate) -> None:
    t0 = perf()
    events = [to_event(e) for e in batch]
    t1 = perf()
    append = store.append
    for e in events:
        append(e)
    t2 = perf()
    r.seconds += t2 - t0
    r.call_seconds += t2 - t1
    r.events += len(batch)


def quipu_flush(store: AuditStore, r: Rate) -> None:
    t0 = perf()
    store.flush()
    dt = perf() - t0
    r.seconds += dt
    r.call_seconds += dt


def q_latest(name: str) -> LogQuery:
    return LogQuery(targets=(TargetFilter.exact("document", "name", Value.text_(name)),), limit=PAGE)


def q_actor_deletes(actor: str, lo: int, hi: int) -> LogQuery:
    return LogQuery(actor_type=ACTOR_TYPE, actor_id=actor, method="DELETE", from_micros=lo, to_micros=hi)


def q_doc_deletes(name: str, lo: int, hi: int) -> LogQuery:
    return LogQuery(
        targets=(TargetFilter.exact("document", "name", Value.text_(name)),),
        method="DELETE",
        from_micros=lo,
        to_micros=hi,
    )


# --- sqlite --------------------------------------------------------------------------

SQLITE_SCHEMA = (
    "CREATE TABLE logs (id INTEGER PRIMARY KEY, log_id TEXT, ts INTEGER, actor_type TEXT, "
    "actor_id TEXT, actor_name TEXT, method TEXT, url TEXT, content TEXT)",
    "CREATE TABLE targets (log_rowid INTEGER, entity_type TEXT, entity_id TEXT, entity_name TEXT)",
    "CREATE INDEX targets_type_name ON targets (entity_type, entity_name)",
    "CREATE INDEX targets_type_id ON targets (entity_type, entity_id)",
    "CREATE INDEX logs_actor_ts ON logs (actor_type, actor_id, ts)",
    "CREATE INDEX logs_ts ON logs (ts)",
)
INSERT_LOG = (
    "INSERT INTO logs (id, log_id, ts, actor_type, actor_id, actor_name, method, url, content) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_LOG_AUTO = (
    "INSERT INTO logs (log_id, ts, actor_type, actor_id, actor_name, method, url, content) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_TARGET = "INSERT INTO targets (log_rowid, entity_type, entity_id, entity_name) VALUES (?, ?, ?, ?)"
SQL_LATEST = (
    "SELECT l.log_id, l.ts, l.actor_type, l.actor_id, l.actor_name, l.method, l.url, l.content "
    "FROM targets t JOIN logs l ON l.id = t.log_rowid "
    "WHERE t.entity_type = 'document' AND t.entity_name = ? "
    "ORDER BY l.ts DESC, l.id DESC LIMIT ?"
)
SQL_ACTOR_DELETES = (
    "SELECT COUNT(*) FROM logs WHERE actor_type = ? AND actor_id = ? AND method = 'DELETE' "
    "AND ts >= ? AND ts < ?"
)
SQL_DOC_DELETES = (
    "SELECT COUNT(DISTINCT l.id) FROM targets t JOIN logs l ON l.id = t.log_rowid "
    "WHERE t.entity_type = 'document' AND t.entity_name = ? AND l.method = 'DELETE' "
    "AND l.ts >= ? AND l.ts < ?"
)


class SqliteAudit:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.con = sqlite3.connect(root / "audit.db")
        self.mode = self.con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        self.con.execute("PRAGMA synchronous=FULL")
        for stmt in SQLITE_SCHEMA:
            self.con.execute(stmt)
        self.con.commit()
        self.next_id = 1

    def insert_many(self, batch: list[dict], r: Rate) -> None:
        """executemany of the logs and targets rows of a batch, one commit."""
        t0 = perf()
        logs, targets, rid = [], [], self.next_id
        for e in batch:
            a = e["actor"]
            logs.append(
                (
                    rid,
                    uuid.uuid4().hex,
                    e["occurred_at"],
                    e["actor_type"],
                    a["entity_id"],
                    a["fields"]["name"],
                    e["method"],
                    e["url"],
                    e["content"],
                )
            )
            for t in e["targets"]:
                inp = t["input"]
                targets.append((rid, t["entity_type"], inp["entity_id"], inp["fields"]["name"]))
            rid += 1
        t1 = perf()
        cur = self.con.cursor()
        cur.executemany(INSERT_LOG, logs)
        cur.executemany(INSERT_TARGET, targets)
        self.con.commit()
        t2 = perf()
        self.next_id = rid
        r.seconds += t2 - t0
        r.call_seconds += t2 - t1
        r.events += len(batch)

    def insert_each(self, batch: list[dict], r: Rate) -> None:
        """One execute per log row (its rowid from lastrowid), one commit per batch."""
        t0 = perf()
        cur = self.con.cursor()
        execute = cur.execute
        for e in batch:
            a = e["actor"]
            execute(
                INSERT_LOG_AUTO,
                (
                    uuid.uuid4().hex,
                    e["occurred_at"],
                    e["actor_type"],
                    a["entity_id"],
                    a["fields"]["name"],
                    e["method"],
                    e["url"],
                    e["content"],
                ),
            )
            rid = cur.lastrowid
            for t in e["targets"]:
                inp = t["input"]
                execute(INSERT_TARGET, (rid, t["entity_type"], inp["entity_id"], inp["fields"]["name"]))
        self.con.commit()
        dt = perf() - t0
        r.seconds += dt
        r.call_seconds += dt
        r.events += len(batch)

    def latest(self, name: str) -> list[tuple]:
        return self.con.execute(SQL_LATEST, (name, PAGE)).fetchall()

    def actor_deletes(self, actor: str, lo: int, hi: int) -> int:
        return self.con.execute(SQL_ACTOR_DELETES, (ACTOR_TYPE, actor, lo, hi)).fetchone()[0]

    def doc_deletes(self, name: str, lo: int, hi: int) -> int:
        return self.con.execute(SQL_DOC_DELETES, (name, lo, hi)).fetchone()[0]

    def count(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM logs").fetchone()[0]

    def close(self) -> None:
        self.con.close()


# --- ceiling -------------------------------------------------------------------------


class Ceiling:
    """orjson.dumps(event) + h = sha256(h + data): what any Python hash-chained log pays."""

    def __init__(self) -> None:
        self.head = bytes(32)

    def run(self, batch: list[dict], r: Rate) -> None:
        t0 = perf()
        h, dumps, sha = self.head, orjson.dumps, hashlib.sha256
        for e in batch:
            h = sha(h + dumps(e)).digest()
        dt = perf() - t0
        self.head = h
        r.seconds += dt
        r.call_seconds += dt
        r.events += len(batch)


# --- phase 1: small-N, per-event vs batched ---------------------------------------------


def phase_small(tmp: Path, keys: KeyRing, args: argparse.Namespace) -> list[Rate]:
    n = args.small_events
    print(
        f"\n=== Phase 1: append styles on {n:,} events ({args.repeat} interleaved round(s), "
        f"median-rate round kept, {args.budget:.0f} s cap per case) ==="
    )
    events = [e for b in range((n + BLOCK - 1) // BLOCK) for e in gen_block(b, min(BLOCK, n - b * BLOCK))]
    chunks = batches(events)

    def run(step: Callable[[list[dict], Rate], None], r: Rate, after: Callable[[Rate], None]) -> Rate:
        gc.collect()
        run_chunks(chunks, lambda chunk: step(chunk, r), args.budget)
        after(r)
        return r

    def quipu_case(style: str) -> Callable[[Path], Rate]:
        def case(root: Path) -> Rate:
            store = open_store(root, keys)
            try:
                r = Rate("quipu", style, planned=n)
                step = quipu_many if style.startswith("append_many") else quipu_each
                return run(lambda c, rr: step(store, c, rr), r, lambda rr: quipu_flush(store, rr))
            finally:
                store.close()

        return case

    def sqlite_case(style: str) -> Callable[[Path], Rate]:
        def case(root: Path) -> Rate:
            db = SqliteAudit(root)
            try:
                r = Rate("sqlite", style, planned=n, note=f"journal_mode={db.mode}, synchronous=FULL")
                step = db.insert_many if style.startswith("executemany") else db.insert_each
                run(step, r, lambda rr: None)
                if db.count() != r.events:
                    raise RuntimeError(f"sqlite holds {db.count()} logs, {r.events} were inserted")
                return r
            finally:
                db.close()

        return case

    def ceiling_case(root: Path) -> Rate:
        return run(Ceiling().run, Rate("ceiling", "dumps+sha256 chain", planned=n), lambda rr: None)

    cases = [
        quipu_case("append() per event"),
        quipu_case("append_many 1000"),
        sqlite_case("execute per event, commit/1000"),
        sqlite_case("executemany, commit/1000"),
        ceiling_case,
    ]

    def describe(r: Rate) -> str:
        return (
            f"{r.system:7} {r.style:32} {r.events:>8,} ev {r.seconds:7.3f} s {fmt_rate(r.rate):>9} ev/s "
            f"(call only {fmt_rate(r.call_rate):>9}){bk.budget_cut(r.events, r.planned)}"
        )

    kept = bk.run_rounds(cases, args.repeat, tmp, "small", describe, "ev/s")
    mem("phase 1 (small-N append styles)")
    return kept


def print_small_table(results: list[Rate]) -> None:
    print("\n--- Append styles, small N (end to end = build inputs + store call; incl. final flush) ---")
    base = next((r for r in results if r.system == "sqlite" and r.style.startswith("executemany")), None)
    ceil = next((r for r in results if r.system == "ceiling"), None)
    header = (
        f"{'system':7} {'style':32} {'events':>8} {'seconds':>8} {'ev/s':>9} {'us/ev':>7} "
        f"{'call ev/s':>10} {'vs sqlite-em':>12} {'of ceiling':>10}  notes"
    )
    bk.print_header(header)
    for r in results:
        vs = f"{ratio(r.rate, base.rate):.2f}x" if base else "-"
        of = f"{ratio(r.rate, ceil.rate) * 100:.1f}%" if ceil else "-"
        print(
            f"{r.system:7} {r.style:32} {r.events:>8,} {r.seconds:>8.3f} {fmt_rate(r.rate):>9} "
            f"{r.us_per_event:>7.1f} {fmt_rate(r.call_rate):>10} {vs:>12} {of:>10}  {r.note}"
        )


# --- phase 2: the full build, interleaved ----------------------------------------------


@dataclass
class Stores:
    """The two full-size stores. Phase 5 closes them and drops them from here, so nothing
    else keeps a closed store (and its registry) alive while the reopened one is measured."""

    store: AuditStore | None
    db: SqliteAudit | None
    q_root: Path
    s_root: Path


@dataclass
class Build:
    events: int
    planned: int
    rates: dict[str, Rate]
    slices: list[tuple[int, int, dict[str, Rate]]]  # (first event, events, per-system rates)
    wall: float
    generate_s: float
    registry_records: int = -1


def phase_build(tmp: Path, keys: KeyRing, args: argparse.Namespace) -> tuple[Build, Stores]:
    n = args.events
    print(
        f"\n=== Phase 2: build {n:,} events into each system, interleaved per block of {BLOCK:,} "
        f"(build budget {args.build_budget:.0f} s) ==="
    )
    q_root, s_root = tmp / "quipu", tmp / "sqlite"
    store = open_store(q_root, keys)
    db = SqliteAudit(s_root)
    ceiling = Ceiling()
    total = {
        "sqlite": Rate("sqlite", "executemany, commit/1000", planned=n),
        "quipu": Rate("quipu", "append_many 1000, group commit", planned=n),
        "ceiling": Rate("ceiling", "dumps+sha256 chain", planned=n),
    }
    steps: dict[str, Callable[[list[dict], Rate], None]] = {
        "sqlite": db.insert_many,
        "quipu": lambda c, r: quipu_many(store, c, r),
        "ceiling": ceiling.run,
    }
    names = list(steps)
    slices: list[tuple[int, int, dict[str, Rate]]] = []
    cur_slice: dict[str, Rate] = {k: Rate(k, "") for k in names}
    slice_first, done, gen_s = 0, 0, 0.0
    gc.collect()
    wall = perf()
    deadline = wall + args.build_budget
    for b in range((n + BLOCK - 1) // BLOCK):
        t = perf()
        chunks = batches(gen_block(b, min(BLOCK, n - b * BLOCK)))
        gen_s += perf() - t
        order = names[b % len(names) :] + names[: b % len(names)]  # rotate who goes first
        for name in order:
            step, tot, sl = steps[name], total[name], cur_slice[name]
            for chunk in chunks:
                before = (tot.seconds, tot.call_seconds, tot.events)
                step(chunk, tot)
                sl.seconds += tot.seconds - before[0]
                sl.call_seconds += tot.call_seconds - before[1]
                sl.events += tot.events - before[2]
        done += sum(map(len, chunks))
        over = perf() > deadline
        if done - slice_first >= args.slice or done >= n or over:
            if done >= n or over:  # the final flush belongs to the last slice
                flush = Rate("quipu", "flush")
                quipu_flush(store, flush)
                for r in (total["quipu"], cur_slice["quipu"]):
                    r.seconds += flush.seconds
                    r.call_seconds += flush.call_seconds
            slices.append((slice_first, done - slice_first, cur_slice))
            s = cur_slice
            print(
                f"  events {slice_first + 1:>9,}..{done:<9,} sqlite {fmt_rate(s['sqlite'].rate):>7} ev/s   "
                f"quipu {fmt_rate(s['quipu'].rate):>7} ev/s "
                f"(append_many {fmt_rate(s['quipu'].call_rate):>7})   "
                f"ceiling {fmt_rate(s['ceiling'].rate):>9} ev/s   [{perf() - wall:6.1f} s wall]",
                flush=True,
            )
            cur_slice, slice_first = {k: Rate(k, "") for k in names}, done
        if over:
            print(f"  build budget of {args.build_budget:.0f} s hit at {done:,} events (all systems alike)")
            break
    wall = perf() - wall
    if db.count() != done:
        raise RuntimeError(f"sqlite holds {db.count()} logs after {done:,} inserted")
    for name, r in total.items():
        if r.events != done:
            raise RuntimeError(f"{name} took {r.events:,} events, expected {done:,}")
    build = Build(done, n, total, slices, wall, gen_s)
    # Diagnostic only (a private attribute, read, never changed): how many registry records
    # (type definitions + entity versions) the build wrote, against the entities it named.
    registry = getattr(store, "_registry_table", None)
    build.registry_records = registry.tree_size if registry is not None else -1
    print(
        f"  built {done:,} events in {wall:.1f} s wall ({gen_s:.1f} s of it generating events, untimed); "
        f"quipu registry: {build.registry_records:,} records for <= "
        f"{ACTORS + DOCS + FOLDERS + PROJECTS:,} entities",
        flush=True,
    )
    mem("phase 2 (build)")
    return build, Stores(store, db, q_root, s_root)


def print_build_table(build: Build) -> None:
    t = build.rates
    sq, qu, ce = t["sqlite"], t["quipu"], t["ceiling"]
    print(
        f"\n--- Append throughput at {build.events:,} events (store-call time only, generation excluded) ---"
    )
    header = (
        f"{'system':7} {'style':38} {'events':>9} {'seconds':>8} {'ev/s':>9} {'us/ev':>7} "
        f"{'vs sqlite':>9} {'of ceiling':>10}"
    )
    bk.print_header(header)
    rows = [
        ("sqlite", "end to end (row tuples + executemany)", sq.seconds),
        ("sqlite", "executemany + commit call only", sq.call_seconds),
        ("quipu", "end to end (AuditEvent + append)", qu.seconds),
        ("quipu", "append_many call only", qu.call_seconds),
        ("quipu", "AuditEvent construction only", qu.seconds - qu.call_seconds),
        ("ceiling", ce.style, ce.seconds),
    ]
    for system, style, secs in rows:
        rate = ratio(build.events, secs)
        print(
            f"{system:7} {style:38} {build.events:>9,} {secs:>8.2f} {fmt_rate(rate):>9} "
            f"{secs / build.events * 1e6:>7.1f} {ratio(rate, sq.rate):>8.2f}x "
            f"{ratio(rate, ce.rate) * 100:>9.1f}%"
        )
    print("\n--- Throughput per slice (ev/s; quipu/sqlite ratio of end-to-end rates) ---")
    header = (
        f"{'events':>21} {'sqlite':>9} {'quipu e2e':>10} {'quipu call':>10} {'ceiling':>10} "
        f"{'quipu/sqlite':>12} {'sqlite % ceil':>13} {'quipu % ceil':>12}"
    )
    bk.print_header(header)
    for first, count, s in build.slices:
        print(
            f"{first + 1:>10,}..{first + count:<10,} {fmt_rate(s['sqlite'].rate):>9} "
            f"{fmt_rate(s['quipu'].rate):>10} {fmt_rate(s['quipu'].call_rate):>10} "
            f"{fmt_rate(s['ceiling'].rate):>10} {ratio(s['quipu'].rate, s['sqlite'].rate):>11.2f}x "
            f"{ratio(s['sqlite'].rate, s['ceiling'].rate) * 100:>12.1f}% "
            f"{ratio(s['quipu'].rate, s['ceiling'].rate) * 100:>11.1f}%"
        )


# --- phase 3/4: queries ----------------------------------------------------------------


@dataclass
class QueryCase:
    label: str
    args: list[tuple]
    quipu: Callable[..., object]
    sqlite: Callable[..., object]
    check: Callable[[object, object, tuple], bool]
    describe: str


def time_case(case: QueryCase, budget: float, warm: int) -> tuple[Latency, Latency, int, int]:
    """Interleaved sqlite/quipu calls over case.args (the first `warm` untimed, except the
    very first call of each, reported as first_ms); returns latencies, agreements, checks."""
    lats = {"quipu": Latency(case.label, "quipu"), "sqlite": Latency(case.label, "sqlite")}
    fns = {"quipu": case.quipu, "sqlite": case.sqlite}
    agree = checked = 0
    deadline = perf() + budget
    for i, a in enumerate(case.args):
        out = {}
        for name in ("quipu", "sqlite") if i % 2 else ("sqlite", "quipu"):
            start = perf()
            out[name] = fns[name](*a)
            ms = (perf() - start) * 1e3
            if i == 0:
                lats[name].first_ms = ms
            if i >= warm:
                lats[name].samples.append(ms)
        checked += 1
        agree += bool(case.check(out["quipu"], out["sqlite"], a))
        if perf() > deadline and i >= warm:
            break
    return lats["quipu"], lats["sqlite"], agree, checked


def windows(rng: random.Random, events: int, count: int) -> list[tuple[int, int]]:
    """Random [lo, hi) ranges covering a quarter of the time span each."""
    span = events * STEP
    out = []
    for _ in range(count):
        lo = T0 + rng.randrange(0, max(1, span - span // 4))
        out.append((lo, lo + span // 4))
    return out


def phase_queries(
    stores: Stores, events: int, args: argparse.Namespace
) -> tuple[list[tuple[Latency, Latency, int, int, str]], dict[str, object]]:
    store, db = stores.store, stores.db
    assert store is not None and db is not None
    warm = 3
    reps = args.reps + warm
    rng = random.Random(SEED + 7)
    docs = rng.sample(range(DOCS), reps + max(args.renames, reps) + 2)
    q_docs, renamed = docs[:reps], docs[reps : reps + max(args.renames, reps)]
    actors = [f"u{a}" for a in rng.sample(range(ACTORS), reps)]
    info: dict[str, object] = {}
    results = []

    print(
        f"\n=== Phase 3: queries on {events:,} events ({args.reps} timed repetitions each after {warm} "
        f"warm-up, each on another doc/actor, sqlite and quipu interleaved) ==="
    )
    scanned, decoded = [], []

    def quipu_latest(name: str) -> list[int]:
        page = store.query(q_latest(name))
        scanned.append(page.segments_scanned)
        decoded.append(page.rows_decoded)
        return [log["occurred_at"] for log in page.logs]

    def sqlite_latest(name: str) -> list[int]:
        return [row[1] for row in db.latest(name)]

    cases = [
        QueryCase(
            "latest 100 by doc name",
            [(doc_name(d),) for d in q_docs],
            quipu_latest,
            sqlite_latest,
            lambda q, s, a: q == s,
            "100 newest events whose targets include the document named X",
        ),
        QueryCase(
            "count DELETE by actor+range",
            [(actor, lo, hi) for actor, (lo, hi) in zip(actors, windows(rng, events, reps), strict=True)],
            lambda actor, lo, hi: store.count(q_actor_deletes(actor, lo, hi)),
            db.actor_deletes,
            lambda q, s, a: q == s,
            "DELETEs by one actor in a 25% time window",
        ),
    ]
    for case in cases:
        q, s, agree, checked = time_case(case, args.budget, warm)
        results.append((q, s, agree, checked, case.describe))
        print(
            f"  {case.label:30} quipu median {q.median:8.3f} ms   sqlite median {s.median:8.3f} ms   "
            f"agree {agree}/{checked}",
            flush=True,
        )
    info["latest_scanned"] = statistics.median(scanned) if scanned else float("nan")
    info["latest_decoded"] = statistics.median(decoded) if decoded else float("nan")
    info["latest_hits"] = statistics.median(len(sqlite_latest(doc_name(d))) for d in q_docs[:5])
    mem("phase 3 (queries)")

    # Phase 4: renames, then the old names.
    print(f"\n=== Phase 4: rename {len(renamed):,} documents, then query them by their OLD name ===")
    rrng = random.Random(SEED + 11)
    renames = [rename_event(d, k, events, rrng) for k, d in enumerate(renamed)]
    q_rate, s_rate = Rate("quipu", "rename"), Rate("sqlite", "rename")
    for chunk in batches(renames):
        quipu_many(store, chunk, q_rate)
        db.insert_many(chunk, s_rate)
    quipu_flush(store, q_rate)
    info["renames"] = (len(renames), q_rate.seconds, s_rate.seconds)
    print(
        f"  appended {len(renames):,} rename events: quipu {q_rate.seconds * 1e3:.1f} ms, "
        f"sqlite {s_rate.seconds * 1e3:.1f} ms",
        flush=True,
    )
    rename_ts = {doc_name(d): e["occurred_at"] for d, e in zip(renamed, renames, strict=True)}

    def check_old_latest(q: list[int], s: list[int], a: tuple) -> bool:
        # quipu matches the entity (any version named X): its rows written under X plus the
        # rename event itself, the newest; sqlite only the rows written under X.
        return bool(q) and q[0] == rename_ts[a[0]] and q[1:] == s[: len(q) - 1]

    old_cases = [
        QueryCase(
            "renamed: latest 100 by OLD name",
            [(doc_name(d),) for d in renamed[:reps]],
            quipu_latest,
            sqlite_latest,
            check_old_latest,
            "same, for a renamed document by its old name (past values)",
        ),
        QueryCase(
            "renamed: count DELETE by OLD name",
            [(doc_name(d), lo, hi) for d, (lo, hi) in zip(renamed, windows(rng, events, reps), strict=False)],
            lambda name, lo, hi: store.count(q_doc_deletes(name, lo, hi)),
            db.doc_deletes,
            lambda q, s, a: q == s,
            "DELETEs on a renamed document (by old name) in a 25% time window",
        ),
    ]
    scanned.clear()
    decoded.clear()
    for case in old_cases:
        q, s, agree, checked = time_case(case, args.budget, warm)
        results.append((q, s, agree, checked, case.describe))
        print(
            f"  {case.label:33} quipu median {q.median:8.3f} ms   sqlite median {s.median:8.3f} ms   "
            f"agree {agree}/{checked}",
            flush=True,
        )
    # The semantics differ on the NEW name: quipu finds the entity's whole history.
    d = renamed[0]
    info["new_name"] = (doc_name(d, 2), len(quipu_latest(doc_name(d, 2))), len(sqlite_latest(doc_name(d, 2))))
    mem("phase 4 (renames + past-value queries)")
    return results, info


def print_query_table(results: list[tuple[Latency, Latency, int, int, str]], info: dict[str, object]) -> None:
    print("\n--- Query latency (ms; warm page cache; quipu query incl. LogQuery construction) ---")
    header = (
        f"{'query':34} {'system':6} {'n':>3} {'median':>9} {'p90':>9} {'max':>9} {'first':>9} "
        f"{'quipu/sqlite':>12} {'agree':>7}"
    )
    bk.print_header(header)
    for q, s, agree, checked, _ in results:
        for lat in (s, q):
            rel = f"{ratio(q.median, s.median):.2f}x" if lat is q else ""
            ok = f"{agree}/{checked}" if lat is q else ""
            print(
                f"{lat.label:34} {lat.system:6} {len(lat.samples):>3} {lat.median:>9.3f} "
                f"{lat.pct(0.9):>9.3f} {max(lat.samples, default=float('nan')):>9.3f} "
                f"{lat.first_ms:>9.3f} {rel:>12} {ok:>7}"
            )
    print("  first = the first call of its kind (untimed warm-up call 1 of 3)")
    for q, _, _, _, describe in results:
        print(f"  {q.label}: {describe}")
    print(
        f"  quipu 'latest 100 by doc name': median {info.get('latest_scanned', float('nan')):.0f} segment "
        f"indexes consulted, {info.get('latest_decoded', float('nan')):.0f} rows decoded per query"
    )
    print(
        "  sqlite returns the logs columns only (no target list per hit: the schema has no index on "
        "targets.log_rowid); quipu renders actor + every target as recorded. This favours sqlite."
    )
    name, nq, ns = info.get("new_name", ("?", 0, 0))
    print(
        f"  semantics: by OLD name sqlite finds the rows written under it, quipu the whole entity "
        f"(rows + the rename); by NEW name '{name}': quipu {nq} rows (history incl. past names), "
        f"sqlite {ns} row(s)"
    )


# --- phase 5: disk and open ----------------------------------------------------------


def phase_disk_open(
    stores: Stores, keys: KeyRing, events: int, args: argparse.Namespace
) -> dict[str, object]:
    print("\n=== Phase 5: bytes on disk, AuditStore open time ===")
    info: dict[str, object] = {}
    q_root, s_root = stores.q_root, stores.s_root
    assert stores.store is not None and stores.db is not None
    newest = stores.store.query(LogQuery(limit=1)).logs[0]["occurred_at"]
    stores.store.close()
    stores.db.close()
    stores.store = stores.db = None
    gc.collect()
    info["rss_closed"] = rss_mib()
    print(f"  both stores closed and released: current RSS {info['rss_closed']:,.1f} MiB")
    info["quipu_disk"], info["sqlite_disk"] = disk_usage(q_root), disk_usage(s_root)
    info["quipu_parts"], info["sqlite_parts"] = disk_breakdown(q_root), disk_breakdown(s_root)
    print(
        f"  quipu  {mib(info['quipu_disk'][0])} apparent, {mib(info['quipu_disk'][1])} allocated\n"
        f"  sqlite {mib(info['sqlite_disk'][0])} apparent, {mib(info['sqlite_disk'][1])} allocated "
        "(after close: WAL checkpointed)",
        flush=True,
    )
    rng = random.Random(SEED + 13)
    opens, firsts, rss_open = [], [], []
    for i in range(args.opens):
        gc.collect()
        start = perf()
        reopened = open_store(q_root, keys, define=False)
        opens.append(perf() - start)
        try:
            d, a = rng.randrange(DOCS), f"u{rng.randrange(ACTORS)}"
            lo, hi = windows(rng, events, 1)[0]
            start = perf()
            reopened.query(q_latest(doc_name(d)))
            t_latest = perf() - start
            start = perf()
            reopened.count(q_actor_deletes(a, lo, hi))
            t_count = perf() - start
            firsts.append((t_latest, t_count))
            if reopened.query(LogQuery(limit=1)).logs[0]["occurred_at"] != newest:
                raise RuntimeError("the reopened store does not end with the event it was closed with")
            rss_open.append(rss_mib())  # every sealed index is loaded by now (the count)
        finally:
            reopened.close()
            del reopened
            gc.collect()
        print(
            f"  open {i + 1}: {opens[-1] * 1e3:8.1f} ms; then first 'latest 100' {t_latest * 1e3:8.1f} ms, "
            f"first 'count by actor' {t_count * 1e3:8.1f} ms; RSS with it open {rss_open[-1]:,.1f} MiB, "
            f"after close {rss_mib():,.1f} MiB",
            flush=True,
        )
    info["opens"], info["first_after_open"], info["rss_open"] = opens, firsts, rss_open
    # Diagnostic, not what a user gets: how much of open is the cyclic GC walking the
    # objects the registry replay creates.
    gc.collect()
    gc.disable()
    try:
        start = perf()
        reopened = open_store(q_root, keys, define=False)
        info["open_nogc"] = perf() - start
        reopened.close()
        del reopened
    finally:
        gc.enable()
        gc.collect()
    print(f"  diagnostic: open with the cyclic GC disabled: {info['open_nogc'] * 1e3:,.1f} ms")
    mem("phase 5 (disk + open)")
    return info


def print_disk_table(info: dict[str, object], events: int) -> None:
    print(f"\n--- Bytes on disk at {events:,} events (+ renames) ---")
    for system in ("sqlite", "quipu"):
        apparent, allocated = info[f"{system}_disk"]
        print(
            f"  {system:6} {mib(apparent):>13} apparent  {mib(allocated):>13} allocated (du)  "
            f"{apparent / max(events, 1):7.0f} B/event"
        )
        parts = sorted(info[f"{system}_parts"].items(), key=lambda kv: -kv[1])
        print("         " + ", ".join(f"{k} {mib(v)}" for k, v in parts[:8]))
    q, s = info["quipu_disk"][0], info["sqlite_disk"][0]
    print(f"  quipu / sqlite (apparent) = {ratio(q, s):.2f}x")
    opens = info["opens"]
    print(f"\n--- AuditStore open at {events:,} events (close, then AuditStore.open; warm page cache) ---")
    print(
        f"  open: {', '.join(f'{o * 1e3:.1f} ms' for o in opens)} "
        f"(median {statistics.median(opens) * 1e3:.1f} ms; it replays the registry and indexes "
        f"the active segment); with the GC disabled "
        f"(diagnostic) {info['open_nogc'] * 1e3:.1f} ms"
    )
    lat = [t for t, _ in info["first_after_open"]]
    cnt = [c for _, c in info["first_after_open"]]
    print(
        f"  first 'latest 100' after open (loads sealed .qidx files): median "
        f"{statistics.median(lat) * 1e3:.1f} ms; first 'count by actor' after it: "
        f"{statistics.median(cnt) * 1e3:.1f} ms"
    )
    print(
        f"  current RSS: {info['rss_closed']:,.1f} MiB with both stores closed, "
        f"{max(info['rss_open']):,.1f} MiB with the reopened store open and every index loaded"
    )


# --- summary -------------------------------------------------------------------------


def print_summary(
    build: Build, queries: list[tuple[Latency, Latency, int, int, str]], disk: dict[str, object]
) -> None:
    print("\n=== Targets (from the issue) ===")
    sq, qu, ce = build.rates["sqlite"], build.rates["quipu"], build.rates["ceiling"]
    rows: list[tuple[str, str, str, str]] = []
    for label, rate in (
        ("append end to end vs sqlite", qu.rate),
        ("append_many call only vs sqlite", qu.call_rate),
    ):
        r = ratio(rate, sq.rate)
        rows.append(
            (
                f"{label} at {build.events:,}",
                f"{r:.2f}x ({fmt_rate(rate)} vs {fmt_rate(sq.rate)} ev/s)",
                f">= {TARGET_APPEND_RATIO:.1f}x",
                "PASS" if r >= TARGET_APPEND_RATIO else "MISS",
            )
        )
    for name, rate in (("sqlite", sq.rate), ("quipu end to end", qu.rate), ("quipu call only", qu.call_rate)):
        rows.append((f"{name} as a share of the ceiling", f"{ratio(rate, ce.rate) * 100:.1f}%", "-", "info"))
    for q, s, agree, checked, _ in queries:
        r = ratio(q.median, s.median)
        verdict = "PASS" if r <= TARGET_QUERY_RATIO else "MISS"
        if agree != checked:
            verdict += f" (results disagree {checked - agree}/{checked})"
        rows.append(
            (
                f"{q.label}",
                f"{r:.2f}x ({q.median:.3f} vs {s.median:.3f} ms)",
                f"<= {TARGET_QUERY_RATIO:.1f}x",
                verdict,
            )
        )
    peak = max((p for _, p, _ in MEMORY), default=float("nan"))
    rows.append(
        (
            f"peak RSS (whole process, both systems) at {build.events:,}",
            f"{peak:,.1f} MiB",
            f"< {TARGET_RSS_MIB:,.0f} MiB",
            "PASS" if peak < TARGET_RSS_MIB else "MISS",
        )
    )
    if disk.get("rss_open"):
        rss_open = max(disk["rss_open"])
        rows.append(
            (
                f"current RSS, reopened {build.events:,} store open (sqlite closed)",
                f"{rss_open:,.1f} MiB",
                f"< {TARGET_RSS_MIB:,.0f} MiB",
                "PASS" if rss_open < TARGET_RSS_MIB else "MISS",
            )
        )
    opens = disk.get("opens")
    if opens:
        rows.append(
            (f"AuditStore.open at {build.events:,}", f"{statistics.median(opens) * 1e3:.1f} ms", "-", "info")
        )
    bk.print_targets(rows)
    if build.events < TARGET_EVENTS:
        print(f"  (targets are stated at {TARGET_EVENTS:,} events; this run stored {build.events:,})")

    bk.print_memory(40)


# --- profile -------------------------------------------------------------------------


def run_profile(tmp: Path, keys: KeyRing, args: argparse.Namespace) -> None:
    """cProfile of AuditStore.append_many (events prebuilt, untimed), after an unprofiled
    run of the same events for the true rate. Main thread only (the group-commit timer
    thread's fsyncs are not in it; the count-triggered ones are)."""
    n = args.profile_events
    dicts = [e for b in range((n + BLOCK - 1) // BLOCK) for e in gen_block(b, min(BLOCK, n - b * BLOCK))]
    chunks = [[to_event(e) for e in c] for c in batches(dicts)]

    def run(root: Path, profiler: cProfile.Profile | None) -> tuple[int, float]:
        store = open_store(root, keys)
        gc.collect()
        start = perf()
        if profiler is not None:
            profiler.enable()
        done = run_chunks(chunks, store.append_many, args.budget)
        store.flush()
        if profiler is not None:
            profiler.disable()
        elapsed = perf() - start
        store.close()
        shutil.rmtree(root)
        return done, elapsed

    done, plain = run(tmp / "profile-plain", None)
    print(
        f"\n=== Unprofiled: AuditStore.append_many {BATCH}, {done:,} events, {plain:.2f} s = "
        f"{fmt_rate(done / plain)} ev/s (AuditEvent construction excluded) ==="
    )
    gc.collect()
    gc.disable()  # diagnostic: how much of that is the cyclic GC (cProfile charges it to whatever runs)
    try:
        done_nogc, nogc = run(tmp / "profile-nogc", None)
    finally:
        gc.enable()
    print(
        f"  diagnostic, same run with the cyclic GC disabled: {nogc:.2f} s = "
        f"{fmt_rate(done_nogc / nogc)} ev/s "
        f"(GC ~{max(0.0, 1 - nogc / plain) * 100:.0f}% of the unprofiled time)"
    )
    profiler = cProfile.Profile()
    done, elapsed = run(tmp / "profile", profiler)
    print(
        f"\n=== cProfile: AuditStore.append_many {BATCH}, {done:,} events, {elapsed:.2f} s under the "
        f"profiler ({fmt_rate(done / elapsed)} ev/s; cProfile inflates call overhead) ==="
    )
    stats = bk.print_profile(profiler, args.profile_top)

    by_file: dict[str, list[float]] = {}
    total = 0.0
    for (filename, _, func), (_, ncalls, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            key = f"builtin {builtin_name(func)}"
        else:
            parts = Path(filename).parts
            key = "/".join(parts[parts.index("quipu") :]) if "quipu" in parts else Path(filename).name
        acc = by_file.setdefault(key, [0.0, 0])
        acc[0] += tottime
        acc[1] += ncalls
        total += tottime
    print(f"--- self time by file / builtin (top {args.profile_top}; {total:.2f} s total) ---")
    for key, (tt, calls) in sorted(by_file.items(), key=lambda kv: -kv[1][0])[: args.profile_top]:
        print(f"  {tt:7.3f} s {tt / total * 100:5.1f}%  {calls:>10,} calls  {key}")
    print(f"--- cumulative time of quipu functions (top {args.profile_top}; share of {total:.2f} s) ---")
    quipu_funcs = [
        (ct, nc, f"{'/'.join(Path(fn).parts[Path(fn).parts.index('quipu') :])}:{line}({func})")
        for (fn, line, func), (_, nc, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "quipu" in Path(fn).parts and not func.startswith("<")
    ]
    for ct, nc, name in sorted(quipu_funcs, reverse=True)[: args.profile_top]:
        print(f"  {ct:7.3f} s {ct / total * 100:5.1f}%  {nc:>10,} calls  {name}")


def builtin_name(func: str) -> str:
    """ "<method 'get' of 'dict' objects>" -> dict.get; "<built-in method posix.fsync>" -> posix.fsync."""
    if func.startswith("<method '"):
        name, _, owner = func[len("<method '") :].partition("' of '")
        return f"{owner.split(chr(39))[0]}.{name}"
    for prefix in ("<built-in method ", "<built-in function "):
        if func.startswith(prefix):
            return func[len(prefix) :].rstrip(">")
    return func


# --- main ----------------------------------------------------------------------------


def git_head() -> str:
    """The checked-out commit of the quipu tree measured, with a mark when quipu/ has edits."""
    repo = Path(quipu_store.__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "quipu"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" + uncommitted changes in quipu/" if dirty else "")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the full build")
    ap.add_argument("--slice", type=int, default=200_000, help="report throughput per this many events")
    ap.add_argument("--small-events", type=int, default=20_000, help="events per phase-1 case")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the phase-1 cases")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per query kind")
    ap.add_argument("--renames", type=int, default=100, help="documents renamed in phase 4")
    ap.add_argument("--opens", type=int, default=3, help="AuditStore.open repetitions")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds cap per measured loop")
    ap.add_argument(
        "--build-budget", type=float, default=900.0, help="seconds cap for the phase-2 build (wall)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 50k events, few repetitions")
    ap.add_argument("--profile", action="store_true", help="only profile AuditStore.append_many")
    ap.add_argument("--profile-events", type=int, default=50_000)
    ap.add_argument("--profile-top", type=int, default=20)
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.slice, args.small_events, args.repeat = 50_000, 10_000, 5_000, 1
        args.reps, args.renames, args.budget, args.build_budget = 10, 20, 20.0, 180.0
        args.profile_events = 10_000
    bk.require_positive(
        ap, args, ("events", "slice", "small_events", "repeat", "reps", "renames", "opens", "profile_events")
    )
    if args.slice % BLOCK:
        ap.error(f"--slice must be a multiple of {BLOCK:,} (the interleaving block)")
    if args.renames > DOCS // 2:
        ap.error(f"--renames must be at most {DOCS // 2:,}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wall = perf()
    bk.machine_info(
        [
            ("orjson", orjson.__version__),
            ("quipu", f"{Path(quipu_store.__file__).parent} (commit {git_head()})"),
        ]
    )
    start = perf()
    keys = KeyRing.generate()
    print(f"  setup       KeyRing.generate() (RSA-2048 + HMAC) in {perf() - start:.2f} s (not timed)")
    mode = "quick" if args.quick else "full"
    if args.profile:
        print(f"  run         profile ({mode}): --profile-events {args.profile_events:,}")
    else:
        print(
            f"  run         {mode}: --events {args.events:,}, --slice {args.slice:,}, "
            f"--small-events {args.small_events:,}, --repeat {args.repeat}, --reps {args.reps}, "
            f"--renames {args.renames}, budget {args.budget:.0f} s/loop, "
            f"build budget {args.build_budget:.0f} s"
        )
        shares = "/".join(str(b - a) for a, b in zip((0, *METHOD_CUM), METHOD_CUM, strict=False))
        print(
            f"  events      {ACTORS:,} actors, {DOCS:,} documents, {FOLDERS} folders, {PROJECTS} projects; "
            f"1-3 targets; {'/'.join(METHODS)} {shares} %; ~{CONTENT_BYTES} B content"
        )
    mem("setup")
    with bk.bench_tmpdir("quipu-bench-store-") as tmp:
        if args.profile:
            run_profile(tmp, keys, args)
            return 0
        small = phase_small(tmp, keys, args)
        build, stores = phase_build(tmp, keys, args)
        try:
            queries, qinfo = phase_queries(stores, build.events, args)
        except BaseException:
            if stores.store is not None:
                stores.store.close()
            if stores.db is not None:
                stores.db.close()
            raise
        disk = phase_disk_open(stores, keys, build.events, args)
        del stores
    print_small_table(small)
    print_build_table(build)
    print_query_table(queries, qinfo)
    print_disk_table(disk, build.events)
    print_summary(build, queries, disk)
    print(f"\nTotal wall time {perf() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
