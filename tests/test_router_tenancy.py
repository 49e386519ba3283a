"""Tenant isolation at the router, on every read path: a tenant-bound token sees only its
own tenant's rows, is refused another tenant by name, and learns nothing of other tenants
through counts, cursors, proofs, entity lists or errors."""

import base64
import json

import pytest
from router_proc import RouterCluster
from shard_proc import append_request

from quipu.core.merkle import verify_inclusion

T0 = 1_700_000_000_000_000
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "wonka"]
PER_TENANT = 9


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RouterCluster.start(tmp_path_factory.mktemp("router-tenancy"), shards=3) as cluster:
        for n, tenant in enumerate(TENANTS):
            target = [("default_target", "doc-1", tenant)]
            bodies = [
                append_request(f"{tenant}-user", occurred_at=T0 + i * 1000 + n, targets=target)
                for i in range(PER_TENANT)
            ]
            cluster.write_batch(tenant, bodies)
        cluster.flush()
        assert cluster.owner("acme") is not cluster.owner("globex"), "pick tenants on two shards"
        yield cluster


def rows_of(cluster, tenant: str) -> list[dict]:
    return cluster.owner(tenant).export({"tenant": tenant}, token=cluster.cluster_token)


def test_tenant_token_pages_only_its_tenant(cluster):
    got = cluster.page_all({"limit": 4}, user="acme")
    assert len(got) == PER_TENANT and {r["tenant"] for r in got} == {"acme"}
    assert sorted(r["log_id"] for r in got) == sorted(r["log_id"] for r in rows_of(cluster, "acme"))


def test_tenant_token_counts_and_exports_only_its_tenant(cluster):
    status, body = cluster.router.json("POST", "/v1/logs/count", {}, token=cluster.tokens["acme"])
    assert (status, body) == (200, {"count": PER_TENANT})
    exported = cluster.router.export({}, token=cluster.tokens["acme"])
    assert len(exported) == PER_TENANT and {r["tenant"] for r in exported} == {"acme"}


@pytest.mark.parametrize("path", ["/v1/logs/query", "/v1/logs/count", "/v1/logs/export"])
def test_tenant_token_naming_another_tenant_is_forbidden(cluster, path):
    token = cluster.tokens["acme"]
    by_header = cluster.router.request("POST", path, {}, token=token, headers={"X-Quipu-Tenant": "globex"})
    assert "bound to another tenant" in by_header.error(403)
    by_body = cluster.router.request("POST", path, {"tenant": "globex"}, token=token)
    assert "bound to another tenant" in by_body.error(403)


def test_naming_its_own_tenant_is_the_same_as_naming_none(cluster):
    own = {"X-Quipu-Tenant": "acme"}
    reply = cluster.router.request("POST", "/v1/logs/count", {}, token=cluster.tokens["acme"], headers=own)
    assert reply.json() == {"count": PER_TENANT}


def test_star_token_reads_the_tenant_it_names(cluster):
    reply = cluster.query({"limit": 100}, headers={"X-Quipu-Tenant": "globex"})
    assert {r["tenant"] for r in reply.json()} == {"globex"} and len(reply.json()) == PER_TENANT
    everything = cluster.query({"limit": 1000}).json()
    assert {r["tenant"] for r in everything} >= set(TENANTS)


def test_a_tenants_cursor_does_not_work_for_another_tenant(cluster):
    cursor = cluster.query({"limit": 2}, user="acme").header("X-Quipu-Next-Cursor")
    assert cursor
    reply = cluster.query({"limit": 2, "cursor": cursor}, user="globex")
    assert reply.error(400) == "cursor is not valid for this query; start again without a cursor"
    # the same cursor with a `*` token naming acme is the same query: it pages on
    assert cluster.query({"limit": 2, "cursor": cursor}, headers={"X-Quipu-Tenant": "acme"}).status == 200


def test_tenant_cursor_names_only_the_tenants_shards(cluster):
    """A bound read asks only the shards that ever owned the tenant; its cursor says so."""
    cursor = cluster.query({"limit": 2}, user="acme").header("X-Quipu-Next-Cursor")
    body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert list(body["p"]) == [cluster.shard_map().route_write("acme").id]


def test_tenant_token_gets_an_inclusion_proof_for_its_own_record(cluster):
    row = rows_of(cluster, "acme")[0]
    status, proof = cluster.router.json(
        "GET", f"/v1/proof/inclusion/{row['log_id']}", token=cluster.tokens["acme"]
    )
    assert status == 200 and proof["log_id"] == row["log_id"]
    verify_inclusion(
        proof["leaf_index"],
        proof["tree_size"],
        bytes.fromhex(proof["leaf"]),
        [bytes.fromhex(h) for h in proof["audit_path"]],
        bytes.fromhex(proof["merkle_root"]),
    )


def test_another_tenants_record_is_answered_like_an_unknown_one(cluster):
    theirs = rows_of(cluster, "globex")[0]["log_id"]
    unknown = theirs[:-10] + "ffffffffff"  # same store, a leaf that does not exist
    token = cluster.tokens["acme"]
    answers = [
        cluster.router.request("GET", f"/v1/proof/inclusion/{i}", token=token) for i in (theirs, unknown)
    ]
    messages = [a.error(404).replace(i, "ID") for a, i in zip(answers, (theirs, unknown), strict=True)]
    assert messages[0] == messages[1]
    assert "globex" not in messages[0]


def test_another_tenants_record_on_the_same_shard_is_also_unknown(cluster):
    """Tenants sharing acme's shard: the shard itself refuses the record to acme's tenant."""
    shard = cluster.shard_map().route_write("acme").id
    neighbours = [t for t in TENANTS if t != "acme" and cluster.shard_map().route_write(t).id == shard]
    assert neighbours, "the fixed seed puts another tenant on acme's shard"
    theirs = rows_of(cluster, neighbours[0])[0]["log_id"]
    cluster.router.request("GET", f"/v1/proof/inclusion/{theirs}", token=cluster.tokens["acme"]).error(404)
    assert (
        cluster.router.request("GET", f"/v1/proof/inclusion/{theirs}", token=cluster.tokens["admin"]).status
        == 200
    )


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/entities/default_target"),
        ("GET", "/v1/entities/default_target/doc-1/history"),
        ("GET", "/v1/proof/consistency?shard=shard-0000&from=1"),
    ],
)
def test_tenant_token_cannot_read_per_shard_registries_or_trees(cluster, method, path):
    assert "not per tenant" in cluster.router.request(method, path, token=cluster.tokens["acme"]).error(403)


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/admin/verify"),
        ("GET", "/v1/admin/dlq"),
        ("POST", "/v1/access/query"),
        ("GET", "/metrics"),
        ("GET", "/v1/cluster/status"),
        ("POST", "/v1/cluster/verify"),
        ("POST", "/v1/types"),
    ],
)
def test_tenant_bound_admin_cannot_use_cluster_wide_paths(cluster, method, path):
    reply = cluster.router.request(method, path, {}, token=cluster.tokens["acme-admin"])
    assert "not per tenant" in reply.error(403)


def test_tenant_bound_admin_reads_its_own_tenant(cluster):
    status, body = cluster.router.json("POST", "/v1/logs/count", {}, token=cluster.tokens["acme-admin"])
    assert (status, body) == (200, {"count": PER_TENANT})
