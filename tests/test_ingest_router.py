"""The front and a real router together: one public URL takes a tenant's writes (to the
owning shard) and answers reads across every shard (forwarded to the router)."""

import pytest
from ingest_proc import IngestCluster
from router_proc import RouterProcess, router_config
from shard_proc import actor_query, append_request

TENANT = "X-Quipu-Tenant"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("ingest-router")
    with IngestCluster.start(base, shards=2, workers=0) as cluster:
        router = RouterProcess(base, router_config(base), cluster.tokens, cluster_token=cluster.cluster_token)
        router.write_config()
        router.launch()
        try:
            cluster.front.config["router_url"] = router.url
            cluster.front.launch(2)
            yield cluster
        finally:
            cluster.front.stop()
            router.stop()


def test_reads_through_the_front_see_every_shards_writes_once_in_order(cluster):
    tenants = [f"pub-{n}" for n in range(8)]
    assert {cluster.shard_map().route_write(t).id for t in tenants} == {"shard-0000", "shard-0001"}
    for n, tenant in enumerate(tenants):
        for m in range(5):
            body = append_request("public", url=f"/{tenant}/{m}", occurred_at=10_000 + 10 * m + n)
            assert cluster.write(tenant, body).status == 202
    for shard in cluster.shards:
        shard.flush()
    ops = cluster.tokens["ops"]
    count = cluster.front.request("POST", "/v1/logs/count", actor_query("public"), token=ops)
    assert count.status == 200 and count.json() == {"count": 40}
    rows = cluster.front.request("POST", "/v1/logs/query", {**actor_query("public"), "limit": 100}, token=ops)
    assert rows.status == 200
    stamps = [row["occurred_at"] for row in rows.json()]
    assert sorted(stamps, reverse=True) == stamps and len(set(stamps)) == 40
    one = cluster.front.request(
        "POST", "/v1/logs/count", actor_query("public"), token=ops, headers={TENANT: "pub-3"}
    )
    assert one.json() == {"count": 5}
