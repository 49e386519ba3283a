"""A grow seen from the ingest front, step by step as the supervisor does it: new shards
started, the active ones frozen, the new generation written to shards.json. The running
workers pick the map up without a restart; a retry of a key written before the grow is
still recorded once (the front asks the tenant's previous owner); nothing is written to a
frozen shard."""

import threading
import uuid

import pytest
from ingest_proc import IngestCluster
from shard_proc import actor_query, append_request, wait_until

TENANT = "X-Quipu-Tenant"
TENANTS = [f"grow-{n:02d}" for n in range(16)]


@pytest.fixture
def cluster(tmp_path):
    with IngestCluster.start(tmp_path, shards=2, workers=2) as cluster:
        yield cluster


def _batch(cluster, tenant, items):
    return cluster.front.request(
        "POST", "/v1/logs/batch", items, token=cluster.tokens["ops"], headers={TENANT: tenant}
    )


def _keyed(actor: str, key: str, url: str = "/") -> dict:
    return {**append_request(actor, url=url), "idempotency_key": key}


def test_a_grow_is_picked_up_without_restart_and_pre_grow_keys_stay_recorded_once(cluster):
    before = {t: str(uuid.uuid4()) for t in TENANTS}
    batch_before = {t: str(uuid.uuid4()) for t in TENANTS}
    old_owner = {t: cluster.shard_map().route_write(t).id for t in TENANTS}
    for tenant in TENANTS:
        assert cluster.write(tenant, append_request("grown"), key=before[tenant]).json()["status"] == "queued"
        assert _batch(cluster, tenant, [_keyed("grown", batch_before[tenant])]).json()["queued"] == 1

    cluster.grow(2)

    new_map = cluster.shard_map()
    assert new_map.active == ("shard-0002", "shard-0003")
    after = {t: str(uuid.uuid4()) for t in TENANTS}
    for tenant in TENANTS:
        # A retry of a pre-grow key, single and in a batch beside a new event.
        assert (
            cluster.write(tenant, append_request("grown"), key=before[tenant]).json()["status"] == "duplicate"
        )
        reply = _batch(
            cluster, tenant, [_keyed("grown", batch_before[tenant]), _keyed("grown", after[tenant])]
        )
        assert [r["status"] for r in reply.json()["results"]] == ["duplicate", "queued"]
        assert cluster.write(tenant, append_request("grown", url="/new")).json()["status"] == "queued"
    for tenant in TENANTS:
        counts = cluster.recorded(tenant, actor_query("grown"))
        expected = {sid: 0 for sid in counts} | {old_owner[tenant]: 2, new_map.route_write(tenant).id: 2}
        assert counts == expected, (tenant, counts)
    assert cluster.front.request("GET", "/v1/healthz").json()["generation"] == 1


def test_a_frozen_shard_without_the_new_map_answers_503_and_takes_nothing(cluster):
    tenant = TENANTS[0]
    key = str(uuid.uuid4())
    new = cluster.add_shards(1)
    cluster.freeze_active()  # the map still routes to the frozen shards
    refused = cluster.write(tenant, append_request("frozen"), key=key)
    assert "is frozen and the new shard map is not in place yet" in refused.error(503)
    assert refused.header("Retry-After") == "1"
    batch = _batch(cluster, tenant, [_keyed("frozen", key)])
    assert batch.status == 503 and batch.json()["retry"] == 1
    cluster.commit(new)
    assert cluster.write(tenant, append_request("frozen"), key=key).json()["status"] == "queued"
    assert cluster.write(tenant, append_request("frozen"), key=key).json()["status"] == "duplicate"
    counts = cluster.recorded(tenant, actor_query("frozen"))
    assert counts == {"shard-0000": 0, "shard-0001": 0, "shard-0002": 1}


def test_a_moved_tenants_write_waits_while_its_previous_owner_is_down(cluster):
    tenant = TENANTS[1]
    key = str(uuid.uuid4())
    old = cluster.owner(tenant)
    assert cluster.write(tenant, append_request("waiting"), key=key).json()["status"] == "queued"
    cluster.grow(1)
    old.stop()  # flushed and gone: only it could say the key is known
    refused = cluster.write(tenant, append_request("waiting"), key=key)
    assert "is not reachable" in refused.error(503)
    batch = _batch(cluster, tenant, [_keyed("waiting", key)])
    assert batch.status == 503 and batch.json()["results"][0]["status"] == "retry"
    old.launch()
    assert cluster.write(tenant, append_request("waiting"), key=key).json()["status"] == "duplicate"
    assert sum(cluster.recorded(tenant, actor_query("waiting")).values()) == 1


class _Sender(threading.Thread):
    """Writes one tenant's events in order, each retried with its key until a 202."""

    def __init__(self, cluster: IngestCluster, tenant: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.tenant = cluster, tenant
        self.acknowledged = 0
        self.refusals = 0  # 503s while the map changed: retried with the same key
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            key = f"{self.tenant}-{self.acknowledged}"
            for _ in range(1000):
                reply = self.cluster.write(self.tenant, append_request("loaded"), key=key)
                if reply.status == 202:
                    break
                if reply.status != 503:
                    self.error = f"{reply.status} {reply.data[:200]!r}"
                    return
                self.refusals += 1
            self.acknowledged += 1

    def wait_for(self, count: int) -> None:
        wait_until(lambda: self.acknowledged >= count or self.error is not None, f"{count} acks")


def test_writes_that_go_on_during_a_grow_are_each_recorded_once(cluster):
    senders = [_Sender(cluster, tenant) for tenant in TENANTS[:4]]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.wait_for(20)
    cluster.grow(2)
    marks = [sender.acknowledged for sender in senders]
    for sender, mark in zip(senders, marks, strict=True):
        sender.wait_for(mark + 20)
    for sender in senders:
        sender.stop.set()
        sender.join(60)
    for sender in senders:
        assert sender.error is None, sender.error
        counts = cluster.recorded(sender.tenant, actor_query("loaded"))
        assert sum(counts.values()) == sender.acknowledged, (sender.tenant, counts, sender.acknowledged)
        assert counts[cluster.shard_map().route_write(sender.tenant).id] >= 20  # written after the grow
