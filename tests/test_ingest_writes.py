"""Writes through the ingest front (2 workers on one port, 2 real shards): each tenant's
events land on the shard the map names, exactly once per Idempotency-Key; tenant rules and
bad input are answered at the front and record nothing; the shard judges events."""

import json
import uuid

import pytest
from ingest_proc import IngestCluster, http_request
from shard_proc import actor_query, append_request

TENANT = "X-Quipu-Tenant"
KEY = "Idempotency-Key"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with IngestCluster.start(tmp_path_factory.mktemp("ingest"), shards=2, workers=2) as cluster:
        yield cluster


def _batch(cluster, tenant, items, token="ops", raw=None, headers=None):
    hdrs = {TENANT: tenant, **(headers or {})} if tenant else dict(headers or {})
    data = raw if raw is not None else json.dumps(items).encode()
    return cluster.front.request(
        "POST", "/v1/logs/batch", raw=data, token=cluster.tokens[token], headers=hdrs
    )


def _total(cluster, actor):
    """Rows of `actor` on every shard, whatever the tenant (the admin token reads all)."""
    total = 0
    for shard in cluster.shards:
        shard.flush()
        total += shard.count(actor_query(actor))
    return total


def test_writes_for_many_tenants_land_on_the_shard_route_write_names(cluster):
    tenants = [f"tenant-{n:02d}" for n in range(24)]
    for tenant in tenants:
        for n in range(3):
            assert cluster.write(tenant, append_request("spread", url=f"/t/{n}")).status == 202
    owners = set()
    for tenant in tenants:
        owner = cluster.shard_map().route_write(tenant).id
        owners.add(owner)
        counts = cluster.recorded(tenant, actor_query("spread"))
        assert counts == {sid: (3 if sid == owner else 0) for sid in counts}, (tenant, owner, counts)
    assert owners == {"shard-0000", "shard-0001"}  # both shards took some tenants


def test_a_retried_key_is_recorded_once(cluster):
    key = str(uuid.uuid4())
    statuses = [
        cluster.write("retry-co", append_request("retried"), key=key).json()["status"] for _ in range(6)
    ]
    assert statuses == ["queued"] + ["duplicate"] * 5
    assert sum(cluster.recorded("retry-co", actor_query("retried")).values()) == 1


def test_a_write_without_a_key_is_given_one_it_can_be_retried_with(cluster):
    first = cluster.write("keyless-co", append_request("keyless"))
    assert first.status == 202 and first.json() == {"status": "queued"}
    key = first.header(KEY)
    assert uuid.UUID(key).version == 4
    again = cluster.write("keyless-co", append_request("keyless"), key=key)
    assert again.json() == {"status": "duplicate"} and again.header(KEY) == key
    assert sum(cluster.recorded("keyless-co", actor_query("keyless")).values()) == 1


def test_batch_events_without_a_key_are_told_the_one_they_can_be_retried_with(cluster):
    given = str(uuid.uuid4())
    items = [
        append_request("batch-keyless", url="/a"),
        {**append_request("batch-keyless"), "idempotency_key": given},
    ]
    first = _batch(cluster, "bk-co", items).json()["results"]
    assert first[1]["idempotency_key"] == given
    assigned = first[0]["idempotency_key"]
    assert uuid.UUID(assigned).version == 4
    again = _batch(cluster, "bk-co", [{**items[0], "idempotency_key": assigned}]).json()["results"]
    assert [r["status"] for r in again] == ["duplicate"]
    assert sum(cluster.recorded("bk-co", actor_query("batch-keyless")).values()) == 2


def test_the_same_key_for_two_tenants_is_two_events(cluster):
    key = str(uuid.uuid4())
    assert cluster.write("twin-a", append_request("twins"), key=key).json() == {"status": "queued"}
    assert cluster.write("twin-b", append_request("twins"), key=key).json() == {"status": "queued"}
    assert _total(cluster, "twins") == 2


def test_a_cluster_wide_token_writing_without_a_tenant_header_is_400_and_records_nothing(cluster):
    single = cluster.front.request(
        "POST", "/v1/logs", append_request("untenanted"), token=cluster.tokens["ops"]
    )
    assert "name the tenant with X-Quipu-Tenant" in single.error(400)
    batch = _batch(cluster, None, [append_request("untenanted")])
    assert "name the tenant with X-Quipu-Tenant" in batch.error(400)
    assert _total(cluster, "untenanted") == 0


def test_a_bound_token_writes_for_its_own_tenant_without_a_header(cluster):
    reply = cluster.front.request("POST", "/v1/logs", append_request("bound"), token=cluster.tokens["acme"])
    assert reply.status == 202
    named = cluster.write("acme", append_request("bound"), token="acme")
    assert named.status == 202
    assert cluster.recorded("acme", actor_query("bound"))[cluster.shard_map().route_write("acme").id] == 2


def test_a_bound_token_naming_another_tenant_is_403_and_records_nothing(cluster):
    single = cluster.write("globex", append_request("intruder"), token="acme")
    assert single.error(403) == "this token is bound to another tenant"
    batch = _batch(cluster, "globex", [append_request("intruder")], token="acme")
    assert batch.error(403) == "this token is bound to another tenant"
    assert _total(cluster, "intruder") == 0


def test_a_token_without_emit_is_403_and_no_token_is_401(cluster):
    assert "not granted emit" in cluster.write("acme", append_request("nobody"), token="auditor").error(403)
    anonymous = cluster.front.request("POST", "/v1/logs", append_request("nobody"), headers={TENANT: "acme"})
    assert anonymous.error(401) == "missing or invalid bearer token"
    assert anonymous.header("WWW-Authenticate") == "Bearer"
    wrong = cluster.front.request("POST", "/v1/logs/batch", [], token="tok-unknown", headers={TENANT: "acme"})
    assert wrong.error(401) == "missing or invalid bearer token"
    assert _total(cluster, "nobody") == 0


