"""The whole cluster as a user runs it: `quipu-cluster up`, writes through both ingest
workers, reads through the public URL, a shard SIGKILLed mid-ingestion, `grow --add 2`
under load, and `verify` against tampered stores and maps.

"Acknowledged" follows the pipeline's contract: 202 means queued, and an event is durable
once a flush that started after its 202 has returned. Senders behave like quipu.client:
one stable Idempotency-Key per event, and every event not yet covered by a flush is sent
again (same key) until it is; exactly-once is then the cluster's job.
"""

import json
import os
import re
import shutil
import signal
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from cluster_proc import Cluster
from shard_proc import append_request, wait_until

from quipu.router.shard_map import ShardMap

BATCH = 200
SEGMENT_HEADER = 84  # docs/format.md: segment header, then frames of <II (length, crc32)
FRAME = struct.Struct("<II")
RECORD_HEAD = 41  # kind (1) + ts (8) + chain (32), then the payload


def _event(tenant: str, n: int) -> dict:
    return {**append_request(f"actor-{n % 10}", url=f"/e/{tenant}/{n}"), "idempotency_key": f"{tenant}:{n}"}


class Senders:
    """Threads sending every tenant's events in batches, each retried (same keys) until
    the cluster accepts it: `queued` or `duplicate`. A down shard's events answer `retry`
    (or the whole request 503) and are sent again after a short pause."""

    def __init__(
        self, cluster: Cluster, tokens: dict[str, str], per_tenant: int, threads: int = 4, batch: int = BATCH
    ) -> None:
        self.cluster, self.tokens, self.per_tenant, self.batch = cluster, tokens, per_tenant, batch
        self.accepted: dict[str, str] = {}  # idempotency key -> first accepting status
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.retries = 0
        self._stop = threading.Event()
        tenants = sorted(tokens)
        self.threads = [
            threading.Thread(target=self._run, args=(tenants[i::threads],), daemon=True)
            for i in range(threads)
        ]

    def start(self) -> "Senders":
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join(300)
            assert not thread.is_alive(), "a sender hung"
        assert not self.errors, self.errors[:5]

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def stop(self) -> None:
        """Send no new batch (the ones under way finish); then `join`."""
        self._stop.set()

    def expected(self) -> Counter:
        """The url of every accepted event, once each: what a read must return."""
        return Counter(f"/e/{key.replace(':', '/')}" for key in self.accepted)

    def _run(self, tenants: list[str]) -> None:
        try:
            for start in range(0, self.per_tenant, self.batch):
                for tenant in tenants:
                    if self._stop.is_set():
                        return
                    events = [
                        _event(tenant, n) for n in range(start, min(start + self.batch, self.per_tenant))
                    ]
                    self.send(tenant, events)
        except Exception as err:  # reported by join(), with the rest of the run's evidence
            self.errors.append(repr(err))

    def send(self, tenant: str, events: list[dict]) -> dict[str, str]:
        """Until every event is accepted; {key: status}."""
        outcome: dict[str, str] = {}
        todo = list(events)
        deadline = time.monotonic() + 120
        while todo:
            assert time.monotonic() < deadline, f"{tenant}: {len(todo)} events never accepted"
            try:
                reply = self.cluster.request("POST", "/v1/logs/batch", todo, token=self.tokens[tenant])
            except OSError:
                reply = None
            if reply is None or reply.status in (502, 503):
                self.retries += 1
                time.sleep(0.05)
                continue
            assert reply.status == 202, (reply.status, reply.data[:300])
            again = []
            for event, result in zip(todo, reply.json()["results"], strict=True):
                if result["status"] in ("queued", "duplicate"):
                    outcome[event["idempotency_key"]] = result["status"]
                else:
                    assert result["status"] == "retry", result
                    again.append(event)
            if again:
                self.retries += 1
                time.sleep(0.05)
            todo = again
        with self.lock:
            for key, status in outcome.items():
                self.accepted.setdefault(key, status)
        return outcome


