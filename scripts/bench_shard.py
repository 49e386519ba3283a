#!/usr/bin/env python3
"""Shard benchmark (issue 4): a real `quipu shard serve` process over HTTP on loopback,
against the embedded AuditStore, on identical events.

    .venv/bin/python scripts/bench_shard.py --quick     # smoke test, < 30 s
    .venv/bin/python scripts/bench_shard.py             # 3 interleaved rounds, ~3 min
    .venv/bin/python scripts/bench_shard.py --profile   # cProfile of the shard under load

Events are scripts/bench_store.py's (1,000 actors, 5,000 documents, 1-3 targets, ~100 B of
content, deterministic), each with its own Idempotency-Key. Generation and JSON encoding
happen before any timing; every run gets a fresh shard (or store) in a temp dir under /tmp.

Cases, run in --repeat interleaved rounds; the median-rate round is kept, p50/p99 are the
medians over the rounds:
  embedded    AuditStore.append_many per 1,000 in this process + flush, sync policy
              every_n_or_interval:1000:0.02 (the shard's default). Its rate counts the
              append_many and flush calls; building the AuditEvents (AuditEvent.from_json,
              what the shard does per event) is reported beside it.
  single xN   POST /v1/logs, one event per request, N = 1, 8, 64 concurrent clients
              (aiohttp, one session, keep-alive, N tasks pulling from one list).
  batch xN    POST /v1/logs/batch, a JSON array of 1,000 events (per-event idempotency_key),
              N = 1 (sequential), 2, 4 concurrent senders.
Every HTTP run ends with POST /v1/admin/flush, and its rate counts until the flush answers:
events accepted AND durable (`accepted` stops at the last 202). Answers 503/`retry`
(write queue full) are re-sent after a backoff and counted. After the timing, the shard's
/v1/logs/count must equal the events accepted.

The load generator shares the machine's CPU with the shard, so each run reports the CPU
seconds of the shard process (psutil, split into its event-loop thread and the rest: the
writer, the group-commit timer, the thread pool) and of this process, and the shard's
events per CPU-second: what the HTTP path costs whatever the client costs.

--profile runs the embedded case with the cyclic GC's CPU time counted, then single x8 and
batch x1 three times each: as `quipu shard serve`; with the GC's time counted in the shard;
with the shard under cProfile (one profiler per thread, each on its thread's CPU-time
clock). It prints the top functions by cumulative and by self time for each busy thread.
"""

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import marshal
import math
import os
import pstats
import re
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import aiohttp
import benchkit as bk
import orjson
import psutil
from bench_store import (
    ACTOR_TYPE,
    BATCH,
    BLOCK,
    GROUP_COMMIT,
    TARGET_TYPES,
    builtin_name,
    gen_block,
    git_head,
    open_store,
)
from benchkit import fmt_rate, perf, ratio

from quipu.core.event import AuditEvent
from quipu.core.keyring import KeyRing
from quipu.core.schema import FieldDef, TypeSchema

# tests/shard_proc.py is the one place that knows how to write a shard's keys and config and
# start `quipu shard serve`; the tests dir is not a package, so it goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shard_proc import ShardProcess, define_types, start_process

SYNC_POLICY = f"every_n_or_interval:{GROUP_COMMIT[0]}:{GROUP_COMMIT[1]:g}"  # = open_store's
SINGLE_CLIENTS = (1, 8, 64)
BATCH_SENDERS = (1, 2, 4)
MAX_BODY_BYTES = 8 << 20  # a 1,000-event batch is ~0.5 MB; shard_proc's test limit is 256 KiB
RETRY_BACKOFF = 0.005  # seconds, doubled per attempt, after a 503 / "retry"
MAX_ATTEMPTS = 12
CLIENT_TIMEOUT = 120.0

TARGET_BATCH_RATIO = 0.5  # batch HTTP ev/s >= 0.5x embedded append_many ev/s
TARGET_CLIENTS = 8
TARGET_SINGLE_RATE = 5000.0  # single-event ev/s at 8 clients
TARGET_SINGLE_P99_MS = 20.0

INSTRUMENT_DIR = "instrument"  # in an instrumented shard's base dir: gc.json, *.prof
GC_FILE = "gc.json"
PROFILE_MIN_SHARE = 0.05  # threads with less of the profiled CPU get a summary line only


