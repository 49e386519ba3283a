"""The router's config: read strictly, every error naming its key and never a value."""

import json
import subprocess
import sys

import pytest
from router_proc import router_config

from quipu.core.errors import BadInput
from quipu.router.config import load_router_config


@pytest.fixture
def config(tmp_path) -> dict:
    return router_config(tmp_path)


def write(tmp_path, config: dict):
    path = tmp_path / "router.json"
    path.write_text(json.dumps(config))
    return path


def test_a_complete_config_loads(tmp_path, config):
    loaded = load_router_config(write(tmp_path, config))
    assert loaded.listen == ("127.0.0.1", 0)
    assert loaded.anchor.keys.signing_key() is not None
    assert loaded.anchor.interval_secs is None
    assert loaded.max_body_bytes == 1 << 20


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path, config):
    config["shard_map"] = "shards.json"
    assert load_router_config(write(tmp_path, config)).shard_map == tmp_path / "shards.json"


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda c: c.pop("listen"), "listen"),
        (lambda c: c.__setitem__("listen", "nowhere"), "listen"),
        (lambda c: c.__setitem__("shard_map", 7), "shard_map"),
        (lambda c: c.__setitem__("grants", {"admin": ["fly"]}), "grants.admin"),
        (lambda c: c.__setitem__("max_concurrent_queries", True), "max_concurrent_queries"),
        (lambda c: c.__setitem__("limits", {"max_body_bytes": "big"}), "limits.max_body_bytes"),
        (lambda c: c.pop("anchor"), "anchor"),
        (lambda c: c["anchor"].__setitem__("interval_secs", -1), "anchor.interval_secs"),
        (lambda c: c["anchor"].__setitem__("export_url", "ftp://x"), "anchor.export_url"),
        (lambda c: c["anchor"].__setitem__("private_key_pem_file", "/no.pem"), "anchor.private_key_pem_file"),
        (lambda c: c["anchor"].__setitem__("colour", "red"), "anchor"),
        (lambda c: c.__setitem__("qp_secret-token", 1), "top level"),
    ],
    ids=["no-listen", "bad-listen", "map-not-text", "bad-action", "bool-count", "text-size", "no-anchor",
         "negative-interval", "bad-export-url", "missing-key-file", "unknown-anchor-key", "unknown-top-key"],
)  # fmt: skip
def test_bad_config_names_the_key(tmp_path, config, edit, where):
    edit(config)
    with pytest.raises(BadInput) as err:
        load_router_config(write(tmp_path, config))
    assert where in str(err.value)
    assert "qp_secret" not in str(err.value)


def test_mismatched_key_pair_is_refused(tmp_path, config):
    other = router_config(tmp_path / "other")
    config["anchor"]["public_key_pem_file"] = other["anchor"]["public_key_pem_file"]
    with pytest.raises(BadInput, match="not one key pair"):
        load_router_config(write(tmp_path, config))


def test_serve_with_a_bad_config_exits_with_one_line_naming_the_key(tmp_path, config):
    config["anchor"]["interval_secs"] = "often"
    path = write(tmp_path, config)
    done = subprocess.run(
        [sys.executable, "-m", "quipu.cli.main", "router", "serve", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"QUIPU_CLUSTER_TOKEN": "qp_x", "PATH": ""},
    )
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "anchor.interval_secs" in done.stderr


def test_serve_without_the_cluster_token_says_so(tmp_path, config):
    done = subprocess.run(
        [sys.executable, "-m", "quipu.cli.main", "router", "serve", str(write(tmp_path, config))],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": ""},
    )
    assert done.returncode != 0
    assert "QUIPU_CLUSTER_TOKEN" in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
