"""What a shard offers the cluster (quipu/shard/cluster_api.py), on a real shard process:
a tree head consistent with its proofs, freezing for good, the Idempotency-Key lookup per
tenant, and the snapshot a query page is pinned to."""

import secrets

import pytest
from shard_proc import ShardProcess, actor_query, append_request, define_types

from quipu.core.merkle import verify_consistency


@pytest.fixture
def shard(tmp_path):
    s = ShardProcess.start(tmp_path)
    try:
        define_types(s)
        yield s
    finally:
        s.stop()


def emit(shard, actor: str, key: str | None = None, tenant: str | None = None) -> int:
    headers = {"Idempotency-Key": key} if key else {}
    if tenant is not None:
        headers["X-Quipu-Tenant"] = tenant
    return shard.request("POST", "/v1/logs", append_request(actor), headers=headers).status


def test_tree_head_is_one_consistent_size_and_root_that_later_trees_prove_they_extend(shard):
    for _ in range(5):
        assert emit(shard, "header") == 202
    shard.flush()
    status, head = shard.json("GET", "/v1/admin/head")
    assert status == 200
    assert head["tree_size"] == head["records"] == 5 and not head["frozen"] and head["writer_alive"]
    for _ in range(3):
        assert emit(shard, "header") == 202
    shard.flush()
    _, proof = shard.json("GET", f"/v1/proof/consistency?from={head['tree_size']}")
    verify_consistency(
        head["tree_size"],
        proof["second_size"],
        bytes.fromhex(head["merkle_root"]),
        bytes.fromhex(proof["merkle_root"]),
        [bytes.fromhex(h) for h in proof["proof"]],
    )


def test_head_and_freeze_need_administer(shard):
    for path, method in (("/v1/admin/head", "GET"), ("/v1/admin/freeze", "POST")):
        shard.request(method, path, role="service").error(403)
        shard.request(method, path, role=None).error(401)
    assert emit(shard, "still-open") == 202


def test_frozen_shard_refuses_every_emit_across_a_restart_and_keeps_serving_reads(shard):
    assert emit(shard, "before-freeze") == 202
    shard.flush()
    assert shard.request("POST", "/v1/admin/freeze").status == 204
    message = shard.request("POST", "/v1/logs", append_request("after-freeze")).error(409)
    assert message.startswith("this shard is frozen")
    batch = shard.request("POST", "/v1/logs/batch", [append_request("after-freeze")])
    assert batch.error(409).startswith("this shard is frozen")
    shard.stop()
    shard.launch()
    assert shard.request("POST", "/v1/logs", append_request("after-restart")).status == 409
    assert shard.json("GET", "/v1/admin/head")[1]["frozen"] is True
    assert shard.count(actor_query("before-freeze")) == 1
    assert shard.count({}) == 1


def test_lookup_names_exactly_the_keys_this_tenant_sent(shard):
    mine, theirs, unseen = (f"k-{secrets.token_hex(6)}" for _ in range(3))
    assert emit(shard, "keyed", mine, tenant="acme") == 202
    assert emit(shard, "keyed", theirs, tenant="globex") == 202
    status, answer = shard.json(
        "POST", "/v1/idempotency/lookup", {"keys": [mine, theirs, unseen]}, headers={"X-Quipu-Tenant": "acme"}
    )
    assert (status, answer) == (200, {"known": [mine]})
    shard.flush()
    shard.kill()
    shard.launch()  # the window is rebuilt from the rows' keys
    _, answer = shard.json(
        "POST", "/v1/idempotency/lookup", {"keys": [mine]}, headers={"X-Quipu-Tenant": "acme"}
    )
    assert answer == {"known": [mine]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"keys": "k"},
        {"keys": [""]},
        {"keys": ["a b"]},
        {"keys": ["k"], "x": 1},
        [],
        {"keys": ["k"] * 10_001},
    ],
)
def test_bad_lookup_is_400(shard, body):
    shard.request("POST", "/v1/idempotency/lookup", body).error(400)


def test_lookup_needs_emit(shard):
    shard.request("POST", "/v1/idempotency/lookup", {"keys": ["k"]}, role="auditor").error(403)


def test_query_page_names_the_snapshot_its_cursor_is_pinned_to(shard):
    for _ in range(4):
        assert emit(shard, "snap") == 202
    shard.flush()
    first = shard.request("POST", "/v1/logs/query", actor_query("snap", limit=2))
    assert first.header("X-Quipu-Snapshot") == "4"
    cursor = first.header("X-Quipu-Next-Cursor")
    assert emit(shard, "snap") == 202
    shard.flush()
    second = shard.request("POST", "/v1/logs/query", actor_query("snap", limit=2, cursor=cursor))
    assert second.header("X-Quipu-Snapshot") == "4"
    fresh = shard.request("POST", "/v1/logs/query", actor_query("snap", limit=2))
    assert fresh.header("X-Quipu-Snapshot") == "5"
