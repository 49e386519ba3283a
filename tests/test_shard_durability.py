"""What a real shard keeps across crashes and restarts (SPEC §6, §9): flushed events survive
SIGKILL exactly once, Idempotency-Keys stay duplicates after a restart, the dead-letter
queue survives a restart and a redrive records its events with their original occurrence
time, SIGTERM drains what was queued, a full queue records exactly what it accepted, and
retention drops old segments without breaking the proofs of what it keeps.
"""

import json
import secrets
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from shard_proc import ShardProcess, actor_query, append_request, define_types

from quipu.core.merkle import verify_consistency

PARKED_AT = 1_650_000_000_123_456  # an explicit occurred_at, far from "now"
LATE_ACTOR = {"type_name": "late_actor", "fields": [{"name": "name", "kind": "Text", "indexed": True}]}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    s = ShardProcess.start(tmp_path_factory.mktemp("durability"))
    try:
        define_types(s)
        yield s
    finally:
        s.stop()


def crash_and_restart(shard) -> None:
    """SIGKILL (no drain, no flush), then start again on the same store."""
    shard.kill()
    shard.launch()


def post(shard, body: object, key: str | None = None, path: str = "/v1/logs", **kw: object) -> tuple:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return shard.json("POST", path, body, headers=headers, **kw)


def test_default_types_exist_out_of_the_box(tmp_path):
    """SPEC §4: default_actor and default_target exist before anyone defines a type."""
    with ShardProcess.start(tmp_path) as fresh:
        status, types = fresh.json("GET", "/v1/types")
        assert status == 200
        assert {"default_actor", "default_target"} <= {t["type_name"] for t in types}
        status, answer = post(fresh, append_request("first-ever", targets=[("default_target", "d", "D")]))
        assert (status, answer) == (202, {"status": "queued"})
        fresh.flush()
        assert fresh.count({}) == 1
        assert fresh.json("GET", "/v1/admin/dlq")[1] == {"parked": 0}


def test_event_of_an_undefined_type_parks_survives_a_restart_and_redrives_with_its_occurred_at(shard):
    keyed = f"late-{secrets.token_hex(6)}"
    parked = append_request("latecomer", actor_type="late_actor", url="/late/keyed", occurred_at=PARKED_AT)
    assert post(shard, parked, keyed) == (202, {"status": "queued"})
    unkeyed = append_request("latecomer", actor_type="late_actor", url="/late/unkeyed")
    assert post(shard, unkeyed) == (202, {"status": "queued"})
    accepted_by = time.time_ns() // 1000  # the shard stamped the unkeyed event before answering
    rows_before = shard.count({})
    shard.flush()
    assert shard.json("GET", "/v1/admin/dlq") == (200, {"parked": 2})
    assert shard.count({}) == rows_before
    assert post(shard, parked, keyed) == (202, {"status": "duplicate"}), "a parked key is known"
    assert shard.json("POST", "/v1/admin/redrive") == (200, {"redriven": 0}), "the type is still missing"
    assert shard.json("GET", "/v1/admin/dlq") == (200, {"parked": 2})

    crash_and_restart(shard)
    assert shard.json("GET", "/v1/admin/dlq") == (200, {"parked": 2}), "the DLQ is on disk"
    assert post(shard, parked, keyed) == (202, {"status": "duplicate"}), "the window is rebuilt from the DLQ"

    define_types(shard, LATE_ACTOR)
    assert shard.json("POST", "/v1/admin/redrive") == (200, {"redriven": 2})
    assert shard.json("GET", "/v1/admin/dlq") == (200, {"parked": 0})
    rows = {v["url"]: v for v in shard.export(actor_query("latecomer", "late_actor"))}
    assert sorted(rows) == ["/late/keyed", "/late/unkeyed"]
    assert rows["/late/keyed"]["occurred_at"] == PARKED_AT
    assert rows["/late/unkeyed"]["occurred_at"] <= accepted_by, "redrive kept the accept time"
    assert rows["/late/keyed"]["actor"]["fields"]["name"] == {"Text": "actor latecomer"}

    assert post(shard, parked, keyed) == (202, {"status": "duplicate"})
    assert shard.json("POST", "/v1/admin/redrive") == (200, {"redriven": 0})
    crash_and_restart(shard)
    assert shard.count(actor_query("latecomer", "late_actor")) == 2, "a redrive is durable when it answers"
    assert shard.json("GET", "/v1/admin/dlq") == (200, {"parked": 0})


