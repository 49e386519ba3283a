"""The rest of the v1 API through the router: types and columns on every shard, entities
and histories merged, proofs, admin calls with per-shard results, the access log merged,
health, metrics, and writes refused."""

import signal

import pytest
from router_proc import RouterCluster
from shard_proc import append_request, wait_until

from quipu.core.merkle import verify_consistency, verify_inclusion

T0 = 1_700_000_000_000_000
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "wonka"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RouterCluster.start(tmp_path_factory.mktemp("router-admin"), shards=3) as cluster:
        for n, tenant in enumerate(TENANTS):
            # the same entity id on every shard, renamed by each tenant in turn
            target = [("default_target", "shared-doc", f"name by {tenant}")]
            cluster.write(tenant, append_request(f"{tenant}-user", occurred_at=T0 + n, targets=target))
            cluster.flush()
        yield cluster


def admin(cluster, method: str, path: str, body: object = None):
    return cluster.router.json(method, path, body, token=cluster.tokens["admin"])


def test_a_type_defined_through_the_router_is_on_every_shard(cluster):
    schema = {"type_name": "invoice", "fields": [{"name": "number", "kind": "Text"}]}
    reply = cluster.router.request("POST", "/v1/types", schema, token=cluster.tokens["admin"])
    assert reply.status == 204, reply.data
    for shard in cluster.shards:
        status, types = shard.json("GET", "/v1/types", token=cluster.cluster_token)
        assert "invoice" in {t["type_name"] for t in types}
    status, types = admin(cluster, "GET", "/v1/types")
    names = [t["type_name"] for t in types]
    assert status == 200 and "invoice" in names and len(names) == len(set(names))


def test_a_bad_type_is_refused_before_any_shard_changes(cluster):
    reply = cluster.router.request(
        "POST", "/v1/types", {"type_name": "Bad Name!"}, token=cluster.tokens["admin"]
    )
    reply.error(400)
    assert all(
        "Bad Name!"
        not in {t["type_name"] for t in s.json("GET", "/v1/types", token=cluster.cluster_token)[1]}
        for s in cluster.shards
    )


def test_a_column_defined_through_the_router_is_on_every_shard(cluster):
    reply = cluster.router.request(
        "POST", "/v1/columns", {"name": "region", "kind": "Text"}, token=cluster.tokens["admin"]
    )
    assert reply.status == 204, reply.data
    body = append_request("col-user", custom={"region": {"Text": "eu"}})
    for tenant in TENANTS:
        cluster.write(tenant, body)
    cluster.flush()
    rows = cluster.query({"actor_type": "default_actor", "actor_id": "col-user"}).json()
    assert len(rows) == len(TENANTS) and all(r["custom"] == {"region": {"Text": "eu"}} for r in rows)
    status, columns = cluster.router.json("GET", "/v1/columns", token=cluster.tokens["auditor"])
    assert status == 200 and [c["name"] for c in columns] == ["region"]


@pytest.mark.parametrize("path", ["/v1/types", "/v1/columns"])
def test_definitions_are_listed_to_any_granted_role_and_to_no_other(cluster, path):
    assert cluster.router.request("GET", path, token=cluster.tokens["auditor"]).status == 200
    cluster.router.request("GET", path, token=cluster.tokens["nobody"]).error(403)


def test_an_entity_known_to_several_shards_is_listed_once_as_its_latest_version(cluster):
    status, entities = admin(cluster, "GET", "/v1/entities/default_target")
    assert status == 200
    shared = [e for e in entities if e["entity_id"] == "shared-doc"]
    assert len(shared) == 1
    newest_writer = TENANTS[-1]
    assert shared[0]["fields"]["name"] == {"Text": f"name by {newest_writer}"}


def test_an_entitys_history_holds_every_shards_versions_oldest_first(cluster):
    status, versions = admin(cluster, "GET", "/v1/entities/default_target/shared-doc/history")
    assert status == 200
    names = [v["fields"]["name"]["Text"] for v in versions]
    assert names == [f"name by {t}" for t in TENANTS]
    assert [v["recorded_at"] for v in versions] == sorted(v["recorded_at"] for v in versions)


def test_an_unknown_entity_is_a_404(cluster):
    reply = cluster.router.request(
        "GET", "/v1/entities/default_target/no-such-doc/history", token=cluster.tokens["admin"]
    )
    reply.error(404)


def test_inclusion_proof_comes_from_the_shard_holding_the_record(cluster):
    row = cluster.query({"limit": 1, "order": "asc"}).json()[0]
    status, proof = admin(cluster, "GET", f"/v1/proof/inclusion/{row['log_id']}")
    assert status == 200
    verify_inclusion(
        proof["leaf_index"],
        proof["tree_size"],
        bytes.fromhex(proof["leaf"]),
        [bytes.fromhex(h) for h in proof["audit_path"]],
        bytes.fromhex(proof["merkle_root"]),
    )
    assert "log_id" in cluster.router.request(
        "GET", "/v1/proof/inclusion/nothex", token=cluster.tokens["admin"]
    ).error(400)


