"""`quipu-cluster up|down|token` as real processes: first-run generation, reuse, the cluster
token's whereabouts, restarts, a flushed stop, detaching."""

import os
import signal
from pathlib import Path

from cluster_proc import Cluster
from shard_proc import append_request, wait_until, write_keys

from quipu.cluster.tokens import issue_token, token_entry
from quipu.shard.auth import token_digest


def _files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def _alive(pid: int) -> bool:
    """Running; a zombie (exited, not yet reaped by whoever adopted it) is not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _emit(cluster: Cluster, tenant: str, n: int, token: str | None = None) -> None:
    reply = cluster.request("POST", "/v1/logs", append_request(f"actor-{n}"), token=token, tenant=tenant)
    assert reply.status == 202, (reply.status, reply.data)


def _count(cluster: Cluster, tenant: str | None = None) -> int:
    reply = cluster.request("POST", "/v1/logs/count", {}, tenant=tenant)
    assert reply.status == 200, (reply.status, reply.data)
    return reply.json()["count"]


def test_first_up_generates_keys_and_an_admin_token_and_a_second_up_generates_nothing(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    with cluster.up():
        first = cluster.output()
        made = "data/keys/hmac.key, data/keys/rsa.pem, data/keys/rsa.pub.pem, data/tokens.yaml"
        assert f"first run: generated {made}" in first
        assert cluster.admin_token.startswith("qp_")
        assert first.count(cluster.admin_token) == 1
        tokens = (cluster.data / "tokens.yaml").read_text()
        assert token_digest(cluster.admin_token) in tokens and cluster.admin_token not in tokens
        assert cluster.request("GET", "/v1/cluster/status").status == 200  # through the public URL
    assert cluster.proc.returncode == 0
    files = _files(cluster.data)
    assert not any(cluster.admin_token.encode() in data for data in files.values())
    secrets = {
        name: files[name] for name in ("keys/hmac.key", "keys/rsa.pem", "keys/rsa.pub.pem", "tokens.yaml")
    }
    assert oct((cluster.data / "keys" / "rsa.pem").stat().st_mode & 0o777) == "0o600"

    admin = cluster.admin_token
    with cluster.up():
        again = cluster.output()
        assert "first run" not in again and "export QUIPU_TOKEN" not in again
        assert "use `quipu-cluster token --tenant TENANT --role ROLE` to issue one" in again
        cluster.admin_token = admin
        assert cluster.request("GET", "/v1/cluster/status").status == 200  # the same admin token
    assert {name: (cluster.data / name).read_bytes() for name in secrets} == secrets


def test_a_production_yaml_pointing_at_existing_key_files_generates_nothing(tmp_path):
    keys = write_keys(tmp_path / "secrets" / "keys")
    tokens_file = tmp_path / "secrets" / "tokens.yaml"
    admin, _ = issue_token(tokens_file, token_entry("admin", "*"))
    cluster = Cluster.prepare(
        tmp_path / "prod", shards=1, workers=1, keys=keys, tokens={"file": str(tokens_file)}
    )
    before = _files(tmp_path / "secrets")
    with cluster.up():
        out = cluster.output()
        assert "first run" not in out and "export QUIPU_TOKEN" not in out
        cluster.admin_token = admin
        assert cluster.request("GET", "/v1/cluster/status").status == 200
    assert _files(tmp_path / "secrets") == before
    assert not (cluster.data / "keys").exists() and not (cluster.data / "tokens.yaml").exists()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item]
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def test_the_cluster_token_is_fresh_per_up_and_only_in_the_fronts_environment(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=2)
    seen = []
    for _ in range(2):
        with cluster.up():
            pids = cluster.pids()
            token = _environ(pids["router"])["QUIPU_CLUSTER_TOKEN"]
            assert _environ(pids["ingest-1"])["QUIPU_CLUSTER_TOKEN"] == token
            for name in ("shard-0000", "shard-0001"):
                assert "QUIPU_CLUSTER_TOKEN" not in _environ(pids[name])
                assert token_digest(token) in (cluster.data / "run" / f"{name}.json").read_text()
            for pid in [*pids.values(), cluster.proc.pid]:
                assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            seen.append(token)
        assert not any(token.encode() in data for data in _files(tmp_path).values())
    assert seen[0] != seen[1]


def test_the_supervisor_restarts_a_sigkilled_shard(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    with cluster.up():
        victim = cluster.pids()["shard-0001"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: cluster.pids()["shard-0001"] not in (None, victim), "a new shard-0001", timeout=60)
        url = cluster.shard_map()["shards"]["shard-0001"]["url"]
        cluster.wait_healthy(url, "the restarted shard-0001")
        assert "shard-0001 was killed by SIGKILL" in cluster.errors()
        for n in range(20):  # every tenant's writes work again, whichever shard owns it
            _emit(cluster, f"tenant-{n}", n)
        assert cluster.request("POST", "/v1/admin/flush").status in (200, 204)
        assert _count(cluster) == 20


def test_down_flushes_and_stops_everything_and_acknowledged_events_survive_the_next_up(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=3, workers=2)
    cluster.up()
    for n in range(300):
        _emit(cluster, f"tenant-{n % 7}", n)  # acknowledged as queued; never flushed by us
    pids = cluster.pids()
    down = cluster.cli("down")
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert cluster.proc.wait(30) == 0
    assert not any(_alive(pid) for pid in pids.values())
    assert not (cluster.data / "run" / "cluster.pid").exists()
    assert "no cluster is running" in cluster.cli("down").stdout
    admin = cluster.admin_token
    with cluster.up():
        cluster.admin_token = admin
        assert _count(cluster) == 300
        assert _count(cluster, tenant="tenant-3") == len([n for n in range(300) if n % 7 == 3])


def test_up_detach_runs_the_cluster_in_the_background_until_down(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=1, workers=1)
    result = cluster.cli("up", "--detach", timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    url = next(line for line in lines if line.startswith("quipu-cluster: up at ")).split()[3]
    cluster.url = url
    cluster.admin_token = next(line for line in lines if "export QUIPU_TOKEN=" in line).split("=", 1)[1]
    log = (cluster.data / "run" / "cluster.log").read_text()
    assert cluster.admin_token not in log
    supervisor = int((cluster.data / "run" / "cluster.pid").read_text())
    status = cluster.cli("status", token=cluster.admin_token)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "shard-0000  active" in status.stdout
    again = cluster.cli("up")
    assert again.returncode == 2 and "already running" in again.stderr
    assert len(again.stderr.splitlines()) == 1
    _emit(cluster, "acme", 1)
    assert cluster.cli("down").returncode == 0
    assert not _alive(supervisor)
    assert cluster.healthy(url) is False


def test_token_issues_a_working_tenant_bound_token(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    with cluster.up():
        result = cluster.cli("token", "--tenant", "acme", "--role", "service")
        assert result.returncode == 0, result.stderr
        token = result.stdout.splitlines()[0].split(": ", 1)[1]
        assert result.stdout.count(token) == 1
        assert f'"{token_digest(token)}": {{"role": "service", "tenant": "acme"}}' in result.stdout
        assert token not in (cluster.data / "tokens.yaml").read_text()

        def accepted() -> bool:  # the fronts re-read the token file: no restart
            return cluster.request("POST", "/v1/logs", append_request("svc"), token=token).status == 202

        wait_until(accepted, "the new token works")
        denied = cluster.request("POST", "/v1/logs", append_request("svc"), token=token, tenant="globex")
        assert denied.error(403) == "this token is bound to another tenant"
        assert cluster.request("POST", "/v1/logs/count", {}, token=token).status == 403  # service: emit only
        assert cluster.request("POST", "/v1/admin/flush").status in (200, 204)
        assert _count(cluster, tenant="acme") == 1
        assert _count(cluster, tenant="globex") == 0


def test_token_with_an_unknown_role_is_one_line_and_adds_nothing(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=1)
    tokens = tmp_path / "data" / "tokens.yaml"
    issue_token(tokens, token_entry("admin", "*"))
    before = tokens.read_bytes()
    for args in (["--role", "pilot", "--tenant", "acme"], ["--role", "service", "--tenant", "a/b"]):
        result = cluster.cli("token", *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert tokens.read_bytes() == before


def test_status_without_a_token_says_how_to_get_one(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=1)
    result = cluster.cli("status")
    assert result.returncode == 2
    assert "set QUIPU_TOKEN" in result.stderr and len(result.stderr.splitlines()) == 1


def test_stop_by_sigint_flushes_like_down(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    cluster.up()
    for n in range(50):
        _emit(cluster, f"t{n % 5}", n)
    assert cluster.stop(signal.SIGINT) == 0
    assert not (cluster.data / "run" / "pids.json").exists()
    admin = cluster.admin_token
    with cluster.up():
        cluster.admin_token = admin
        assert _count(cluster) == 50


def test_children_stop_when_the_supervisor_is_sigkilled_and_the_next_up_starts_clean(tmp_path):
    cluster = Cluster.prepare(tmp_path, shards=2, workers=1)
    cluster.up()
    for n in range(30):
        _emit(cluster, f"t{n % 3}", n)
    assert cluster.request("POST", "/v1/admin/flush").status in (200, 204)
    pids = cluster.pids()
    cluster.stop(signal.SIGKILL)
    wait_until(lambda: not any(_alive(pid) for pid in pids.values()), "every child gone", timeout=60)
    admin = cluster.admin_token
    with cluster.up():  # the stale pid file and pids.json do not stop it
        cluster.admin_token = admin
        assert _count(cluster) == 30