def test_a_body_over_the_limit_is_413_and_records_nothing(cluster):
    body = append_request("huge", content="x" * (1 << 20))
    assert "larger than" in cluster.write("acme", body).error(413)
    assert "larger than" in _batch(cluster, "acme", [body]).error(413)
    assert _total(cluster, "huge") == 0


@pytest.mark.parametrize("key", ["has space", "x" * 129, "ключ"])
def test_a_malformed_idempotency_key_is_400(cluster, key):
    reply = http_request(
        cluster.front.url,
        "POST",
        "/v1/logs",
        append_request("badkey"),
        token=cluster.tokens["ops"],
        headers={TENANT: "acme", KEY: key.encode("utf-8").decode("latin-1")},
    )
    assert "Idempotency-Key" in reply.error(400)
    assert _total(cluster, "badkey") == 0


def test_the_shard_judges_the_event_and_its_400_reaches_the_caller(cluster):
    bad = append_request("judged", method="NOT A METHOD")
    through_front = cluster.write("acme", bad).error(400)
    owner = cluster.owner("acme")
    direct = owner.request("POST", "/v1/logs", bad, headers={TENANT: "acme"}).error(400)
    assert through_front == direct
    assert "request body is not valid JSON" in cluster.front.request(
        "POST", "/v1/logs", raw=b"{nope", token=cluster.tokens["ops"], headers={TENANT: "acme"}
    ).error(400)
    assert _total(cluster, "judged") == 0


def test_batch_results_come_back_in_the_callers_order(cluster):
    known = str(uuid.uuid4())
    assert cluster.write("order-co", append_request("ordered"), key=known).status == 202
    items = [
        {**append_request("ordered", url="/0"), "idempotency_key": str(uuid.uuid4())},
        ["not", "an", "event"],
        append_request("ordered", url="/2"),  # no key: the front gives it one
        {**append_request("ordered", url="/3"), "idempotency_key": known},  # recorded before
        {**append_request("ordered", url="/4"), "idempotency_key": "has space"},
        append_request("ordered", method="NOT A METHOD"),
        {**append_request("ordered", url="/6"), "idempotency_key": None},
    ]
    reply = _batch(cluster, "order-co", items)
    assert reply.status == 202
    body = reply.json()
    assert [r["index"] for r in body["results"]] == list(range(len(items)))
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["queued", "rejected", "queued", "duplicate", "rejected", "rejected", "queued"]
    assert (body["queued"], body["duplicate"], body["rejected"], body["retry"]) == (3, 1, 3, 0)
    assert "JSON object" in body["results"][1]["error"]
    assert "idempotency_key" in body["results"][4]["error"]
    owner = cluster.shard_map().route_write("order-co").id
    assert cluster.recorded("order-co", actor_query("ordered"))[owner] == 4  # 3 here, 1 before


def test_an_ndjson_batch_is_read_like_a_json_array(cluster):
    keys = [str(uuid.uuid4()) for _ in range(3)]
    lines = [
        json.dumps({**append_request("ndjson", url=f"/{n}"), "idempotency_key": k})
        for n, k in enumerate(keys)
    ]
    raw = ("\n".join(lines) + "\n\n").encode()
    first = _batch(cluster, "nd-co", None, raw=raw, headers={"Content-Type": "application/x-ndjson"})
    assert [r["status"] for r in first.json()["results"]] == ["queued"] * 3
    again = _batch(cluster, "nd-co", [{**append_request("ndjson"), "idempotency_key": k} for k in keys])
    assert [r["status"] for r in again.json()["results"]] == ["duplicate"] * 3
    assert sum(cluster.recorded("nd-co", actor_query("ndjson")).values()) == 3


def test_a_batch_larger_than_the_shards_body_limit_is_split_and_recorded_once(cluster):
    # The shards take 256 KiB, the front 1 MiB: the front sends the batch again in halves.
    items = [
        {**append_request("bulky", url=f"/{n}", content="y" * 300), "idempotency_key": f"bulky-{n}"}
        for n in range(1000)
    ]
    assert len(json.dumps(items)) > 256 * 1024
    first = _batch(cluster, "bulk-co", items)
    assert first.status == 202 and first.json()["queued"] == 1000
    assert [r["index"] for r in first.json()["results"]] == list(range(1000))
    assert "POST /v1/logs/batch 413" in cluster.owner("bulk-co").log()  # the path taken
    again = _batch(cluster, "bulk-co", items)
    assert again.json()["duplicate"] == 1000
    assert sum(cluster.recorded("bulk-co", actor_query("bulky")).values()) == 1000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2", "request body is not valid JSON"),
        (b"[]", "a batch is a non-empty JSON array or NDJSON of events"),
        (b"", "a batch is a non-empty JSON array or NDJSON of events"),
        (b'{"a": 1}\n{"b": ', "NDJSON line 2 is not valid JSON"),
        (b"{}\n" * 10_001, "a batch holds at most 10000 events"),
    ],
)
def test_a_malformed_batch_is_400_and_records_nothing(cluster, raw, message):
    assert message in _batch(cluster, "acme", None, raw=raw).error(400)


def test_healthz_is_answered_by_the_front_with_the_router_and_every_shard(cluster):
    reply = cluster.front.request("GET", "/v1/healthz")
    assert reply.status == 200
    assert reply.json() == {
        "status": "ok",
        "router": "ok",
        "shards": {"shard-0000": "ok", "shard-0001": "ok"},
        "generation": 0,
    }
