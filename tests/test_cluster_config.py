"""cluster.yaml is read strictly: every mistake is one line naming the key path, the
command exits non-zero, and nothing is started or generated."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cluster_proc import CLI, cluster_yaml

from quipu.cluster.config import load_cluster_config
from quipu.core.errors import BadInput
from quipu.router.shard_map import ShardInfo, ShardMap

SHIPPED = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _up(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "up"], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quipu-cluster: "), lines
    return lines[0]


def test_shipped_cluster_yaml_is_three_shards_one_router_two_workers_under_data():
    config = load_cluster_config(SHIPPED)
    assert [e.info.id for e in config.shards] == ["shard-0000", "shard-0001", "shard-0002"]
    assert config.ingest_workers == 2
    assert config.data_dir == SHIPPED.parent / "data"
    hosts = {
        config.router_listen[0],
        config.ingest_listen[0],
        *(e.info.url.split("/")[2] for e in config.shards),
    }
    assert all(h.startswith("127.0.0.1") for h in hosts)
    assert config.keys.hmac_key_file.is_relative_to(config.data_dir)
    assert config.tokens_file.is_relative_to(config.data_dir)


def test_relative_paths_are_taken_from_the_files_directory(tmp_path, monkeypatch):
    path = _write(tmp_path, cluster_yaml(data_dir="./somewhere", shards=1))
    monkeypatch.chdir("/")
    config = load_cluster_config(path)
    assert config.data_dir == tmp_path / "somewhere"
    assert config.shard_root("shard-0000") == tmp_path / "somewhere" / "shard-0000"
    assert config.keys.private_key_pem_file == tmp_path / "somewhere" / "keys" / "rsa.pem"


def _set(body: dict, path: str, value: object) -> dict:
    """Set a dotted key path (list indexes as numbers) in the yaml body."""
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


BAD = [
    # (key path to set, value, text the error must contain)
    ("colour", "blue", 'top level: unknown key "colour"'),
    ("version", 2, "version: this file is version 2"),
    ("shards.1.url", "127.0.0.1:7102", "shards[1].url: expected http://HOST:PORT"),
    ("shards.1.url", "http://127.0.0.1:99999", "shards[1].url: expected HOST:PORT"),
    ("shards.1.id", "shard-1", "shards[1].id: expected shard-NNNN"),
    ("shards.2.id", "shard-0000", "shards[2].id: the same id as shards[0]"),
    ("shards.0.rooot", "./x", 'shards[0]: unknown key "rooot"'),
    ("shards", [], "shards: expected a non-empty list"),
    ("router.listen", "7100", "router.listen: expected HOST:PORT"),
    ("router.anchor_interval_secs", "often", "router.anchor_interval_secs: expected a number"),
    ("ingest.workers", True, "ingest.workers: expected an integer, got a boolean"),
    ("ingest.workers", 0, "ingest.workers: must be at least 1"),
    ("tokens.grants", {"admin": ["emit", "fly"]}, "tokens.grants.admin"),
    ("tokens.max_concurrent_queries", "four", "tokens.max_concurrent_queries: expected an integer"),
    ("store.max_segment_bytes", "big", "store.max_segment_bytes: expected an integer, got a string"),
    ("store.root", "./x", "store.root: a shard's store is set per shard"),
    ("store.sync_policy", "sometimes", "store.sync_policy"),
    ("shard.pipeline.batch_max", False, "shard.pipeline.batch_max: expected an integer"),
    ("shard.tls", {}, 'shard: unknown key "tls"'),
    ("keys.hmac_key", "k", 'keys: unknown key "hmac_key"'),
    ("limits.max_body_bytes", -1, "limits.max_body_bytes: must be at least 1"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_key_is_named_by_its_path(tmp_path, key, value, expected):
    path = _write(tmp_path, _set(cluster_yaml(), key, value))
    with pytest.raises(BadInput) as caught:
        load_cluster_config(path)
    assert str(caught.value).startswith(f"{path}: "), caught.value
    assert expected in str(caught.value)


def test_two_processes_on_one_port_is_refused(tmp_path):
    body = cluster_yaml()
    body["router"]["listen"] = body["shards"][1]["url"].removeprefix("http://")
    with pytest.raises(BadInput, match=r"router.listen: port \d+ is also used by shards\[1\].url"):
        load_cluster_config(_write(tmp_path, body))


def test_a_yaml_syntax_error_gives_line_and_column_but_not_the_text(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("version: 1\nseed: [qp_secret-looking\n")
    with pytest.raises(BadInput) as caught:
        load_cluster_config(path)
    assert "line" in str(caught.value) and "qp_secret" not in str(caught.value)


def test_up_with_a_bad_key_prints_one_line_and_creates_nothing(tmp_path):
    _write(tmp_path, _set(cluster_yaml(), "shards.1.url", "127.0.0.1:7102"))
    line = _one_line_error(_up(tmp_path))
    assert line == "quipu-cluster: cluster.yaml: shards[1].url: expected http://HOST:PORT"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]


def test_up_with_a_port_in_use_prints_one_line_and_creates_nothing(tmp_path):
    body = cluster_yaml()
    _write(tmp_path, body)
    host, port = body["router"]["listen"].split(":")
    with socket.socket() as busy:
        busy.bind((host, int(port)))
        busy.listen()
        line = _one_line_error(_up(tmp_path))
    assert "router.listen" in line and f"port {port}" in line and "in use" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]


def test_up_with_a_store_locked_by_another_process_prints_the_shards_error_and_generates_nothing(tmp_path):
    body = cluster_yaml()
    _write(tmp_path, body)
    root = tmp_path / "data" / "shard-0001"
    root.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from quipu.core.lock import StoreLock; "
            "StoreLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line_error(_up(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert line.startswith(f"quipu-cluster: store {root} is locked by process {holder.pid}"), line
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shard-0001"]
    assert sorted(p.name for p in root.iterdir()) == ["LOCK"]


def _write_map(data: Path, seed: str, url: str) -> None:
    """A one-shard shards.json: a cluster that already exists."""
    ShardMap.create(seed, [ShardInfo("shard-0000", url)]).save(data / "shards.json")


def test_a_missing_key_next_to_existing_data_is_refused_not_regenerated(tmp_path):
    body = cluster_yaml(shards=1)
    _write(tmp_path, body)
    data = tmp_path / "data"
    data.mkdir()
    _write_map(data, body["seed"], body["shards"][0]["url"])
    line = _one_line_error(_up(tmp_path))
    assert "keys.hmac_key_file" in line and "restore the key from your backup" in line
    assert sorted(p.name for p in data.iterdir()) == ["shards.json"]


def test_a_changed_seed_is_refused_once_the_map_exists(tmp_path):
    body = cluster_yaml(shards=1)
    _write(tmp_path, body)
    data = tmp_path / "data"
    data.mkdir()
    _write_map(data, "other", body["shards"][0]["url"])
    line = _one_line_error(_up(tmp_path))
    assert "seed:" in line and "the seed never changes" in line


def test_a_missing_or_empty_cluster_yaml_is_one_line(tmp_path):
    missing = subprocess.run([*CLI, "up", "nothere.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert "cannot read config file nothere.yaml" in _one_line_error(missing)
    (tmp_path / "cluster.yaml").write_text("\n")
    assert _one_line_error(_up(tmp_path)) == (
        "quipu-cluster: cluster.yaml: the file is empty; docs/cluster.md describes every key "
        "(start from cluster.yaml)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]