def test_flushed_events_survive_sigkill_exactly_once_and_their_keys_stay_duplicates(shard):
    run = secrets.token_hex(4)
    single = [(f"{run}-s{i}", append_request("durable", url=f"/durable/s{i}")) for i in range(100)]
    array = [
        {**append_request("durable", url=f"/durable/a{i}"), "idempotency_key": f"{run}-a{i}"}
        for i in range(100)
    ]
    lines = [
        {**append_request("durable", url=f"/durable/n{i}"), "idempotency_key": f"{run}-n{i}"}
        for i in range(100)
    ]
    ndjson = "".join(json.dumps(item) + "\n" for item in lines).encode()

    for key, body in single:
        assert post(shard, body, key) == (202, {"status": "queued"})
    status, answer = post(shard, array, path="/v1/logs/batch")
    assert status == 202 and answer["queued"] == 100, answer
    r = shard.request("POST", "/v1/logs/batch", raw=ndjson, headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 202 and r.json()["queued"] == 100, r.data[:300]
    shard.flush()
    crash_and_restart(shard)

    urls = [v["url"] for v in shard.export(actor_query("durable", order="asc"))]
    expected = {f"/durable/{kind}{i}" for kind in "san" for i in range(100)}
    assert len(urls) == 300 and set(urls) == expected, "every flushed event, each exactly once"

    for key, body in single:
        assert post(shard, body, key) == (202, {"status": "duplicate"})
    status, answer = post(shard, array, path="/v1/logs/batch")
    assert status == 202 and answer["duplicate"] == 100 and answer["queued"] == 0, answer
    r = shard.request("POST", "/v1/logs/batch", raw=ndjson, headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 202 and r.json()["duplicate"] == 100, r.data[:300]
    shard.flush()
    assert shard.count(actor_query("durable")) == 300
    status, report = shard.json("POST", "/v1/admin/verify")
    assert status == 200 and report["ok"] is True, report


def test_sigterm_drains_queued_events_before_the_shard_exits(shard):
    for i in range(50):
        assert post(shard, append_request("drained", url=f"/drained/{i}")) == (202, {"status": "queued"})
    shard.stop()  # no flush first: SIGTERM itself drains and flushes
    assert shard.proc.returncode == 0, shard.log()[-2000:]
    shard.launch()
    assert shard.count(actor_query("drained")) == 50


def test_full_queue_refuses_with_503_and_records_exactly_what_it_accepted(tmp_path):
    """A one-slot queue fills whenever the writer is busy. Whatever the timing, an event
    answered `queued` is recorded and one answered `retry` (or 503) is not."""
    with ShardProcess.start(tmp_path, pipeline={"queue_capacity": 1, "batch_max": 1}) as tight:
        define_types(tight)
        queued = refused = 0
        deadline = time.monotonic() + 30
        while refused == 0 and time.monotonic() < deadline:
            batch = [append_request("squeezed", url=f"/squeezed/{queued + refused}/{i}") for i in range(1000)]
            status, answer = post(tight, batch, path="/v1/logs/batch")
            statuses = [r["status"] for r in answer["results"]]
            assert set(statuses) <= {"queued", "retry"}, answer
            assert all(r["error"] for r in answer["results"] if r["status"] == "retry")
            assert status == (503 if set(statuses) == {"retry"} else 202)
            queued += statuses.count("queued")
            refused += statuses.count("retry")
        assert refused > 0, "a one-slot queue refused nothing in 30 s of 1,000-event batches"
        r = tight.request("POST", "/v1/logs", append_request("squeezed", url="/squeezed/single"))
        assert r.status in (202, 503)
        if r.status == 503:
            r.error(503)
            assert r.header("Retry-After")
        else:
            queued += 1
        tight.flush()
        assert tight.count(actor_query("squeezed")) == queued
        metrics = text_string_to_metric_families(tight.request("GET", "/metrics").data.decode())
        rejected = {
            s.labels["reason"]: s.value
            for f in metrics
            for s in f.samples
            if s.name == "quipu_emit_rejected_total"
        }
        assert rejected["queue_full"] >= refused


def test_retention_drops_expired_segments_and_retained_rows_still_prove(tmp_path):
    """Retention unlinks whole sealed segments of rows older than the window; the tree never
    shrinks, a purged row's proof is a 404, and retained rows still prove against old roots."""
    aging = ShardProcess.prepare(tmp_path)
    aging.config["store"].update(max_segment_bytes=4096, retention_days=365)
    aging.write_config()
    aging.launch()
    with aging:
        define_types(aging)
        for i in range(60):  # years old: their sealed segments are past the window
            assert post(aging, append_request("aged", url=f"/aged/{i}", occurred_at=PARKED_AT + i))[0] == 202
        aging.flush()
        for i in range(5):
            assert post(aging, append_request("fresh", url=f"/fresh/{i}"))[0] == 202
        aging.flush()
        oldest = aging.export(actor_query("aged", order="asc", limit=1))[0]["log_id"]
        fresh = aging.export(actor_query("fresh"))
        status, before = aging.json("GET", f"/v1/proof/inclusion/{fresh[0]['log_id']}")
        assert status == 200 and before["tree_size"] == 65

        status, answer = aging.json("POST", "/v1/admin/retention")
        assert status == 200 and answer["segments_dropped"] >= 1, answer
        assert aging.json("POST", "/v1/admin/retention") == (200, {"segments_dropped": 0})

        assert aging.count(actor_query("aged")) < 60
        assert [v["log_id"] for v in aging.export(actor_query("fresh"))] == [v["log_id"] for v in fresh]
        status, gone = aging.json("GET", f"/v1/proof/inclusion/{oldest}")
        assert status == 404 and set(gone) == {"error"}
        status, after = aging.json("GET", f"/v1/proof/inclusion/{fresh[0]['log_id']}")
        assert status == 200 and after == before, "same leaf, same tree: retention never shrinks it"
        status, proof = aging.json("GET", "/v1/proof/consistency?from=1")
        assert status == 200 and (proof["second_size"], proof["merkle_root"]) == (65, before["merkle_root"])
        verify_consistency(
            1,
            65,
            bytes.fromhex(proof["first_root"]),
            bytes.fromhex(proof["merkle_root"]),
            [bytes.fromhex(h) for h in proof["proof"]],
        )
        status, report = aging.json("POST", "/v1/admin/verify")
        assert status == 200 and report["ok"] is True and report["problems"] == [], report
