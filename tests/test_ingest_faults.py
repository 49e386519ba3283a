"""Faults at the ingest front: a shard that is down costs only its own tenants (503 +
Retry-After, batches `retry`), and a retry with the same key after it is back records the
event once; a worker that stops leaves the port served by the others."""

import uuid

import pytest
from ingest_proc import IngestCluster
from shard_proc import actor_query, append_request

TENANT = "X-Quipu-Tenant"


@pytest.fixture
def cluster(tmp_path):
    with IngestCluster.start(tmp_path, shards=2, workers=2) as cluster:
        yield cluster


def _tenant_on(cluster, shard_id: str) -> str:
    return next(
        t for t in (f"t-{n}" for n in range(200)) if cluster.shard_map().route_write(t).id == shard_id
    )


def _batch(cluster, tenant, items):
    return cluster.front.request(
        "POST", "/v1/logs/batch", items, token=cluster.tokens["ops"], headers={TENANT: tenant}
    )


def test_a_killed_shard_gives_its_tenants_503_while_other_tenants_write(cluster):
    down, up = _tenant_on(cluster, "shard-0001"), _tenant_on(cluster, "shard-0000")
    cluster.shards[1].kill()
    key = str(uuid.uuid4())
    refused = cluster.write(down, append_request("outage"), key=key)
    assert "shard-0001 is not reachable" in refused.error(503)
    assert refused.header("Retry-After") == "1"
    batch = _batch(cluster, down, [append_request("outage"), append_request("outage")])
    assert batch.status == 503 and batch.header("Retry-After") == "1"
    assert [r["status"] for r in batch.json()["results"]] == ["retry", "retry"]
    assert all("shard-0001 is not reachable" in r["error"] for r in batch.json()["results"])
    for n in range(5):
        assert cluster.write(up, append_request("outage", url=f"/{n}")).status == 202
    assert _batch(cluster, up, [append_request("outage")]).json()["queued"] == 1
    health = cluster.front.request("GET", "/v1/healthz").json()
    assert health["status"] == "degraded"
    assert health["shards"] == {"shard-0000": "ok", "shard-0001": "unreachable"}
    assert cluster.recorded(up, actor_query("outage")) == {"shard-0000": 6}


def test_a_retry_after_the_shard_is_back_is_recorded_once(cluster):
    tenant = _tenant_on(cluster, "shard-0001")
    key = str(uuid.uuid4())
    assert cluster.write(tenant, append_request("comeback"), key=key).status == 202
    cluster.shards[1].kill()  # the answer is lost: the client retries with the same key
    assert cluster.write(tenant, append_request("comeback"), key=key).status == 503
    cluster.shards[1].launch()  # same port: its config pins it
    statuses = [cluster.write(tenant, append_request("comeback"), key=key).json()["status"] for _ in range(2)]
    # queued if the kill came before the first write was durable, else duplicate; never two rows
    assert statuses[0] in ("queued", "duplicate") and statuses[1] == "duplicate"
    assert cluster.recorded(tenant, actor_query("comeback"))["shard-0001"] == 1


def test_the_port_keeps_serving_when_one_worker_stops(cluster):
    tenant = _tenant_on(cluster, "shard-0000")
    assert cluster.front.workers[0].stop() == 0  # a clean exit on SIGTERM
    for n in range(10):  # a fresh connection each: all reach the worker that is left
        assert cluster.write(tenant, append_request("survivor", url=f"/{n}")).status == 202
    assert cluster.recorded(tenant, actor_query("survivor"))["shard-0000"] == 10
