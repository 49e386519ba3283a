"""The cluster extensions on a real router: anchors signed over every shard's head,
`verify` clean on an untouched cluster and reporting each tamper, status, a down shard,
periodic anchors handed to the export URL, and reads across a grow."""

import asyncio
import base64
import dataclasses
import http.server
import json
import shutil
import threading
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from router_proc import RouterCluster, cluster_shard
from shard_proc import append_request, define_types, wait_until

from quipu.core.errors import BadInput
from quipu.router.anchor import Anchor
from quipu.router.app import make_app
from quipu.router.config import load_router_config
from quipu.router.shard_map import ShardMap
from quipu.shard.auth import TokenTable

T0 = 1_700_000_000_000_000


@pytest.fixture
def cluster(tmp_path):
    with RouterCluster.start(tmp_path, shards=2) as cluster:
        yield cluster


def tenant_on(cluster: RouterCluster, shard_id: str) -> str:
    return next(
        t for t in (f"tenant-{n}" for n in range(100)) if cluster.shard_map().route_write(t).id == shard_id
    )


def fill(cluster: RouterCluster, per_shard: int = 5, actor: str = "writer") -> None:
    for shard_id in ("shard-0000", "shard-0001"):
        tenant = tenant_on(cluster, shard_id)
        cluster.write_batch(tenant, [append_request(actor, occurred_at=T0 + i) for i in range(per_shard)])
    cluster.flush()


def call(cluster: RouterCluster, method: str, path: str, body: object = None):
    return cluster.router.json(method, path, body, token=cluster.tokens["admin"])


def anchor(cluster: RouterCluster) -> dict:
    status, body = call(cluster, "POST", "/v1/cluster/anchor")
    assert status == 200, body
    return body


def verify(cluster: RouterCluster) -> dict:
    status, body = call(cluster, "POST", "/v1/cluster/verify")
    assert status == 200, body
    return body


def problems(report: dict, shard_id: str) -> str:
    return " | ".join(report["shards"][shard_id]["problems"])


def test_anchor_covers_every_shard_head_and_is_logged(cluster):
    fill(cluster)
    signed = anchor(cluster)
    heads = {h["shard"]: h for h in signed["heads"]}
    for shard_id in ("shard-0000", "shard-0001"):
        _, head = cluster.shard(shard_id).json("GET", "/v1/admin/head", token=cluster.cluster_token)
        assert heads[shard_id] == {
            "shard": shard_id,
            "tree_size": head["tree_size"],
            "merkle_root": head["merkle_root"],
        }
    assert signed["manifest_hash"] == cluster.shard_map().manifest_hash and signed["omitted"] == []
    # the signature verifies with the public key file alone, as docs/format.md says
    pem = Path(cluster.router.config["anchor"]["public_key_pem_file"]).read_bytes()
    public = serialization.load_pem_public_key(pem)
    body = {k: v for k, v in signed.items() if k != "signature"}
    message = b"quipu-anchor-v1\x00" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    public.verify(base64.b64decode(signed["signature"]), message, padding.PKCS1v15(), hashes.SHA256())
    logged = [json.loads(line) for line in (cluster.base / "anchors.log").read_text().splitlines()]
    assert logged == [signed]
    second = anchor(cluster)
    status, listed = call(cluster, "GET", "/v1/cluster/anchors?limit=1")
    assert status == 200 and listed["anchors"] == [second]
    assert "limit" in cluster.router.request(
        "GET", "/v1/cluster/anchors?limit=0", token=cluster.tokens["admin"]
    ).error(400)


def test_untouched_cluster_verifies_clean(cluster):
    fill(cluster)
    anchor(cluster)
    fill(cluster, actor="later")  # growth after an anchor is what append-only allows
    report = verify(cluster)
    assert report["ok"], report
    assert report["anchors"] == {"checked": 1, "trusted": 1, "problems": []}
    assert (
        report["map"]["ok"] and report["map"]["anchored_manifest_hash"] == cluster.shard_map().manifest_hash
    )
    assert all(r["tree_size"] > r["anchored_tree_size"] for r in report["shards"].values())


