"""Merged reads through a real router over three real shards: query pages, count and
export merged by (occurred_at, log_id), each row exactly once, also while writes go on."""

import random

import pytest
from router_proc import RouterCluster
from shard_proc import append_request

T0 = 1_700_000_000_000_000
TENANTS = [f"tenant-{n:02d}" for n in range(12)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RouterCluster.start(tmp_path_factory.mktemp("router-query"), shards=3) as cluster:
        rng = random.Random(5)
        for tenant in TENANTS:
            # Few distinct timestamps: many ties, within one shard and across shards.
            stamps = [T0 + rng.randrange(60) * 1000 for _ in range(25)]
            cluster.write_batch(tenant, [append_request(f"{tenant}-a", occurred_at=ts) for ts in stamps])
        cluster.flush()
        yield cluster


def shard_rows(cluster: RouterCluster, query: dict) -> list[dict]:
    """The same query asked of every shard directly, with the cluster token."""
    rows = []
    for shard in cluster.shards:
        rows.extend(shard.export(query, token=cluster.cluster_token))
    return rows


def in_order(rows: list[dict], order: str) -> list[str]:
    return [
        r["log_id"]
        for r in sorted(rows, key=lambda r: (r["occurred_at"], r["log_id"]), reverse=order == "desc")
    ]


def test_rows_spread_over_every_shard(cluster):
    assert all(shard.count(token=cluster.cluster_token) for shard in cluster.shards)


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_merged_pages_give_every_row_once_in_global_order(cluster, order):
    got = cluster.page_all({"order": order, "limit": 17})
    assert [r["log_id"] for r in got] == in_order(shard_rows(cluster, {}), order)


def test_one_page_holds_the_newest_rows_of_all_shards(cluster):
    reply = cluster.query({"limit": 40})
    assert reply.status == 200
    assert [r["log_id"] for r in reply.json()] == in_order(shard_rows(cluster, {}), "desc")[:40]
    assert reply.header("X-Quipu-Next-Cursor")


def test_last_page_has_no_cursor(cluster):
    reply = cluster.query({"limit": 10_000})
    assert len(reply.json()) == sum(s.count(token=cluster.cluster_token) for s in cluster.shards)
    assert reply.header("X-Quipu-Next-Cursor") is None


def band(cluster: RouterCluster, tenant: str, rng: random.Random) -> int:
    """A time in the band of the tenant's shard: each shard's rows in its own stretch of time,
    so a desc page takes nothing from the older shards until the newer ones are paged."""
    return T0 + 10**9 * cluster.shards.index(cluster.owner(tenant)) + rng.randrange(20) * 1000


def test_paging_while_writes_continue_gives_each_snapshot_row_exactly_once(cluster):
    """Rows written between pages (older, newer and equal to the rows paged so far, on every
    shard, also on shards no page took a row from yet) do not appear and do not shift a
    page: the pages are exactly the rows there were when the first page was asked."""
    actor = "paging-writer"
    query = {"actor_type": "default_actor", "actor_id": actor, "limit": 7}
    rng = random.Random(9)
    for tenant in TENANTS:
        cluster.write_batch(
            tenant, [append_request(actor, occurred_at=band(cluster, tenant, rng)) for _ in range(4)]
        )
    cluster.flush()

    def write_more():
        for tenant in TENANTS:
            ts = T0 + 10**9 * rng.randrange(3) + rng.randrange(20) * 1000
            cluster.write(tenant, append_request(actor, occurred_at=ts))
        cluster.flush()

    for order in ("desc", "asc"):
        before = in_order(shard_rows(cluster, {k: v for k, v in query.items() if k != "limit"}), order)
        got = cluster.page_all(query | {"order": order}, between=write_more)
        assert [r["log_id"] for r in got] == before
    after = cluster.page_all(query)
    assert len(after) > len(before) and set(before) <= {r["log_id"] for r in after}


def test_count_sums_every_shard(cluster):
    status, body = cluster.router.json("POST", "/v1/logs/count", {}, token=cluster.tokens["auditor"])
    assert (status, body) == (
        200,
        {"count": sum(s.count(token=cluster.cluster_token) for s in cluster.shards)},
    )
    query = {"tenant": "tenant-03", "actor_type": "default_actor", "actor_id": "tenant-03-a"}
    status, body = cluster.router.json("POST", "/v1/logs/count", query, token=cluster.tokens["auditor"])
    assert (status, body) == (200, {"count": 25})


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_export_is_the_merged_order_of_every_shard(cluster, order):
    rows = cluster.router.export({"order": order}, token=cluster.tokens["auditor"])
    assert [r["log_id"] for r in rows] == in_order(shard_rows(cluster, {}), order)


def test_export_limit_caps_the_total(cluster):
    rows = cluster.router.export({"limit": 33}, token=cluster.tokens["auditor"])
    assert [r["log_id"] for r in rows] == in_order(shard_rows(cluster, {}), "desc")[:33]


def test_query_filters_reach_every_shard(cluster):
    query = {"from_micros": T0 + 10_000, "to_micros": T0 + 20_000, "order": "asc", "limit": 5}
    got = cluster.page_all(query)
    expected = in_order(shard_rows(cluster, {"from_micros": T0 + 10_000, "to_micros": T0 + 20_000}), "asc")
    assert [r["log_id"] for r in got] == expected and expected


def test_cursor_from_another_query_is_refused(cluster):
    cursor = cluster.query({"limit": 3}).header("X-Quipu-Next-Cursor")
    reply = cluster.query({"limit": 3, "tenant": "tenant-01", "cursor": cursor})
    assert "not valid for this query" in reply.error(400)
    assert "not valid" in cluster.query({"limit": 3, "order": "asc", "cursor": cursor}).error(400)


def test_tampered_cursor_is_refused(cluster):
    cursor = cluster.query({"limit": 3}).header("X-Quipu-Next-Cursor")
    flipped = cursor[:20] + ("A" if cursor[20] != "A" else "B") + cursor[21:]
    assert "not valid" in cluster.query({"limit": 3, "cursor": flipped}).error(400)
    assert "not valid" in cluster.query({"limit": 3, "cursor": "bm90IGEgY3Vyc29y"}).error(400)


def test_a_shards_own_cursor_is_refused_by_the_router(cluster):
    reply = cluster.shards[0].request("POST", "/v1/logs/query", {"limit": 2}, token=cluster.cluster_token)
    shard_cursor = reply.header("X-Quipu-Next-Cursor")
    assert shard_cursor
    assert "not valid" in cluster.query({"limit": 2, "cursor": shard_cursor}).error(400)


def test_bad_query_is_a_400_before_any_shard_is_asked(cluster):
    assert "limit" in cluster.query({"limit": 0}).error(400)
    assert "unknown key" in cluster.query({"colour": "red"}).error(400)


def test_query_needs_the_query_grant(cluster):
    cluster.query({}, user="nobody").error(403)
    reply = cluster.router.request("POST", "/v1/logs/query", {}, token="tok-unknown")
    reply.error(401)
