"""Everything but writes and the front's own healthz is forwarded to router_url unchanged
and the answer streamed back. Here a real shard stands in for the router (it speaks the
same v1 API), so every answer through the front can be compared with the same call made
to it directly."""

import json

import pytest
from ingest_proc import IngestCluster, IngestFront
from shard_proc import actor_query, append_request

TENANT = "X-Quipu-Tenant"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with IngestCluster.start(tmp_path_factory.mktemp("forward"), shards=2, workers=2) as cluster:
        router = cluster.shards[0]  # what router_url points at
        tenant = next(f"fwd-{n}" for n in range(100) if cluster.owner(f"fwd-{n}") is router)
        for n in range(30):
            assert (
                cluster.write(tenant, append_request("forwarded", url=f"/{n}", occurred_at=1_000 + n)).status
                == 202
            )
        router.flush()
        cluster.tenant = tenant
        yield cluster


def _both(cluster, method, path, body=None, token="ops", headers=None):
    """The same call through the front and directly to the router."""
    token = cluster.tokens[token]
    front = cluster.front.request(method, path, body, token=token, headers=headers)
    direct = cluster.shards[0].request(method, path, body, token=token, headers=headers)
    return front, direct


def test_a_read_is_forwarded_with_the_callers_token_and_tenant(cluster):
    front, direct = _both(
        cluster, "POST", "/v1/logs/count", actor_query("forwarded"), headers={TENANT: cluster.tenant}
    )
    assert front.status == direct.status == 200
    assert front.json() == direct.json() == {"count": 30}
    acme, _ = _both(cluster, "POST", "/v1/logs/count", actor_query("forwarded"), token="acme-auditor")
    assert acme.json() == {"count": 0}  # the bound token reads its own tenant only


def test_answer_headers_and_bodies_pass_through_unchanged(cluster):
    query = {**actor_query("forwarded"), "limit": 5}
    front, direct = _both(cluster, "POST", "/v1/logs/query", query, headers={TENANT: cluster.tenant})
    assert front.status == 200 and front.data == direct.data
    assert front.header("X-Quipu-Next-Cursor") == direct.header("X-Quipu-Next-Cursor") is not None
    assert front.header("Content-Type") == direct.header("Content-Type")
    page2, _ = _both(
        cluster,
        "POST",
        "/v1/logs/query",
        {**query, "cursor": front.header("X-Quipu-Next-Cursor")},
        headers={TENANT: cluster.tenant},
    )
    assert page2.status == 200 and len(page2.json()) == 5
    assert {r["log_id"] for r in page2.json()}.isdisjoint(r["log_id"] for r in front.json())


def test_a_query_string_and_an_encoded_path_reach_the_router_as_sent(cluster):
    front, direct = _both(cluster, "GET", "/v1/proof/consistency?from=1")
    assert front.status == direct.status == 200 and front.data == direct.data
    front, direct = _both(cluster, "GET", "/v1/entities/default_actor/a%2Fb%7Bc%7D/history")
    assert front.status == direct.status and front.data == direct.data
    front, direct = _both(cluster, "GET", "/v1/entities/default_actor?include_deleted=maybe")
    assert front.error(400) == direct.error(400)


def test_an_export_streams_through_whole(cluster):
    query = actor_query("forwarded")
    front, direct = _both(cluster, "POST", "/v1/logs/export", query, headers={TENANT: cluster.tenant})
    assert front.status == 200 and front.header("Content-Type").startswith("application/x-ndjson")
    assert front.data == direct.data
    assert len([json.loads(line) for line in front.data.splitlines()]) == 30


def test_the_routers_errors_reach_the_caller_as_they_are(cluster):
    for method, path, token in [
        ("GET", "/v1/no-such-path", "ops"),
        ("POST", "/v1/admin/flush", "acme"),
        ("GET", "/v1/types", None),
        ("DELETE", "/v1/types", "ops"),
    ]:
        tok = cluster.tokens[token] if token else None
        front = cluster.front.request(method, path, token=tok)
        direct = cluster.shards[0].request(method, path, token=tok, role=None)
        assert front.status == direct.status >= 400, (path, front.status, direct.status)
        assert front.data == direct.data
        assert front.header("Allow") == direct.header("Allow")
        assert front.header("WWW-Authenticate") == direct.header("WWW-Authenticate")


def test_a_request_body_is_forwarded_within_the_front_limit(cluster):
    too_big = cluster.front.request(
        "POST", "/v1/logs/query", raw=b"x" * ((1 << 20) + 1), token=cluster.tokens["ops"]
    )
    assert "larger than" in too_big.error(413)


def test_metrics_are_forwarded(cluster):
    front, direct = _both(cluster, "GET", "/metrics")
    assert front.status == direct.status == 200
    assert front.header("Content-Type") == direct.header("Content-Type")
    assert b"quipu_queue_depth" in front.data


def test_a_router_that_is_down_is_503_with_retry_after(cluster, tmp_path):
    front = IngestFront(tmp_path, {**cluster.front.config, "listen": "127.0.0.1:0"}, cluster.cluster_token)
    front.config["router_url"] = "http://127.0.0.1:9"  # discard port: nothing listens
    front.launch(1)
    try:
        reply = front.request("POST", "/v1/logs/count", {}, token=cluster.tokens["ops"])
        assert "the router is not reachable" in reply.error(503)
        assert reply.header("Retry-After") == "1"
        health = front.request("GET", "/v1/healthz").json()
        assert health["status"] == "degraded" and health["router"] == "unreachable"
        written = front.request(
            "POST",
            "/v1/logs",
            append_request("routerless"),
            token=cluster.tokens["ops"],
            headers={TENANT: "acme"},
        )
        assert written.status == 202  # writes do not need the router
    finally:
        front.stop()