def test_verify_reports_a_shard_restored_from_an_older_copy(cluster, tmp_path):
    fill(cluster)
    shard = cluster.shard("shard-0000")
    shard.stop()
    shutil.copytree(shard.base / "store", tmp_path / "old-copy")
    shard.launch()
    fill(cluster, actor="after-the-copy")
    anchor(cluster)
    shard.stop()
    shutil.rmtree(shard.base / "store")
    shutil.copytree(tmp_path / "old-copy", shard.base / "store")
    shard.launch()
    report = verify(cluster)
    assert not report["ok"]
    assert "rolled back" in problems(report, "shard-0000")
    assert report["shards"]["shard-0001"]["ok"]
    # a new anchor does not cover the rolled-back shard: its last good head stays the mark
    again = anchor(cluster)
    assert [o["shard"] for o in again["omitted"]] == ["shard-0000"]
    assert "rolled back" in problems(verify(cluster), "shard-0000")


def test_verify_reports_a_deleted_and_a_rewritten_shard(cluster):
    fill(cluster)
    anchor(cluster)
    shard = cluster.shard("shard-0001")
    shard.stop()
    shutil.rmtree(shard.base / "store")
    shard.launch()  # a fresh, empty store in its place
    define_types(shard)
    assert "its store was deleted" in problems(verify(cluster), "shard-0001")
    # refilled with as many records as were anchored, but not the same ones
    fill(cluster, per_shard=7, actor="impostor")
    report = verify(cluster)
    assert not report["ok"] and "does not extend the anchored head" in problems(report, "shard-0001")
    assert report["shards"]["shard-0000"]["ok"]


def test_verify_reports_an_edited_shard_map(cluster):
    fill(cluster)
    anchor(cluster)
    edited = dataclasses.replace(cluster.shard_map(), seed="someone-else")
    edited.save(cluster.map_path)
    wait_until(lambda: not verify(cluster)["map"]["ok"], "the router sees the edited map")
    report = verify(cluster)
    assert not report["ok"] and "shards.json differs" in report["map"]["problems"][0]
    assert report["map"]["manifest_hash"] == ShardMap.load(cluster.map_path).manifest_hash


def test_verify_reports_an_edited_anchors_log(cluster):
    fill(cluster)
    anchor(cluster)
    path = cluster.base / "anchors.log"
    line = json.loads(path.read_text())
    line["heads"][0]["tree_size"] += 1
    path.write_text(json.dumps(line) + "\n")
    report = verify(cluster)
    assert not report["ok"]
    assert report["anchors"]["problems"] == ["anchors log line 1: the signature does not verify"]


def test_a_down_shard_is_reported_and_its_reads_answer_503(cluster):
    fill(cluster)
    anchor(cluster)
    cluster.shard("shard-0001").stop()
    report = verify(cluster)
    assert not report["ok"] and "not reachable" in problems(report, "shard-0001")
    reply = cluster.query({})
    assert "shard-0001" in reply.error(503) and reply.header("Retry-After") == "1"
    status, health = cluster.router.json("GET", "/v1/healthz", role=None)
    assert status == 503 and health["shards"] == {"shard-0000": "ok", "shard-0001": "down"}
    status, body = call(cluster, "GET", "/v1/cluster/status")
    assert status == 200 and [s["health"] for s in body["shards"]] == ["ok", "down"]
    assert [o["shard"] for o in anchor(cluster)["omitted"]] == ["shard-0001"]


