"""The ingest worker's config loader: a working file loads; every mistake is a BadInput that
names the key, and the cluster token comes only from the environment, never into a repr."""

import json
from pathlib import Path

import pytest

from quipu.core.errors import BadInput
from quipu.ingest.config import load_config

TOKEN = "qp_cluster-secret-value"
ENV = {"QUIPU_CLUSTER_TOKEN": TOKEN}


def _config(**changes: object) -> dict:
    config = {
        "listen": "127.0.0.1:7080",
        "shard_map": "data/shards.json",
        "router_url": "http://127.0.0.1:7100",
        "tokens_file": "/abs/tokens.yaml",
        "grants": {"admin": ["emit", "query", "administer"], "service": ["emit"]},
        "max_concurrent_queries": 4,
        "limits": {"max_body_bytes": 65536},
        "reuse_port": True,
    }
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps(config))
    return path


def test_a_complete_config_loads_with_paths_taken_from_its_directory(tmp_path):
    config = load_config(_write(tmp_path, _config()), ENV)
    assert config.listen == ("127.0.0.1", 7080)
    assert config.shard_map == tmp_path / "data" / "shards.json"
    assert config.tokens_file == Path("/abs/tokens.yaml")
    assert config.router_url == "http://127.0.0.1:7100"
    assert config.max_body_bytes == 65536
    assert config.reuse_port is True
    assert config.cluster_token == TOKEN


def test_the_cluster_token_never_appears_in_the_configs_repr(tmp_path):
    config = load_config(_write(tmp_path, _config()), ENV)
    assert TOKEN not in repr(config)


def test_a_missing_cluster_token_names_the_environment_variable(tmp_path):
    with pytest.raises(BadInput, match="QUIPU_CLUSTER_TOKEN is not set"):
        load_config(_write(tmp_path, _config()), {})


def test_a_cluster_token_with_spaces_is_refused_without_showing_it(tmp_path):
    with pytest.raises(BadInput) as err:
        load_config(_write(tmp_path, _config()), {"QUIPU_CLUSTER_TOKEN": "two words"})
    assert "QUIPU_CLUSTER_TOKEN" in str(err.value) and "two words" not in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": None}, "listen: required key is missing"),
        ({"listen": "localhost"}, "listen: expected HOST:PORT"),
        ({"shard_map": None}, "shard_map: required key is missing"),
        ({"router_url": "http://127.0.0.1:7100/v1"}, "router_url: expected http://HOST:PORT"),
        ({"router_url": 7100}, "router_url: expected a non-empty string"),
        ({"tokens_file": ""}, "tokens_file: expected a non-empty string"),
        ({"grants": None}, "grants: required key is missing"),
        ({"grants": {"admin": ["fly"]}}, "grants.admin: unknown action"),
        ({"grants": ["emit"]}, "grants: expected an object"),
        ({"limits": {"max_body_bytes": 0}}, "limits.max_body_bytes: must be at least 1"),
        ({"limits": {"max_bytes": 10}}, 'limits: unknown key "max_bytes"'),
        ({"reuse_port": "yes"}, "reuse_port: expected true or false"),
        ({"max_concurrent_queries": True}, "max_concurrent_queries: expected an integer"),
        ({"workers": 2}, 'unknown key "workers"'),
    ],
)
def test_a_bad_config_names_the_key(tmp_path, changes, message):
    with pytest.raises(BadInput, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(_write(tmp_path, _config(**changes)), ENV)


def test_a_config_that_is_not_json_says_where(tmp_path):
    path = tmp_path / "ingest.json"
    path.write_text('{"listen": ')
    with pytest.raises(BadInput, match="JSON syntax error at line 1"):
        load_config(path, ENV)
