"""The cluster's OpenAPI document (quipu/router/openapi.py, built from the shard's document
and quipu/router/openapi-cluster.json): a valid OpenAPI 3.1 document that describes exactly
the routes the cluster serves (the router's, and the ingest front's writes and health
check), documents every status the fronts add, and is what a running router answers at
GET /v1/openapi.json, also through the ingest front.

The last tests call a real router over real shards and check its answers against the
document: every admin and cluster call once, and the read paths fuzzed by schemathesis
(bounded: a fixed seed, derandomized, a few examples per operation).
"""

import asyncio
import json
from importlib import resources

import aiohttp
import pytest
import schemathesis
from aiohttp import web
from fuzzing import CONFORMANCE, fuzz_settings
from openapi_spec_validator import validate as validate_openapi
from router_proc import RouterCluster, router_config
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from shard_proc import append_request

from quipu.ingest.app import make_app as make_ingest_app
from quipu.ingest.config import IngestConfig
from quipu.router.app import make_app as make_router_app
from quipu.router.config import router_config_from_json
from quipu.router.openapi import (
    HTTP_METHODS,
    FragmentMismatch,
    build_cluster_document,
    cluster_document_bytes,
    merge_patch,
)

DOC_BYTES = cluster_document_bytes()
DOC = json.loads(DOC_BYTES)
SHARD_DOC = json.loads(resources.files("quipu.shard").joinpath("openapi.json").read_bytes())
FRAGMENT = json.loads(resources.files("quipu.router").joinpath("openapi-cluster.json").read_bytes())
SHARD_ONLY_PATHS = {"/v1/admin/head", "/v1/admin/freeze", "/v1/idempotency/lookup"}
OPEN_OPERATIONS = {("GET", "/v1/healthz"), ("GET", "/v1/openapi.json")}
ANSWERED_BY = "x-quipu-answered-by"
TENANTS = ["acme", "globex", "initech"]


def _operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def _routes(app: web.Application) -> set[tuple[str, str]]:
    return {(route.method, route.resource.canonical) for route in app.router.routes()}