# --- inputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """Everything a run sends, encoded before any timing."""

    events: list[dict]  # bench_store's AppendRequest dicts, --events of them
    keys: list[str]  # one Idempotency-Key per event
    single_bodies: list[bytes]  # the first --single-events, one JSON body each
    batch_items: list[list[dict]]  # per 1,000: the dicts with their idempotency_key
    batch_bodies: list[bytes]  # those, one JSON array each


def make_inputs(events: int, single: int) -> Inputs:
    dicts = [
        e for b in range((events + BLOCK - 1) // BLOCK) for e in gen_block(b, min(BLOCK, events - b * BLOCK))
    ]
    keys = [f"bench-{i:09d}" for i in range(events)]
    items = [{**d, "idempotency_key": k} for d, k in zip(dicts, keys, strict=True)]
    batch_items = [items[k : k + BATCH] for k in range(0, events, BATCH)]
    return Inputs(
        events=dicts,
        keys=keys,
        single_bodies=[orjson.dumps(d) for d in dicts[:single]],
        batch_items=batch_items,
        batch_bodies=[orjson.dumps(chunk) for chunk in batch_items],
    )


def type_schemas() -> list[TypeSchema]:
    """The types bench_store's events use (open_store defines the same for the embedded case)."""
    text_name = (FieldDef.text("name").idx(),)
    return [TypeSchema(ACTOR_TYPE, text_name), *(TypeSchema(t, text_name) for t in TARGET_TYPES)]


# --- results -------------------------------------------------------------------------


@dataclass
class Run(bk.LatencyStats):
    case: str
    planned: int
    events: int = 0  # accepted ("queued") and, after the flush, durable
    seconds: float = 0.0  # HTTP: first request .. flush answered; embedded: append_many + flush
    accept_seconds: float = 0.0  # HTTP: first request .. last 202
    build_seconds: float = 0.0  # embedded: AuditEvent.from_json of the dicts
    samples: list[float] = field(default_factory=list)  # per-request latency, ms
    shard_cpu: float = math.nan
    shard_loop_cpu: float = math.nan  # the shard's main thread: the aiohttp event loop
    bench_cpu: float = 0.0
    other_cpu: float = 0.0  # the rest of the machine's busy CPU meanwhile: other processes' load
    shard_rss_mib: float = math.nan
    retries: int = 0  # requests (or events of a batch) re-sent after 503 / "retry"
    duplicates: int = 0
    stored: int | None = None  # /v1/logs/count after the run
    note: str = ""

    @property
    def rate(self) -> float:
        return bk.per_second(self.events, self.seconds)

    @property
    def accept_rate(self) -> float:
        return bk.per_second(self.events, self.accept_seconds)

    @property
    def flush_ms(self) -> float:
        return (self.seconds - self.accept_seconds) * 1000

    @property
    def shard_rate_per_cpu(self) -> float:
        return self.events / self.shard_cpu if self.shard_cpu > 0 else math.nan

    @property
    def wall(self) -> float:
        return self.seconds + self.build_seconds

    @property
    def wall_rate(self) -> float:
        """Embedded end to end: building the AuditEvents counted too."""
        return bk.per_second(self.events, self.wall)


@dataclass(frozen=True)
class CpuSnapshot:
    shard: float
    shard_loop: float
    bench: float
    machine: float

    @classmethod
    def take(cls, shard: psutil.Process | None) -> "CpuSnapshot":
        if shard is None:
            return cls(math.nan, math.nan, bk.cpu_seconds(), bk.machine_busy_seconds())
        # On Linux the main thread's id is the pid; threads that ended still count in the total.
        loop = next((t.user_time + t.system_time for t in shard.threads() if t.id == shard.pid), math.nan)
        return cls(bk.cpu_seconds(shard), loop, bk.cpu_seconds(), bk.machine_busy_seconds())

    def charge(self, run: Run, shard: psutil.Process | None) -> None:
        """Put the CPU used since this snapshot into `run`."""
        now = CpuSnapshot.take(shard)
        run.shard_cpu, run.shard_loop_cpu = now.shard - self.shard, now.shard_loop - self.shard_loop
        run.bench_cpu = now.bench - self.bench
        measured = run.bench_cpu + (0.0 if shard is None else run.shard_cpu)
        run.other_cpu = max(0.0, now.machine - self.machine - measured)
        if shard is not None:
            run.shard_rss_mib = shard.memory_info().rss / (1 << 20)


# --- the shard -----------------------------------------------------------------------


def start_shard(root: Path, shard_cls: type[ShardProcess] = ShardProcess) -> ShardProcess:
    root.mkdir(parents=True, exist_ok=True)
    # Retention off: the events are dated 2024 and must not age out mid-run.
    store = {"root": str(root / "store"), "sync_policy": SYNC_POLICY, "retention_days": None}
    shard = shard_cls.start(root, store=store, limits={"max_body_bytes": MAX_BODY_BYTES})
    try:
        define_types(shard, *(schema.to_json() for schema in type_schemas()))
    except BaseException:
        shard.stop()
        raise
    return shard


class InstrumentedShard(ShardProcess):
    """A shard run by this script's --serve-instrumented mode instead of `quipu shard serve`:
    the same serve call, with the cyclic GC's time counted and (cprofile) a profiler per thread.

    `python -m cProfile -m quipu.cli.main ...` would profile the event-loop thread only (on
    Python 3.11 a profiler hooks one thread), and the writer thread is half the write path.
    ShardProcess.launch fixes its command line, hence this override of it."""

    cprofile: ClassVar[bool] = True

    @property
    def out_dir(self) -> Path:
        return self.base / INSTRUMENT_DIR

    def launch(self) -> None:
        self.out_dir.mkdir(exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-instrumented", str(self.out_dir)]
        command = [*cmd, str(self.config_path), *(["--cprofile"] if self.cprofile else [])]
        self.proc, self.url = start_process(command, self.log_path)


def read_gc_clock(out_dir: Path) -> bk.GcClock:
    """What an instrumented shard's GcClock counted, once it has stopped."""
    clock = bk.GcClock()
    clock.runs, clock.seconds = orjson.loads((out_dir / GC_FILE).read_bytes())
    return clock


class GcCountedShard(InstrumentedShard):
    """Only the GC clock, no profiler: the shard at full speed."""

    cprofile = False


def serve_instrumented(out_dir: Path, config: Path, cprofile: bool) -> int:
    """Child mode: `quipu shard serve CONFIG` with a GcClock and, with cprofile, one profiler
    per thread. On SIGTERM the shard stops cleanly; then the GC figures land in out_dir/gc.json
    and each thread's stats in out_dir/<n>-<thread name>.prof.

    The profilers' clock is each thread's CPU time: with the GIL, a wall clock would charge a
    thread's waits for the other threads to whatever function it happened to be in."""
    from quipu.cli import main as cli
    from quipu.shard import serve  # noqa: F401 - imported before profiling: serving, not importing

    def new_profile() -> cProfile.Profile:
        return cProfile.Profile(time.thread_time_ns, 1e-9)

    profiles: list[tuple[str, cProfile.Profile]] = []

    def profile_this_thread(*_: object) -> None:
        # threading runs this as the new thread's first profile event; enable() then puts the
        # profiler in its place, for that thread only.
        profile = new_profile()
        profiles.append((threading.current_thread().name, profile))
        profile.enable()

    if cprofile:
        profiles.append(("MainThread", new_profile()))
        threading.setprofile(profile_this_thread)
        profiles[0][1].enable()
    with bk.GcClock() as clock:
        try:
            return cli.main(["shard", "serve", str(config)])
        finally:
            if cprofile:
                profiles[0][1].disable()
                threading.setprofile(None)  # type: ignore[arg-type]
            (out_dir / GC_FILE).write_bytes(orjson.dumps([clock.runs, clock.seconds]))
            for n, (name, profile) in enumerate(profiles):
                # snapshot_stats, not create_stats: disabling from here would act on this
                # thread, and a daemon thread may still be running.
                profile.snapshot_stats()
                if profile.stats:  # type: ignore[attr-defined]
                    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
                    with open(out_dir / f"{n:03d}-{safe}.prof", "wb") as out:
                        marshal.dump(profile.stats, out)  # type: ignore[attr-defined]


# --- HTTP clients --------------------------------------------------------------------


def bearer(shard: ShardProcess, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {shard.tokens[role]}", "Content-Type": "application/json"}


@dataclass(frozen=True)
class Target:
    """Where `drive` sends, flushes and counts: one shard, or a cluster's ingest front
    (bench_cluster.py), whose flush and count the router spreads over every shard."""

    url: str
    admin: dict[str, str]  # the flush's and the count's headers
    name: str  # in errors: "the shard holds ..."
    meter: Callable[[], Callable[[Run], None]]  # starts counting CPU; its result charges a run
    flushed: tuple[int, ...] = (204,)  # the flush answers that mean "all durable"


def shard_target(shard: ShardProcess) -> Target:
    """One shard; its CPU (and the event loop's share) counted with CpuSnapshot."""
    proc = psutil.Process(shard.proc.pid)

    def meter() -> Callable[[Run], None]:
        snapshot = CpuSnapshot.take(proc)
        return lambda run: snapshot.charge(run, proc)

    return Target(shard.url, bearer(shard, "admin"), "the shard", meter)


async def post_single(session: aiohttp.ClientSession, headers: dict, body: bytes, run: Run) -> None:
    for attempt in range(MAX_ATTEMPTS):
        async with session.post("/v1/logs", data=body, headers=headers) as resp:
            payload = await resp.read()
            if resp.status == 202:
                if orjson.loads(payload)["status"] == "duplicate":
                    run.duplicates += 1
                else:
                    run.events += 1
                return
            if resp.status not in (429, 503):
                raise RuntimeError(f"POST /v1/logs answered {resp.status}: {payload[:300]!r}")
        run.retries += 1
        await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
    raise RuntimeError(f"POST /v1/logs still refused after {MAX_ATTEMPTS} attempts")


async def post_batch(
    session: aiohttp.ClientSession, headers: dict, body: bytes, items: list[dict], run: Run
) -> None:
    """One batch; the events answered `retry` go again (alone) after a backoff."""
    for attempt in range(MAX_ATTEMPTS):
        async with session.post("/v1/logs/batch", data=body, headers=headers) as resp:
            payload = await resp.read()
            if resp.status not in (202, 503):
                raise RuntimeError(f"POST /v1/logs/batch answered {resp.status}: {payload[:300]!r}")
        answer = orjson.loads(payload)
        if answer["rejected"]:
            bad = next(r for r in answer["results"] if r["status"] == "rejected")
            raise RuntimeError(f"the shard rejected a benchmark event: {bad}")
        run.events += answer["queued"]
        run.duplicates += answer["duplicate"]
        if not answer["retry"]:
            return
        run.retries += answer["retry"]
        items = [items[r["index"]] for r in answer["results"] if r["status"] == "retry"]
        body = orjson.dumps(items)
        await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
    raise RuntimeError(f"POST /v1/logs/batch: events still refused after {MAX_ATTEMPTS} attempts")


async def drive(
    target: Target,
    run: Run,
    workers: int,
    units: int,
    send: Callable[[aiohttp.ClientSession, int], Awaitable[None]],
    budget: float,
) -> Run:
    """`workers` tasks pull unit numbers 0..units-1 from one counter and `send` each, until
    done or `budget` seconds have passed; then one flush. The timing covers both, and the
    count must then equal what was accepted."""
    connector = aiohttp.TCPConnector(limit=workers)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(base_url=target.url, connector=connector, timeout=timeout) as session:
        next_unit = 0
        gc.collect()
        charge = target.meter()
        start = perf()
        deadline = start + budget

        async def worker() -> None:
            nonlocal next_unit
            while next_unit < units and perf() < deadline:
                unit, next_unit = next_unit, next_unit + 1
                t0 = perf()
                await send(session, unit)
                run.samples.append((perf() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(workers)))
        accepted = perf()
        async with session.post("/v1/admin/flush", headers=target.admin) as resp:
            if resp.status not in target.flushed:
                raise RuntimeError(
                    f"POST /v1/admin/flush to {target.name} answered {resp.status}: {await resp.text()}"
                )
        done = perf()
        charge(run)
        run.accept_seconds, run.seconds = accepted - start, done - start
        async with session.post("/v1/logs/count", data=b"{}", headers=target.admin) as resp:
            run.stored = (await resp.json())["count"]
    if run.stored != run.events:
        raise RuntimeError(f"{run.case}: {target.name} holds {run.stored} logs, {run.events} were accepted")
    notes = [f"{run.retries:,} re-sent after 503/retry"] if run.retries else []
    notes += [f"{run.duplicates:,} answered duplicate"] if run.duplicates else []
    run.note = "; ".join(notes)
    return run


def single_case(
    clients: int, inputs: Inputs, budget: float, shard_cls: type[ShardProcess] = ShardProcess
) -> Callable[[Path], Run]:
    def case(root: Path) -> Run:
        shard = start_shard(root, shard_cls)
        try:
            headers = bearer(shard, "service")
            run = Run(f"single x{clients}", planned=len(inputs.single_bodies))

            def send(session: aiohttp.ClientSession, i: int) -> Awaitable[None]:
                h = {**headers, "Idempotency-Key": inputs.keys[i]}
                return post_single(session, h, inputs.single_bodies[i], run)

            return asyncio.run(
                drive(shard_target(shard), run, clients, len(inputs.single_bodies), send, budget)
            )
        finally:
            shard.stop()

    return case


def batch_case(
    senders: int, inputs: Inputs, budget: float, shard_cls: type[ShardProcess] = ShardProcess
) -> Callable[[Path], Run]:
    def case(root: Path) -> Run:
        shard = start_shard(root, shard_cls)
        try:
            headers = bearer(shard, "service")
            run = Run(f"batch x{senders}", planned=len(inputs.events))

            def send(session: aiohttp.ClientSession, k: int) -> Awaitable[None]:
                return post_batch(session, headers, inputs.batch_bodies[k], inputs.batch_items[k], run)

            return asyncio.run(
                drive(shard_target(shard), run, senders, len(inputs.batch_bodies), send, budget)
            )
        finally:
            shard.stop()

    return case


# --- embedded ------------------------------------------------------------------------


def embedded_case(inputs: Inputs, keys: KeyRing, budget: float) -> Callable[[Path], Run]:
    def case(root: Path) -> Run:
        store = open_store(root, keys)  # group commit (1000, 20 ms) and the types, as the shard
        run = Run("embedded", planned=len(inputs.events))
        try:
            gc.collect()
            cpu = CpuSnapshot.take(None)

            def step(chunk: list[dict]) -> None:
                t0 = perf()
                events = []
                for item in chunk:  # what the shard does per batch item
                    body = dict(item)
                    key = body.pop("idempotency_key")
                    events.append(dataclasses.replace(AuditEvent.from_json(body), idempotency_key=key))
                t1 = perf()
                store.append_many(events)
                run.build_seconds += t1 - t0
                run.seconds += perf() - t1
                run.events += len(events)

            bk.run_chunks(inputs.batch_items, step, budget)
            t0 = perf()
            store.flush()
            run.seconds += perf() - t0
            run.accept_seconds = run.seconds
            cpu.charge(run, None)
            run.note = f"end to end incl. AuditEvent.from_json {fmt_rate(run.wall_rate)} ev/s"
        finally:
            store.close()
        return run

    return case


# --- profile -------------------------------------------------------------------------


def thread_group(name: str) -> str:
    """asyncio_0, asyncio_1 ... -> asyncio: pool threads are one group."""
    return re.sub(r"[_-]\d+$", "", name)


def package_of(filename: str, func: str) -> str:
    """Where a function lives, coarsely: a quipu file, a site-package, a stdlib module or a builtin."""
    if filename == "~":
        return f"builtin {builtin_name(func)}"
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "quipu" in parts:
        return "/".join(parts[parts.index("quipu") :])
    stdlib = next((i for i, p in enumerate(parts) if re.fullmatch(r"python3\.\d+", p)), None)
    if stdlib is not None and stdlib + 1 < len(parts):
        return "stdlib " + Path(parts[stdlib + 1]).stem
    return Path(filename).name


def print_shard_profile(profile_dir: Path, label: str, top: int) -> None:
    groups: dict[str, list[str]] = {}
    for path in sorted(profile_dir.glob("*.prof")):
        groups.setdefault(thread_group(path.stem.split("-", 1)[1]), []).append(str(path))
    if not groups:
        print(f"  (no profile was written to {profile_dir}; see the shard log)")
        return
    stats = {g: pstats.Stats(*paths) for g, paths in groups.items()}
    total = sum(st.total_tt for st in stats.values())  # type: ignore[attr-defined]
    print(f"\n=== Shard profile, {label}: {total:.2f} CPU s profiled (startup and shutdown included) ===")
    for g, st in sorted(stats.items(), key=lambda kv: -kv[1].total_tt):  # type: ignore[attr-defined]
        print(f"  thread {g:20} {st.total_tt:7.2f} CPU s  {st.total_tt / total * 100:5.1f}%")  # type: ignore[attr-defined]
    for g, st in sorted(stats.items(), key=lambda kv: -kv[1].total_tt):  # type: ignore[attr-defined]
        tt = st.total_tt  # type: ignore[attr-defined]
        if tt < PROFILE_MIN_SHARE * total:
            continue
        print(f"\n--- {label}, thread {g}: {tt:.2f} CPU s; self time by file / package (top 15) ---")
        by_pkg: dict[str, float] = {}
        for (filename, _, func), (_, _, self_time, _, _) in st.stats.items():  # type: ignore[attr-defined]
            key = package_of(filename, func)
            by_pkg[key] = by_pkg.get(key, 0.0) + self_time
        for key, t in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  {t:7.3f} s {t / tt * 100:5.1f}%  {key}")
        st.files = []  # type: ignore[attr-defined]  # the .prof paths: temporary, and noise here
        bk.print_profile_stats(st.strip_dirs(), top)


def run_profile(tmp: Path, inputs: Inputs, keys: KeyRing, args: argparse.Namespace) -> None:
    with bk.GcClock() as clock:
        emb = embedded_case(inputs, keys, args.budget)(tmp / "embedded")
    print(
        f"\n=== embedded, in this process: {emb.events:,} events at {fmt_rate(emb.rate)} ev/s "
        f"(append_many + flush; {fmt_rate(emb.wall_rate)} ev/s with AuditEvent.from_json), "
        f"{fmt_rate(bk.per_second(emb.events, emb.bench_cpu))} ev/CPU-s ==="
    )
    print(f"  cyclic GC {gc_share(clock, emb.bench_cpu)}")
    phases = (
        (f"single x{TARGET_CLIENTS}", lambda cls: single_case(TARGET_CLIENTS, inputs, args.budget, cls)),
        ("batch x1", lambda cls: batch_case(1, inputs, args.budget, cls)),
    )
    for n, (label, make) in enumerate(phases):
        plain = make(ShardProcess)(tmp / f"plain-{n}")
        counted = make(GcCountedShard)(tmp / f"gc-{n}")
        profiled = make(InstrumentedShard)(tmp / f"profiled-{n}")
        print(f"\n=== {label} ===")
        for what, r in (
            ("quipu shard serve", plain),
            ("with a GC clock", counted),
            ("under cProfile", profiled),
        ):
            print(
                f"  {what:17} {r.events:>7,} events at {fmt_rate(r.rate):>6} ev/s, shard "
                f"{fmt_rate(r.shard_rate_per_cpu):>6} ev/CPU-s (event-loop thread {busy(r)} busy, "
                f"other threads {num(r.shard_cpu - r.shard_loop_cpu, '.2f')} CPU s of {r.shard_cpu:.2f})"
            )
        gc_clock = read_gc_clock(tmp / f"gc-{n}" / INSTRUMENT_DIR)
        print(f"  cyclic GC in the shard (GC-clock run): {gc_share(gc_clock, counted.shard_cpu)}")
        print_shard_profile(tmp / f"profiled-{n}" / INSTRUMENT_DIR, label, args.profile_top)


def gc_share(clock: bk.GcClock, cpu: float) -> str:
    return f"{clock.total:.2f} of {cpu:.2f} CPU s ({ratio(clock.total, cpu) * 100:.0f}%): {clock.summary()}"


# --- report --------------------------------------------------------------------------


def num(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def busy(r: Run) -> str:
    """The event-loop thread's CPU as a share of the run's wall time: ~100% means saturated."""
    return num(r.shard_loop_cpu / r.seconds * 100 if r.seconds else math.nan, ".0f") + "%"


def medians(runs: Sequence[Run]) -> tuple[float, float]:
    """(p50, p99) latency, each the median over the rounds."""
    p50 = [r.pct(0.5) for r in runs if r.samples]
    p99 = [r.pct(0.99) for r in runs if r.samples]
    return (statistics.median(p50) if p50 else math.nan, statistics.median(p99) if p99 else math.nan)


def describe(r: Run) -> str:
    text = f"{r.case:10} {r.events:>8,} ev {r.seconds:7.2f} s {fmt_rate(r.rate):>8} ev/s durable"
    if r.samples:
        text += (
            f", p50 {r.pct(0.5):6.2f} p99 {r.pct(0.99):7.2f} ms, shard CPU {r.shard_cpu:5.1f} s "
            f"({fmt_rate(r.shard_rate_per_cpu)} ev/CPU-s, loop thread {busy(r)} busy)"
        )
    text += f", bench CPU {r.bench_cpu:4.1f} s, other load {r.other_cpu:4.1f} CPU s"
    return text + bk.budget_cut(r.events, r.planned)


def print_tables(kept: list[Run], history: dict[str, list[Run]]) -> None:
    emb = next(r for r in kept if r.case == "embedded")
    print(
        "\n=== Throughput and latency (median-rate round; p50/p99 are medians over the rounds; "
        "durable = until POST /v1/admin/flush answered) ==="
    )
    bk.print_header(
        f"{'case':10} {'events':>8} {'durable ev/s':>12} {'accepted ev/s':>13} {'flush ms':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'vs embedded':>11}  notes"
    )
    for r in kept:
        p50, p99 = medians(history[r.case])
        http = r.case != "embedded"
        print(
            f"{r.case:10} {r.events:>8,} {fmt_rate(r.rate):>12} "
            f"{fmt_rate(r.accept_rate) if http else '-':>13} {num(r.flush_ms, '.1f') if http else '-':>8} "
            f"{num(p50, '.2f'):>7} {num(p99, '.2f'):>7} {ratio(r.rate, emb.rate):>10.2f}x  {r.note}"
        )
    print(
        "\n=== CPU (median-rate round; ev/CPU-s = events per CPU second of the process doing the work: "
        "the shard, or this one for embedded) ==="
    )
    bk.print_header(
        f"{'case':10} {'wall s':>7} {'shard CPU s':>11} {'loop thread s':>13} {'busy':>5} "
        f"{'other threads s':>15} {'ev/CPU-s':>9} {'bench CPU s':>11} {'other load':>10} "
        f"{'shard RSS MiB':>13}"
    )
    for r in kept:
        per_cpu = r.shard_rate_per_cpu if r.case != "embedded" else bk.per_second(r.events, r.bench_cpu)
        print(
            f"{r.case:10} {r.wall:>7.2f} {num(r.shard_cpu, '.2f'):>11} {num(r.shard_loop_cpu, '.2f'):>13} "
            f"{busy(r) if r.case != 'embedded' else '-':>5} "
            f"{num(r.shard_cpu - r.shard_loop_cpu, '.2f'):>15} {fmt_rate(per_cpu):>9} "
            f"{r.bench_cpu:>11.2f} {r.other_cpu:>10.2f} {num(r.shard_rss_mib, ',.0f'):>13}"
        )
    print("  loop thread = the shard's main thread (aiohttp event loop: HTTP, JSON, auth, admission);")
    print("  other threads = the writer (append_many), the group-commit timer, the pool (flush);")
    print(
        "  other load = CPU s the rest of the machine used meanwhile (not this benchmark; 0 on an idle box)."
    )


def print_targets(kept: list[Run], history: dict[str, list[Run]]) -> None:
    print("\n=== Targets (issue 4) ===")
    by = {r.case: r for r in kept}
    emb = by["embedded"]
    rows: list[tuple[str, str, str, str]] = []
    for n in BATCH_SENDERS:
        r = by[f"batch x{n}"]
        x = ratio(r.rate, emb.rate)
        rows.append(
            (
                f"batch x{n} HTTP / embedded (ev/s durable)",
                f"{x:.2f}x ({fmt_rate(r.rate)} vs {fmt_rate(emb.rate)} ev/s)",
                f">= {TARGET_BATCH_RATIO}x",
                verdict(x >= TARGET_BATCH_RATIO),
            )
        )
    best = max((by[f"batch x{n}"] for n in BATCH_SENDERS), key=lambda r: r.rate)
    x = ratio(best.rate, emb.wall_rate)
    rows.append(
        (
            f"{best.case} HTTP / embedded end to end (+ from_json)",
            f"{x:.2f}x ({fmt_rate(best.rate)} vs {fmt_rate(emb.wall_rate)} ev/s)",
            "-",
            "info",
        )
    )
    single = by[f"single x{TARGET_CLIENTS}"]
    _, p99 = medians(history[single.case])
    rows.append(
        (
            f"single-event x{TARGET_CLIENTS} ev/s durable",
            f"{fmt_rate(single.rate)} ev/s",
            f">= {fmt_rate(TARGET_SINGLE_RATE)}",
            verdict(single.rate >= TARGET_SINGLE_RATE),
        )
    )
    rows.append(
        (
            f"single-event x{TARGET_CLIENTS} p99 latency",
            f"{p99:.2f} ms",
            f"< {TARGET_SINGLE_P99_MS:g} ms",
            verdict(p99 < TARGET_SINGLE_P99_MS),
        )
    )
    for r in (single, by["batch x1"]):
        rows.append(
            (
                f"{r.case} shard events per CPU-second",
                f"{fmt_rate(r.shard_rate_per_cpu)} ev/CPU-s",
                "-",
                "info",
            )
        )
    bk.print_targets(rows)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000, help="events per embedded and batch run")
    ap.add_argument(
        "--single-events", type=int, help="events per single-event run (default: a quarter of --events)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of every case")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds cap on each run's sending")
    ap.add_argument("--quick", action="store_true", help="smoke run: few events, one round")
    ap.add_argument("--profile", action="store_true", help="only profile the shard (single x8, batch x1)")
    ap.add_argument("--profile-top", type=int, default=25)
    # The child side of InstrumentedShard: serve CONFIG, write GC figures (and profiles) to DIR.
    ap.add_argument("--serve-instrumented", nargs=2, metavar=("DIR", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--cprofile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.budget = 4_000, 1, 3.0
    if args.single_events is None:
        args.single_events = max(1, args.events // 4)
    bk.require_positive(ap, args, ("events", "single_events", "repeat", "profile_top"))
    if args.single_events > args.events:
        ap.error("--single-events must not exceed --events (they are the first events of the same set)")
    if args.budget <= 0:
        ap.error("--budget must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_instrumented:
        out_dir, config = args.serve_instrumented
        return serve_instrumented(Path(out_dir), Path(config), args.cprofile)
    wall = perf()
    bk.machine_info(
        [
            ("aiohttp", aiohttp.__version__),
            ("orjson", orjson.__version__),
            ("quipu", f"commit {git_head()}"),
            ("shard", f"quipu shard serve, sync_policy {SYNC_POLICY}, one fresh shard per run"),
            ("load avg", " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min, at start)"),
        ]
    )
    mode = "profile" if args.profile else "quick" if args.quick else "full"
    print(
        f"  run         {mode}: --events {args.events:,} (embedded, batch), --single-events "
        f"{args.single_events:,}, --repeat {args.repeat}, budget {args.budget:g} s per run"
    )
    start = perf()
    keys = KeyRing.generate()
    inputs = make_inputs(args.events, args.single_events)
    body_mib = sum(map(len, inputs.batch_bodies)) / (1 << 20)
    print(
        f"  setup       keys + {args.events:,} events encoded in {perf() - start:.1f} s (not timed); "
        f"{body_mib:.1f} MiB of batch bodies, {body_mib * (1 << 20) / args.events:.0f} B per event"
    )
    # The inputs live all run: freeze them out of the cyclic GC's walks (as the shard freezes
    # its startup heap), so they burden neither the embedded store nor the client.
    gc.collect()
    gc.freeze()
    history: dict[str, list[Run]] = {}

    def recorded(case: Callable[[Path], Run]) -> Callable[[Path], Run]:
        def run(root: Path) -> Run:
            result = case(root)
            history.setdefault(result.case, []).append(result)
            return result

        return run

    with bk.bench_tmpdir("quipu-bench-shard-") as tmp:
        if args.profile:
            run_profile(tmp, inputs, keys, args)
            print(f"\nTotal wall time {perf() - wall:.1f} s")
            return 0
        cases = [
            embedded_case(inputs, keys, args.budget),
            *(single_case(n, inputs, args.budget) for n in SINGLE_CLIENTS),
            *(batch_case(n, inputs, args.budget) for n in BATCH_SENDERS),
        ]
        print(f"\n=== {len(cases)} cases x {args.repeat} interleaved round(s) ===")
        kept = bk.run_rounds([recorded(c) for c in cases], args.repeat, tmp, "run", describe, "ev/s")
    print_tables(kept, history)
    print_targets(kept, history)
    print(f"\nTotal wall time {perf() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
