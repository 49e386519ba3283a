"""`quipu-cluster grow --add K`: pending shards in shards.json, started and schema-copied by
the running supervisor, old shards frozen, the generation committed; or, with no
supervisor, committed at once and applied by the next `up`."""

import pytest
from cluster_proc import Cluster
from shard_proc import append_request, wait_until

from quipu.cluster.config import load_cluster_config
from quipu.cluster.grow import add_pending
from quipu.core.errors import Conflict
from quipu.core.schema import FieldDef, TypeSchema
from quipu.router.shard_map import ShardMap

DEVICE = TypeSchema("device", (FieldDef.text("name").idx(),))


def _status(cluster: Cluster) -> dict[str, dict]:
    reply = cluster.request("GET", "/v1/cluster/status")
    assert reply.status == 200, reply.data
    return {row["id"]: row for row in reply.json()["shards"]}


def _tenant_on(shard_map: ShardMap, shard_id: str) -> str:
    return next(t for t in (f"tenant-{n}" for n in range(10_000)) if shard_map.route_write(t).id == shard_id)


def test_grow_under_a_running_supervisor_starts_copies_freezes_and_commits(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    with cluster.up():
        assert cluster.request("POST", "/v1/types", DEVICE.to_json()).status == 204  # onto every shard
        old_ports = [int(s["url"].rsplit(":", 1)[1]) for s in cluster.shard_map()["shards"].values()]
        result = cluster.cli("grow", "--add", "1", token=cluster.admin_token)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "shard-0002" in result.stdout and "generation 1" in result.stdout
        assert "anchored the new map:" in result.stdout

        shard_map = ShardMap.load(cluster.data / "shards.json")
        assert shard_map.generation == 1 and shard_map.active == ("shard-0002",)
        assert shard_map.frozen == {"shard-0000", "shard-0001"} and not shard_map.pending
        assert int(shard_map.url("shard-0002").rsplit(":", 1)[1]) > max(old_ports)
        rows = _status(cluster)
        assert rows["shard-0000"]["shard_frozen"] and rows["shard-0001"]["shard_frozen"]
        assert rows["shard-0002"]["state"] == "active" and not rows["shard-0002"]["shard_frozen"]

        # The copied type: an event of it is written on the new shard, not parked in its DLQ.
        tenant = _tenant_on(shard_map, "shard-0002")
        event = append_request("d-user", targets=[("device", "d-1", "laptop")])

        def accepted() -> bool:  # the fronts pick the new map up within their recheck interval
            return cluster.request("POST", "/v1/logs", event, tenant=tenant).status == 202

        wait_until(accepted, "a write to the new shard")
        assert cluster.request("POST", "/v1/admin/flush").status in (200, 204)
        rows = _status(cluster)
        assert rows["shard-0002"]["tree_size"] == 1 and rows["shard-0002"]["dlq"] == 0
        assert "shard-0002" in cluster.cli("status", token=cluster.admin_token).stdout


def test_grow_without_a_supervisor_commits_at_once_and_the_next_up_starts_and_freezes(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    cluster.up()
    admin = cluster.admin_token
    assert cluster.stop() == 0
    result = cluster.cli("grow", "--add", "2")
    assert result.returncode == 0, result.stderr
    assert "committed now" in result.stdout
    assert ShardMap.load(cluster.data / "shards.json").active == ("shard-0002", "shard-0003")
    with cluster.up():
        cluster.admin_token = admin
        rows = _status(cluster)
        assert set(rows) == {"shard-0000", "shard-0001", "shard-0002", "shard-0003"}
        assert all(rows[s]["health"] == "ok" for s in rows)
        assert rows["shard-0000"]["shard_frozen"] and rows["shard-0001"]["shard_frozen"]
        assert not rows["shard-0003"]["shard_frozen"]


def test_a_second_grow_while_one_is_pending_is_refused(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=1)
    cluster.data.mkdir()
    config = load_cluster_config(cluster.config_path)
    ShardMap.create(config.seed, [e.info for e in config.shards]).save(config.shard_map_path)
    add_pending(config, 1)
    before = config.shard_map_path.read_bytes()
    with pytest.raises(Conflict, match=r"a grow is already pending \(shard-0001\)"):
        add_pending(config, 1)
    assert config.shard_map_path.read_bytes() == before


def test_grow_before_the_first_up_or_by_zero_is_one_line_and_creates_nothing(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=1)
    zero = cluster.cli("grow", "--add", "0")
    assert (
        zero.returncode == 2 and zero.stderr == "quipu-cluster: --add: expected a positive number of shards\n"
    )
    never = cluster.cli("grow", "--add", "1")
    assert never.returncode == 2 and "run `quipu-cluster up" in never.stderr
    assert len(never.stderr.splitlines()) == 1
    assert not cluster.data.exists()