def _without_head(served: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """aiohttp answers HEAD for every GET route; like most documents, ours lists the GET."""
    assert {p for m, p in served if m == "HEAD"} == {p for m, p in served if m == "GET"}
    return {(m, p) for m, p in served if m != "HEAD"}


def _router_app(tmp_path) -> web.Application:
    return make_router_app(router_config_from_json(router_config(tmp_path), tmp_path), cluster_token="t")


def _ingest_app(tmp_path) -> web.Application:
    config = IngestConfig(
        listen=("127.0.0.1", 0),
        shard_map=tmp_path / "shards.json",
        router_url="http://127.0.0.1:9",
        tokens_file=tmp_path / "tokens.json",
        grants={},
        max_concurrent_queries=None,
        max_body_bytes=1 << 20,
        reuse_port=False,
        cluster_token="t",
    )
    return make_ingest_app(config)


# --- the document ----------------------------------------------------------------------


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"] == "3.1.0"
    validate_openapi(DOC)


def test_every_route_the_router_serves_is_documented_and_every_documented_route_is_served(tmp_path):
    served = _without_head(_routes(_router_app(tmp_path)))
    documented = set(_operations(DOC))
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_the_ingest_front_answers_the_operations_marked_for_it_and_forwards_every_other(tmp_path):
    """Its own routes are exactly the operations the document says it answers; everything
    else reaches its catch-all routes, which forward to the router."""
    served = _without_head(_routes(_ingest_app(tmp_path)))
    forwarding = {("*", "/v1/{tail}"), ("*", "/metrics")}
    assert forwarding <= served
    marked = {key for key, op in _operations(DOC).items() if "ingest" in op.get(ANSWERED_BY, [])}
    assert served - forwarding == marked
    assert marked == {("POST", "/v1/logs"), ("POST", "/v1/logs/batch"), ("GET", "/v1/healthz")}
    for _, path in set(_operations(DOC)) - marked:
        assert path.startswith("/v1/") or path == "/metrics", path
    writes = [_operations(DOC)[("POST", p)] for p in ("/v1/logs", "/v1/logs/batch")]
    for op in writes:
        assert op[ANSWERED_BY] == ["ingest"]
        assert "ingest front" in op["description"]
        assert op["responses"]["404"] == {"$ref": "#/components/responses/WriteSentToRouter"}


def test_shard_only_paths_and_their_schemas_are_left_out():
    assert set(SHARD_DOC["paths"]) >= SHARD_ONLY_PATHS
    assert SHARD_ONLY_PATHS & set(DOC["paths"]) == set()
    for name in ("TreeHead", "KeyLookup", "KnownKeys", "Health"):
        assert name not in DOC["components"]["schemas"], name
    assert "X-Quipu-Snapshot" not in json.dumps(DOC["paths"]), "the router sends no snapshot header"


def test_every_shard_operation_and_status_is_kept_unless_the_fragment_drops_it():
    """The cluster serves the shard's v1 API: nothing of it goes missing by accident."""
    ours = _operations(DOC)
    dropped = {
        (op_id, status)
        for op_id, patch in FRAGMENT["operations"].items()
        for status, value in patch.get("responses", {}).items()
        if value is None
    }
    assert dropped == {("appendLog", "409"), ("appendBatch", "409"), ("appendBatch", "507")}
    for key, shard_op in _operations(SHARD_DOC).items():
        if key[1] in SHARD_ONLY_PATHS:
            continue
        op = ours[key]
        assert op["operationId"] == shard_op["operationId"]
        kept = {s for s in shard_op["responses"] if (op["operationId"], s) not in dropped}
        assert kept <= set(op["responses"]), key
        shard_params = {(p.get("name"), p.get("in"), p.get("$ref")) for p in shard_op.get("parameters", [])}
        assert shard_params <= {(p.get("name"), p.get("in"), p.get("$ref")) for p in op.get("parameters", [])}


def test_the_router_extensions_are_documented():
    ours = _operations(DOC)
    for key in [
        ("GET", "/v1/cluster/status"),
        ("POST", "/v1/cluster/anchor"),
        ("GET", "/v1/cluster/anchors"),
        ("POST", "/v1/cluster/verify"),
    ]:
        assert ours[key]["tags"] == ["cluster"], key
    shard = next(p for p in ours[("GET", "/v1/proof/consistency")]["parameters"] if p.get("name") == "shard")
    assert shard["in"] == "query" and shard["required"] is True
    schemas = DOC["components"]["schemas"]
    for name in ("Redriven", "SegmentsDropped", "Parked"):
        assert "shards" in schemas[name]["required"], name
    assert schemas["AccessRecord"]["required"] == ["at", "actor", "op", "shape", "shard"]
    assert ours[("POST", "/v1/admin/verify")]["responses"]["200"]["content"]["application/json"] == {
        "schema": {"$ref": "#/components/schemas/ClusterVerifyReport"}
    }


def test_only_the_health_check_and_the_document_are_open_without_a_token():
    assert DOC["security"] == [{"bearerAuth": []}]
    open_ops = {key for key, op in _operations(DOC).items() if op.get("security") == []}
    assert open_ops == OPEN_OPERATIONS


def test_every_operation_with_a_token_documents_401_with_www_authenticate_and_403():
    assert "WWW-Authenticate" in DOC["components"]["responses"]["Unauthorized"]["headers"]
    for key, op in _operations(DOC).items():
        if key in OPEN_OPERATIONS:
            continue
        assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}, key
        assert op["responses"]["403"] == {"$ref": "#/components/responses/Forbidden"}, key