def _service_tokens(cluster: Cluster, tenants: list[str]) -> dict[str, str]:
    """One tenant-bound service token each (and the admin token), in the token file before
    `up`: both workers know them from the first request."""
    tokens = cluster.issue_tokens({t: {"role": "service", "tenant": t} for t in tenants})
    tokens.pop("admin", None)
    return tokens


def _flush(cluster: Cluster) -> None:
    """POST /v1/admin/flush through the public URL, until every shard answers."""
    wait_until(
        lambda: cluster.request("POST", "/v1/admin/flush").status in (200, 204), "a flush of every shard", 60
    )


def _export(cluster: Cluster, query: dict | None = None, token: str | None = None, tenant: str | None = None):
    reply = cluster.request("POST", "/v1/logs/export", query or {}, token=token, tenant=tenant)
    assert reply.status == 200, (reply.status, reply.data[:300])
    return [json.loads(line) for line in reply.data.splitlines()]


def _urls(rows: list[dict]) -> Counter:
    return Counter(row["url"] for row in rows if row["url"].startswith("/e/"))


def _expected(tenants: list[str], per_tenant: int) -> Counter:
    return Counter(f"/e/{t}/{n}" for t in tenants for n in range(per_tenant))


def _order_key(row: dict) -> tuple[int, str]:
    return row["occurred_at"], row["log_id"]


@pytest.mark.slow
def test_20000_events_for_50_tenants_through_both_workers_read_back_ordered_once_and_isolated(tmp_path):
    tenants = [f"tenant-{n:02d}" for n in range(50)]
    cluster = Cluster.prepare(tmp_path, shards=3, workers=2)
    tokens = _service_tokens(cluster, tenants)
    auditor = cluster.issue_tokens({"auditor": {"role": "auditor", "tenant": tenants[7]}})["auditor"]
    with cluster.up():
        Senders(cluster, tokens, per_tenant=400).start().join()
        _flush(cluster)

        rows = _export(cluster, {"order": "asc"})
        assert _urls(rows) == _expected(tenants, 400)  # every event exactly once
        assert [_order_key(r) for r in rows] == sorted(_order_key(r) for r in rows)

        pages, cursor = [], None
        while True:  # the multi-shard cursor, newest first
            reply = cluster.request(
                "POST", "/v1/logs/query", {"limit": 5000, **({"cursor": cursor} if cursor else {})}
            )
            assert reply.status == 200, reply.data[:300]
            pages += reply.json()  # v1: the page is an array; the cursor is a header
            cursor = reply.header("X-Quipu-Next-Cursor")
            if not cursor:
                break
        assert _urls(pages) == _expected(tenants, 400)
        assert [_order_key(r) for r in pages] == sorted((_order_key(r) for r in pages), reverse=True)

        for n in range(2):
            log = (cluster.data / "run" / f"ingest-{n}.log").read_text()
            assert "POST /v1/logs/batch 202" in log, f"ingest-{n} took no batch"

        acme, other = tenants[7], tenants[8]
        assert cluster.request("POST", "/v1/logs/count", {}, token=auditor).json()["count"] == 400
        mine = _export(cluster, {}, token=auditor)
        assert {r["tenant"] for r in mine} == {acme} and len(mine) == 400
        page = cluster.request("POST", "/v1/logs/query", {"tenant": other}, token=auditor)
        assert page.status == 403
        assert cluster.request("POST", "/v1/logs/count", {}, token=auditor, tenant=other).status == 403
        assert cluster.request("POST", "/v1/logs/count", {}, token=tokens[acme]).status == 403  # emit only


