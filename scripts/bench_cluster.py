#!/usr/bin/env python3
"""Cluster benchmark (issue 5): events through the ingest front of a real
`quipu-cluster up` (1, 2 and 4 shards, 1 router, 2 ingest workers on one port), next to
one `quipu shard serve` written to directly, on the same events, in one run.

    .venv/bin/python scripts/bench_cluster.py --quick    # smoke run, about a minute
    .venv/bin/python scripts/bench_cluster.py            # 2 rounds + 1M-event query phase

Events are bench_shard's (bench_store's generator, one Idempotency-Key each), spread over
50 tenants: a single-event POST names its tenant with X-Quipu-Tenant (the admin token is
cluster-wide), a batch of 1,000 is one tenant's. Cases:
  shard  single x8 / batch x1   POST straight to one shard (bench_shard's cases)
  Nsh    single x8 / batch x1   the same through the ingest front of an N-shard cluster
Every run ends with POST /v1/admin/flush through the front (the router flushes every shard)
and its rate counts until that answers: events accepted AND durable; then /v1/logs/count
through the front must equal what was accepted.

CPU: each process's CPU seconds during the run (psutil; the cluster's from run/pids.json),
grouped as shards, router, ingest workers, and this load generator. On 2 cores the ceiling is
the CPU, so the figure that carries over is durable events per CPU-second of the whole
cluster, as a fraction of the single shard's events per CPU-second.

Query phase: a 3-shard cluster filled with --query-events through the front (batches), then
the median latency of the latest 100 across every shard and of the latest 100 of one tenant
(both through the front: ingest -> router -> shards -> merge).
"""

import argparse
import asyncio
import gc
import math
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import benchkit as bk
import psutil
from bench_shard import (
    Inputs,
    Run,
    Target,
    batch_case,
    drive,
    make_inputs,
    post_batch,
    post_single,
    single_case,
    type_schemas,
)
from bench_store import git_head
from benchkit import fmt_rate, perf, ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster_proc import Cluster

TENANTS = 50
SHARD_COUNTS = (1, 2, 4)
SINGLE_CLIENTS = 8
QUERY_SAMPLES = 30
GROUP_COMMIT = "every_n_or_interval:1000:0.02"  # the shard's default, as bench_shard uses
MAX_BODY_BYTES = 8 << 20


def tenant_of(n: int) -> str:
    return f"tenant-{n % TENANTS:02d}"


@dataclass
class ClusterRun(Run):
    cpu_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def cluster_cpu(self) -> float:
        return sum(v for k, v in self.cpu_by_role.items() if k != "bench")


def start_cluster(root: Path, shards: int) -> Cluster:
    store = {"sync_policy": GROUP_COMMIT, "retention_days": None}
    cluster = Cluster.prepare(
        root, shards=shards, workers=2, store=store, limits={"max_body_bytes": MAX_BODY_BYTES}
    )
    cluster.up()
    for schema in type_schemas():
        reply = cluster.request("POST", "/v1/types", schema.to_json())
        if reply.status != 204:
            cluster.stop()
            raise RuntimeError(f"POST /v1/types answered {reply.status}: {reply.data[:300]!r}")
    return cluster


def cluster_processes(cluster: Cluster) -> dict[str, psutil.Process]:
    return {name: psutil.Process(pid) for name, pid in cluster.pids().items() if pid}


def role(name: str) -> str:
    return "shards" if name.startswith("shard-") else "ingest" if name.startswith("ingest") else name