def test_every_operation_the_front_forwards_documents_503_with_retry_after():
    """The ingest front answers 503 for any forwarded call while the router is down."""
    assert "Retry-After" in DOC["components"]["responses"]["ShardUnavailable"]["headers"]
    for key, op in _operations(DOC).items():
        if "ingest" not in op.get(ANSWERED_BY, []):
            assert op["responses"]["503"] == {"$ref": "#/components/responses/ShardUnavailable"}, key


def test_every_call_the_router_passes_to_shards_documents_502():
    """Only the calls that never pass a shard's answer on lack it: the writes (the ingest
    front's), the router's own documents and counters, and the cluster calls, whose
    reports name each shard's failure instead."""
    without = {key for key, op in _operations(DOC).items() if "502" not in op["responses"]}
    assert without == {
        ("POST", "/v1/logs"),
        ("POST", "/v1/logs/batch"),
        ("GET", "/v1/healthz"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/v1/cluster/status"),
        ("POST", "/v1/cluster/anchor"),
        ("GET", "/v1/cluster/anchors"),
        ("POST", "/v1/cluster/verify"),
    }
    for key, op in _operations(DOC).items():
        if key not in without:
            assert op["responses"]["502"] == {"$ref": "#/components/responses/ShardFailed"}, key


def test_every_error_response_is_a_json_error_body():
    for name, response in DOC["components"]["responses"].items():
        assert response["content"] == {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        }, name


# --- the builder -----------------------------------------------------------------------


def test_merge_patch_merges_deletes_and_appends_required_and_parameters():
    target = {"a": {"b": 1, "c": 2}, "required": ["x"], "parameters": [{"$ref": "p"}], "enum": [1]}
    patch = {"a": {"c": None, "d": 3}, "required": ["y", "x"], "parameters": [{"$ref": "q"}], "enum": [2]}
    assert merge_patch(target, patch) == {
        "a": {"b": 1, "d": 3},
        "required": ["x", "y"],
        "parameters": [{"$ref": "p"}, {"$ref": "q"}],
        "enum": [2],
    }
    assert target["a"] == {"b": 1, "c": 2}, "the target is not modified"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: f["operations"].update(noSuchOperation={"summary": "x"}), "noSuchOperation"),
        (lambda f: f["shard_only_paths"].append("/v1/gone"), "/v1/gone"),
        (lambda f: f["paths"].update({"/v1/logs": {}}), "/v1/logs"),
        (lambda f: f["every_operation"][0]["except"].append("renamedOperation"), "renamedOperation"),
    ],
)
def test_a_fragment_that_no_longer_fits_the_shard_document_is_refused(change, named):
    fragment = json.loads(json.dumps(FRAGMENT))
    change(fragment)
    with pytest.raises(FragmentMismatch, match=named):
        build_cluster_document(SHARD_DOC, fragment)


# --- what a running router answers -----------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RouterCluster.start(tmp_path_factory.mktemp("router-openapi"), shards=2) as cluster:
        for n, tenant in enumerate(TENANTS):
            cluster.write(tenant, append_request(f"{tenant}-user", occurred_at=1_700_000_000_000_000 + n))
        cluster.flush()
        yield cluster


def test_running_router_serves_the_document_without_a_token(cluster):
    reply = cluster.router.request("GET", "/v1/openapi.json", role=None)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.data == DOC_BYTES