@pytest.mark.slow
def test_a_shard_sigkilled_during_ingestion_loses_no_acknowledged_event_and_records_each_once(tmp_path):
    tenants = [f"t{n:02d}" for n in range(24)]
    cluster = Cluster.prepare(tmp_path, shards=3, workers=2)
    tokens = _service_tokens(cluster, tenants)
    with cluster.up():
        victim_id = ShardMap.load(cluster.data / "shards.json").route_write(tenants[0]).id
        victim = cluster.pids()[victim_id]
        senders = Senders(cluster, tokens, per_tenant=5000, batch=50).start()  # busy until stopped
        wait_until(lambda: senders.count() >= 1500, "events accepted before the kill", 120)
        snapshot = dict(senders.accepted)
        _flush(cluster)  # everything in `snapshot` is durable from here on
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: cluster.pids()[victim_id] not in (None, victim), "the shard restarted", 60)
        cluster.wait_healthy(cluster.shard_map()["shards"][victim_id]["url"], "the restarted shard")
        after = senders.count()
        wait_until(lambda: senders.count() >= after + 1000, "events accepted after the restart", 120)
        senders.stop()
        senders.join()
        _flush(cluster)
        # Events accepted only as queued around the kill may have died with the shard:
        # a client resends what no flush confirmed, with the same keys.
        unconfirmed = sorted(set(senders.accepted) - set(snapshot))
        for tenant in tenants:
            mine = [k for k in unconfirmed if k.startswith(f"{tenant}:")]
            for start in range(0, len(mine), BATCH):
                senders.send(
                    tenant, [_event(tenant, int(k.split(":")[1])) for k in mine[start : start + BATCH]]
                )
        _flush(cluster)

        rows = _export(cluster)
        assert _urls(rows) == senders.expected()  # each accepted event exactly once
        assert set(snapshot) <= set(senders.accepted)
        assert f"{victim_id} was killed by SIGKILL" in cluster.errors()
        assert senders.retries > 0  # the outage was seen: its tenants got 503/retry meanwhile


@pytest.mark.slow
def test_grow_add_2_under_load_loses_nothing_duplicates_nothing_and_reads_see_both_generations(tmp_path):
    tenants = [f"g{n:02d}" for n in range(20)]
    cluster = Cluster.prepare(tmp_path, shards=3, workers=2)
    tokens = _service_tokens(cluster, tenants)
    with cluster.up():
        # Enough events that the senders are still busy well after the grow: they stop
        # only once the new generation took its share.
        senders = Senders(cluster, tokens, per_tenant=5000, batch=25).start()
        wait_until(lambda: senders.count() >= 1500, "events accepted before the grow", 120)
        pre_grow = dict(senders.accepted)
        grown = cluster.cli("grow", "--add", "2", token=cluster.admin_token)
        assert grown.returncode == 0, grown.stdout + grown.stderr
        after = senders.count()
        wait_until(lambda: senders.count() >= after + 1500, "events accepted after the grow", 120)
        senders.stop()
        senders.join()
        _flush(cluster)

        retried = {}
        for tenant in tenants:  # retries of pre-grow keys reach the new owner now
            keys = [k for k in pre_grow if k.startswith(f"{tenant}:")][:20]
            retried |= senders.send(tenant, [_event(tenant, int(k.split(":")[1])) for k in keys])
        assert retried and set(retried.values()) == {"duplicate"}
        _flush(cluster)

        rows = _export(cluster)
        assert _urls(rows) == senders.expected()
        shard_map = ShardMap.load(cluster.data / "shards.json")
        assert shard_map.frozen == {"shard-0000", "shard-0001", "shard-0002"}
        assert set(shard_map.active) == {"shard-0003", "shard-0004"}
        status = {r["id"]: r for r in cluster.request("GET", "/v1/cluster/status").json()["shards"]}
        assert all(status[s]["shard_frozen"] for s in shard_map.frozen)
        assert all(status[s]["tree_size"] > 0 for s in shard_map.shards)  # writes landed on both sides
        tenant = tenants[0]
        owners = {s.id for s in shard_map.read_shards(tenant)}
        assert len(owners) == 2  # its old shard and its new one
        count = cluster.request("POST", "/v1/logs/count", {}, tenant=tenant).json()["count"]
        assert count == sum(1 for key in senders.accepted if key.startswith(f"{tenant}:"))


# --- verify -------------------------------------------------------------------------------