class AnchorSink(http.server.BaseHTTPRequestHandler):
    received: list[dict]

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_periodic_anchors_are_logged_and_posted_to_the_export_url(tmp_path):
    handler = type("Sink", (AnchorSink,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/anchors"
    try:
        with RouterCluster.start(tmp_path, shards=2, interval_secs=0.2, export_url=url) as cluster:
            wait_until(lambda: len(handler.received) >= 2, "two anchors posted")
            logged = [json.loads(line) for line in (cluster.base / "anchors.log").read_text().splitlines()]
            assert handler.received[:2] == logged[:2]
            assert all(cluster.cluster_token not in json.dumps(a) for a in handler.received)
    finally:
        server.shutdown()
        server.server_close()


def test_status_and_reads_follow_a_grow(cluster):
    fill(cluster)
    first = cluster.query({"limit": 3})
    cursor = first.header("X-Quipu-Next-Cursor")
    new = cluster_shard(cluster.base / "shard-0002", cluster.cluster_token)
    cluster.shards.append(new)
    define_types(new)
    for shard in cluster.shards[:2]:
        assert shard.request("POST", "/v1/admin/freeze", token=cluster.cluster_token).status == 204
    cluster.shard_map().with_pending([cluster.info(new)]).commit_pending().save(cluster.map_path)

    def grown() -> bool:
        status, body = call(cluster, "GET", "/v1/cluster/status")
        return status == 200 and len(body["shards"]) == 3

    wait_until(grown, "the router reads the grown map")
    _, body = call(cluster, "GET", "/v1/cluster/status")
    assert body["generation"] == 1
    assert [(s["id"], s["state"], s["generation"]) for s in body["shards"]] == [
        ("shard-0000", "frozen", 0),
        ("shard-0001", "frozen", 0),
        ("shard-0002", "active", 1),
    ]
    cluster.write(tenant_on(cluster, "shard-0002"), append_request("after-grow", occurred_at=T0 + 99))
    cluster.flush()
    # a cursor from before the grow pages on over its own snapshot: the new shard held nothing then
    rest = cluster.page_all({"limit": 3, "cursor": cursor})
    assert len(first.json()) + len(rest) == 10 and "after-grow" not in json.dumps(rest)
    everything = cluster.page_all({"limit": 4})
    assert len(everything) == 11 and everything[0]["occurred_at"] == T0 + 99


def test_router_stops_cleanly_on_sigterm(cluster):
    cluster.router.stop()
    assert cluster.router.proc.returncode == 0
    assert "Traceback" not in cluster.router.log()


def test_export_hook_gets_every_anchor_and_a_failing_hook_breaks_nothing(cluster):
    """make_app's export hook, on an in-process router over the same real shards."""
    fill(cluster)
    seen: list[Anchor] = []

    def hook(anchor: Anchor) -> None:
        seen.append(anchor)
        if len(seen) == 1:
            raise RuntimeError("the exporter is down")

    config = load_router_config(cluster.router.config_path)

    async def run() -> list[int]:
        app = make_app(config, cluster_token=cluster.cluster_token, export_hook=hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        headers = {"Authorization": f"Bearer {cluster.tokens['admin']}"}
        try:
            async with aiohttp.ClientSession() as session:
                statuses = []
                for _ in range(2):
                    async with session.post(f"http://{host}:{port}/v1/cluster/anchor", headers=headers) as r:
                        statuses.append(r.status)
                return statuses
        finally:
            await runner.cleanup()

    assert asyncio.run(run()) == [200, 200]
    assert len(seen) == 2 and all(a.manifest_hash == cluster.shard_map().manifest_hash for a in seen)
    logged = [
        Anchor.from_json(json.loads(line)) for line in (cluster.base / "anchors.log").read_text().splitlines()
    ]
    assert logged == seen


def test_the_cluster_token_may_anchor_and_no_token_file_can_grant_its_role(cluster):
    fill(cluster)
    status, signed = cluster.router.json("POST", "/v1/cluster/anchor", token=cluster.cluster_token)
    assert status == 200 and {h["shard"] for h in signed["heads"]} == {"shard-0000", "shard-0001"}
    with pytest.raises(BadInput):
        TokenTable.from_json({"sha256:" + "0" * 64: "quipu:cluster"})