def test_the_ingest_front_forwards_the_document(cluster):
    """An ingest worker in this process, in front of the running router."""
    config = IngestConfig(
        listen=("127.0.0.1", 0),
        shard_map=cluster.map_path,
        router_url=cluster.router.url,
        tokens_file=cluster.base / "tokens.json",
        grants={},
        max_concurrent_queries=None,
        max_body_bytes=1 << 20,
        reuse_port=False,
        cluster_token=cluster.cluster_token,
    )

    async def fetch() -> tuple[int, bytes]:
        runner = web.AppRunner(make_ingest_app(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            url = f"http://{host}:{port}/v1/openapi.json"
            async with aiohttp.ClientSession() as session, session.get(url) as reply:
                return reply.status, await reply.read()
        finally:
            await runner.cleanup()

    status, body = asyncio.run(fetch())
    assert status == 200 and body == DOC_BYTES


FUZZ_SEED = 20_260_102
FUZZ_SETTINGS = fuzz_settings(30)
# Calls that change nothing: the fuzzer may make as many as it likes.
READ_OPERATIONS = [
    "queryLogs",
    "countLogs",
    "exportLogs",
    "listTypes",
    "listColumns",
    "listEntities",
    "entityHistory",
    "proveInclusion",
    "proveConsistency",
    "adminDlq",
    "queryAccess",
    "metrics",
    "healthz",
    "openapi",
    "clusterStatus",
    "listAnchors",
]


def _schema(mode: GenerationMode) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(DOC).include(operation_id=READ_OPERATIONS)
    schema.config.generation.update(modes=[mode])
    schema.config.seed = FUZZ_SEED
    return schema


VALID = _schema(GenerationMode.POSITIVE)
INVALID = _schema(GenerationMode.NEGATIVE)
EVERYTHING = schemathesis.openapi.from_dict(DOC)


def _admin(cluster: RouterCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.tokens['admin']}"}


def _call(cluster: RouterCluster, method: str, path: str, **parts):
    case = EVERYTHING[path][method].Case(**parts)
    return case.call_and_validate(base_url=cluster.router.url, headers=_admin(cluster), checks=CONFORMANCE)


def test_admin_and_cluster_answers_match_the_document(cluster):
    """Every call the fuzzer leaves out (it changes something), once, plus the answers
    only a real record or shard id reaches."""
    for method, path in [
        ("POST", "/v1/admin/flush"),
        ("POST", "/v1/admin/redrive"),
        ("POST", "/v1/admin/retention"),
        ("GET", "/v1/admin/dlq"),
        ("POST", "/v1/admin/verify"),
        ("POST", "/v1/cluster/anchor"),
        ("GET", "/v1/cluster/anchors"),
        ("POST", "/v1/cluster/verify"),
        ("GET", "/v1/cluster/status"),
        ("GET", "/v1/healthz"),
    ]:
        assert _call(cluster, method, path).status_code in (200, 204), (method, path)
    access = _call(cluster, "POST", "/v1/access/query", body={"limit": 3})
    assert {r["shard"] for r in access.json()["records"]} <= {"shard-0000", "shard-0001"}
    rows = _call(cluster, "POST", "/v1/logs/query", body={"limit": 1}).json()
    _call(cluster, "GET", "/v1/proof/inclusion/{log_id}", path_parameters={"log_id": rows[0]["log_id"]})
    status = _call(cluster, "GET", "/v1/cluster/status").json()
    grown = next(s for s in status["shards"] if s["tree_size"] >= 2)
    proof = _call(cluster, "GET", "/v1/proof/consistency", query={"shard": grown["id"], "from": 1})
    assert proof.status_code == 200
    assert _call(cluster, "GET", "/v1/proof/consistency", query={"from": 1}).status_code == 400
    event = append_request("router-writer")
    for path, body in [("/v1/logs", event), ("/v1/logs/batch", [event])]:
        reply = _call(cluster, "POST", path, body=body, media_type="application/json")
        assert reply.status_code == 404 and "ingest front" in reply.json()["error"]


@pytest.mark.slow
@VALID.parametrize()
@FUZZ_SETTINGS
def test_valid_reads_get_documented_answers(case, cluster):
    case.call_and_validate(base_url=cluster.router.url, headers=_admin(cluster), checks=CONFORMANCE)


@pytest.mark.slow
@INVALID.parametrize()
@FUZZ_SETTINGS
def test_invalid_reads_never_get_a_server_error(case, cluster):
    case.call_and_validate(base_url=cluster.router.url, headers=_admin(cluster), checks=[not_a_server_error])