def _write_and_anchor(cluster: Cluster, tenants: list[str], per_tenant: int, start: int = 0) -> None:
    for tenant in tenants:
        events = [_event(tenant, n) for n in range(start, start + per_tenant)]
        reply = cluster.request("POST", "/v1/logs/batch", events, tenant=tenant)
        assert reply.status == 202, reply.data[:300]
    _flush(cluster)
    result = cluster.cli("anchor", token=cluster.admin_token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.match(r"anchor signed at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ", result.stdout), result.stdout


def _verify(cluster: Cluster) -> tuple[int, str]:
    result = cluster.cli("verify", token=cluster.admin_token)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout


def _restart(cluster: Cluster, tamper) -> None:
    admin = cluster.admin_token
    assert cluster.stop() == 0
    tamper()
    cluster.up()
    cluster.admin_token = admin


def _rewrite_a_record(store: Path) -> None:
    """Change what the first record says ("saved" -> "faked", still a valid row) and
    recompute its frame CRC: an edit with file access but without the key."""
    path = sorted((store / "logs").glob("*.qseg"))[0]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    length, _ = FRAME.unpack_from(data, SEGMENT_HEADER)
    start = SEGMENT_HEADER + FRAME.size
    body = bytes(data[start : start + length])
    assert b"saved" in body[RECORD_HEAD:], "the record's content is not where the format puts it"
    edited = body[:RECORD_HEAD] + body[RECORD_HEAD:].replace(b"saved", b"faked", 1)
    FRAME.pack_into(data, SEGMENT_HEADER, length, zlib.crc32(edited))
    data[start : start + length] = edited
    path.write_bytes(data)


def _tenants_on_every_shard(cluster: Cluster, each: int = 2) -> list[str]:
    """Tenants placed so that every shard holds some (the seed is random per test): a
    tamper of any one shard then touches anchored records."""
    shard_map = ShardMap.load(cluster.data / "shards.json")
    found: dict[str, list[str]] = {s: [] for s in shard_map.active}
    for tenant in (f"tenant-{n}" for n in range(10_000)):
        owner = found[shard_map.route_write(tenant).id]
        if len(owner) < each:
            owner.append(tenant)
        if all(len(v) == each for v in found.values()):
            return [t for ts in found.values() for t in ts]
    raise AssertionError("no tenant spread over every shard")


@pytest.mark.slow
def test_verify_is_clean_on_an_untouched_cluster_and_reports_a_deleted_shard(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=3, workers=1)
    with cluster.up():
        _write_and_anchor(cluster, _tenants_on_every_shard(cluster), 30)
        code, out = _verify(cluster)
        assert code == 0 and "verify: OK" in out, out
        _restart(cluster, lambda: shutil.rmtree(cluster.data / "shard-0001"))
        code, out = _verify(cluster)
        assert code == 1, out
        assert "shard-0001: PROBLEM" in out and "shard-0000: ok" in out and "shard-0002: ok" in out


@pytest.mark.slow
def test_verify_reports_a_shard_restored_from_an_older_copy(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    with cluster.up():
        _write_and_anchor(cluster, _tenants_on_every_shard(cluster), 20)
        backup = tmp_path / "backup"
        _restart(cluster, lambda: shutil.copytree(cluster.data / "shard-0000", backup))
        _write_and_anchor(cluster, _tenants_on_every_shard(cluster), 20, start=20)

        def restore() -> None:
            shutil.rmtree(cluster.data / "shard-0000")
            shutil.copytree(backup, cluster.data / "shard-0000")

        _restart(cluster, restore)
        code, out = _verify(cluster)
        assert code == 1 and "shard-0000: PROBLEM" in out and "shard-0001: ok" in out, out


@pytest.mark.slow
def test_verify_reports_a_rewritten_record_and_an_edited_shard_map(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    with cluster.up():
        _write_and_anchor(cluster, _tenants_on_every_shard(cluster), 20)
        _restart(cluster, lambda: _rewrite_a_record(cluster.data / "shard-0001"))
        code, out = _verify(cluster)
        assert code == 1 and "shard-0001: PROBLEM" in out and "shard-0000: ok" in out, out
        assert "shard map: ok" in out

        path = cluster.data / "shards.json"
        path.write_text(path.read_text().replace(cluster.config["seed"], "edited-seed"))
        wait_until(lambda: "shard map: PROBLEM" in _verify(cluster)[1], "the edited map is reported", 30)