def cpu_by_role(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out: dict[str, float] = {"bench": bk.cpu_seconds()}
    for name, proc in procs.items():
        out[role(name)] = out.get(role(name), 0.0) + bk.cpu_seconds(proc)
    return out


def front_target(cluster: Cluster) -> Target:
    """The cluster's ingest front; CPU counted per role (shards, router, ingest, bench)."""
    admin = {"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": "application/json"}
    procs = cluster_processes(cluster)

    def meter() -> Callable[[Run], None]:
        before = cpu_by_role(procs)

        def charge(run: Run) -> None:
            after = cpu_by_role(procs)
            run.cpu_by_role = {k: after[k] - before.get(k, 0.0) for k in after}

        return charge

    return Target(cluster.url, admin, "the cluster", meter, flushed=(200, 204))


def cluster_case(shards: int, kind: str, inputs: Inputs, budget: float) -> Callable[[Path], Run]:
    def case(root: Path) -> Run:
        cluster = start_cluster(root, shards)
        try:
            base = {"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": "application/json"}
            if kind == "single":
                run = ClusterRun(f"{shards}sh single x{SINGLE_CLIENTS}", planned=len(inputs.single_bodies))

                def send(session: aiohttp.ClientSession, i: int) -> Awaitable[None]:
                    h = {**base, "Idempotency-Key": inputs.keys[i], "X-Quipu-Tenant": tenant_of(i)}
                    return post_single(session, h, inputs.single_bodies[i], run)

                units, workers = len(inputs.single_bodies), SINGLE_CLIENTS
            else:
                run = ClusterRun(f"{shards}sh batch x1", planned=len(inputs.events))

                def send(session: aiohttp.ClientSession, k: int) -> Awaitable[None]:
                    h = {**base, "X-Quipu-Tenant": tenant_of(k)}
                    return post_batch(session, h, inputs.batch_bodies[k], inputs.batch_items[k], run)

                units, workers = len(inputs.batch_bodies), 1
            return asyncio.run(drive(front_target(cluster), run, workers, units, send, budget))
        finally:
            cluster.stop()

    return case


# --- the query phase ---------------------------------------------------------------------


def query_phase(root: Path, events: int) -> None:
    inputs = make_inputs(events, 1)
    cluster = start_cluster(root, 3)
    try:
        run = ClusterRun("fill", planned=events)
        base = {"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": "application/json"}

        def send(session: aiohttp.ClientSession, k: int) -> Awaitable[None]:
            h = {**base, "X-Quipu-Tenant": tenant_of(k)}
            return post_batch(session, h, inputs.batch_bodies[k], inputs.batch_items[k], run)

        asyncio.run(drive(front_target(cluster), run, 2, len(inputs.batch_bodies), send, math.inf))
        print(
            f"  filled      {run.events:,} events in {run.seconds:.1f} s ({fmt_rate(run.rate)} ev/s durable)"
        )
        latest = {"limit": 100, "order": "desc"}
        across = median_ms(cluster, latest, None)
        one = median_ms(cluster, latest, tenant_of(7))
        print(f"  latest 100 across all shards (3 shards, {events:,} events): median {across:.2f} ms")
        print(f"  latest 100 of one tenant ({events // TENANTS:,} of its events): median {one:.2f} ms")
    finally:
        cluster.stop()


def median_ms(cluster: Cluster, query: dict, tenant: str | None) -> float:
    samples = []
    for _ in range(QUERY_SAMPLES):
        t0 = perf()
        reply = cluster.request("POST", "/v1/logs/query", query, tenant=tenant)
        samples.append((perf() - t0) * 1000)
        if reply.status != 200 or len(reply.json()) != 100:
            raise RuntimeError(f"query answered {reply.status}: {reply.data[:200]!r}")
    return statistics.median(samples)


# --- report ------------------------------------------------------------------------------


def latency(r: Run) -> tuple[float, float]:
    return (r.pct(0.5), r.pct(0.99)) if r.samples else (math.nan, math.nan)


def describe(r: Run) -> str:
    p50, p99 = latency(r)
    line = (
        f"{r.case:<18} {r.events:>8,} ev {fmt_rate(r.rate):>8} ev/s durable, p50 {p50:6.2f} p99 {p99:7.2f} ms"
    )
    if isinstance(r, ClusterRun):
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.cpu_by_role.items()))
        return f"{line}, CPU s: {cpu}"
    return f"{line}, CPU s: shard {r.shard_cpu:.1f}, bench {r.bench_cpu:.1f}"


def print_report(kept: list[Run]) -> None:
    by = {r.case: r for r in kept}
    print("\n=== Through the ingest front vs straight to one shard (median-rate round) ===")
    print(
        f"{'case':<20}{'ev/s':>9}{'vs shard':>10}{'p50 ms':>8}{'p99 ms':>8}{'ev/CPU-s':>10}{'of shard':>10}"
        "  CPU s by process"
    )
    for kind, shard_case in (("single", f"single x{SINGLE_CLIENTS}"), ("batch", "batch x1")):
        direct = by[shard_case]
        direct_eff = direct.events / direct.shard_cpu
        print(
            f"{'shard ' + shard_case:<20}{fmt_rate(direct.rate):>9}{'1.00x':>10}"
            + "".join(f"{x:8.2f}" for x in latency(direct))
            + f"{fmt_rate(direct_eff):>10}{'1.00x':>10}  shard {direct.shard_cpu:.1f}"
        )
        for n in SHARD_COUNTS:
            r = by[f"{n}sh {kind} x{SINGLE_CLIENTS if kind == 'single' else 1}"]
            eff = r.events / r.cluster_cpu if r.cluster_cpu > 0 else math.nan
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.cpu_by_role.items()))
            print(
                f"{r.case:<20}{fmt_rate(r.rate):>9}{ratio(r.rate, direct.rate):>9.2f}x"
                + "".join(f"{x:8.2f}" for x in latency(r))
                + f"{fmt_rate(eff):>10}{ratio(eff, direct_eff):>9.2f}x  {cpu}"
            )
    print("  ev/CPU-s = durable events per CPU second of every cluster process (shards, router, ingest)")
    print("  (the shard row: of the shard alone); 'of shard' = the fraction of the single shard's")
    print("  efficiency the cluster keeps: on a 2-core machine that is what turns CPU into events.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000, help="events per batch run")
    ap.add_argument("--single-events", type=int, default=8_000, help="events per single-event run")
    ap.add_argument(
        "--query-events", type=int, default=1_000_000, help="events for the query phase (0: skip)"
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds cap on each run's sending")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: few events, one round, small query phase"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.single_events, args.query_events, args.repeat, args.budget = (
            4_000,
            1_000,
            20_000,
            1,
            5.0,
        )
    bk.require_positive(ap, args, ("events", "single_events", "repeat"))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wall = perf()
    bk.machine_info([("quipu", f"commit {git_head()}"), ("cluster", "quipu-cluster up, 2 ingest workers")])
    inputs = make_inputs(args.events, args.single_events)
    gc.collect()
    gc.freeze()
    with bk.bench_tmpdir("quipu-bench-cluster-") as tmp:
        cases = [
            single_case(SINGLE_CLIENTS, inputs, args.budget),
            batch_case(1, inputs, args.budget),
            *(
                cluster_case(n, kind, inputs, args.budget)
                for kind in ("single", "batch")
                for n in SHARD_COUNTS
            ),
        ]
        print(f"\n=== {len(cases)} cases x {args.repeat} interleaved round(s) ===")
        kept = bk.run_rounds(cases, args.repeat, tmp, "run", describe, "ev/s")
        print_report(kept)
        if args.query_events:
            print(f"\n=== Merged queries through the front, {args.query_events:,} events ===")
            query_phase(tmp / "query", args.query_events)
    print(f"\nTotal wall time {perf() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