def test_consistency_proof_is_asked_of_the_named_shard(cluster):
    status, head = cluster.shards[1].json("GET", "/v1/admin/head", token=cluster.cluster_token)
    assert head["tree_size"] >= 1
    status, proof = admin(cluster, "GET", "/v1/proof/consistency?shard=shard-0001&from=1")
    assert status == 200 and proof["second_size"] >= head["tree_size"]
    verify_consistency(
        1,
        proof["second_size"],
        bytes.fromhex(proof["first_root"]),
        bytes.fromhex(proof["merkle_root"]),
        [bytes.fromhex(h) for h in proof["proof"]],
    )
    token = cluster.tokens["admin"]
    assert "shard" in cluster.router.request("GET", "/v1/proof/consistency?from=1", token=token).error(400)
    cluster.router.request("GET", "/v1/proof/consistency?shard=shard-0099&from=1", token=token).error(404)


def test_admin_calls_answer_the_total_and_each_shard(cluster):
    assert cluster.router.request("POST", "/v1/admin/flush", token=cluster.tokens["admin"]).status == 204
    for path, key in [("/v1/admin/redrive", "redriven"), ("/v1/admin/retention", "segments_dropped")]:
        status, body = admin(cluster, "POST", path)
        assert status == 200 and set(body["shards"]) == {"shard-0000", "shard-0001", "shard-0002"}
        assert body[key] == sum(body["shards"].values())
    status, body = admin(cluster, "GET", "/v1/admin/dlq")
    assert (status, body["parked"]) == (200, 0)
    status, body = admin(cluster, "POST", "/v1/admin/verify")
    assert status == 200 and body["ok"] and len(body["shards"]) == 3
    assert all(r["ok"] and r["log_records"] >= 1 for r in body["shards"].values())


def test_admin_calls_need_administer(cluster):
    cluster.router.request("POST", "/v1/admin/flush", token=cluster.tokens["auditor"]).error(403)
    cluster.router.request("POST", "/v1/cluster/anchor", token=cluster.tokens["auditor"]).error(403)


def test_access_log_is_merged_from_every_shard_in_time_order(cluster):
    for _ in range(4):
        admin(cluster, "GET", "/v1/entities/default_target/shared-doc/history")
    query = {"operation": "entity_history", "limit": 5}
    records, cursor = [], None
    while True:
        status, page = admin(cluster, "POST", "/v1/access/query", {**query, "cursor": cursor})
        assert status == 200, page
        records.extend(page["records"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    per_shard = {s: sum(r["shard"] == s for r in records) for s in ("shard-0000", "shard-0001", "shard-0002")}
    assert len(set(per_shard.values())) == 1 and per_shard["shard-0000"] >= 4
    assert [r["at"] for r in records] == sorted((r["at"] for r in records), reverse=True)
    assert len({(r["shard"], r["at"]) for r in records}) == len(records)


def test_writes_to_the_router_are_pointed_at_the_ingest_front(cluster):
    for path in ("/v1/logs", "/v1/logs/batch"):
        reply = cluster.router.request("POST", path, append_request("x"), token=cluster.tokens["admin"])
        assert "ingest front" in reply.error(404)


def test_healthz_is_ok_when_every_shard_answers(cluster):
    status, body = cluster.router.json("GET", "/v1/healthz", role=None)
    assert status == 200 and body == {"status": "ok", "shards": {f"shard-000{n}": "ok" for n in range(3)}}


def test_metrics_count_requests_and_need_administer(cluster):
    cluster.router.request("GET", "/metrics", token=cluster.tokens["auditor"]).error(403)
    reply = cluster.router.request("GET", "/metrics", token=cluster.tokens["admin"])
    text = reply.data.decode()
    assert reply.status == 200 and reply.header("Content-Type").startswith("text/plain; version=0.0.4")
    assert 'quipu_router_requests_total{route="/v1/logs/query",status="200"}' in text
    assert "quipu_router_shards 3.0" in text
    assert cluster.cluster_token not in text and cluster.tokens["admin"] not in text


def test_openapi_document_is_served(cluster):
    status, doc = cluster.router.json("GET", "/v1/openapi.json", role=None)
    assert status == 200 and "/v1/logs/query" in doc["paths"]


def test_an_unknown_path_is_a_json_404(cluster):
    cluster.router.request("GET", "/v1/nothing", token=cluster.tokens["admin"]).error(404)


def test_a_shard_refusing_the_cluster_token_is_the_clusters_fault_not_the_callers(tmp_path):
    with RouterCluster.start(tmp_path, shards=1) as lone:
        shard = lone.shards[0]
        shard.config["auth"]["grants"]["cluster"] = ["query"]  # administer taken away
        shard.write_config()
        shard.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: shard.request("GET", "/v1/admin/dlq", token=lone.cluster_token).status == 403, "reload"
        )
        reply = lone.router.request("POST", "/v1/admin/flush", token=lone.tokens["admin"])
        assert "shard-0000" in reply.error(502)
