"""SIGHUP reloads a real shard's auth section atomically (SPEC §6): under concurrent load no
request fails that should not, a removed token stops working, an added one starts, and a
broken config file keeps the old tokens while the shard's log says why (without a token).
"""

import signal
import threading
import time

import pytest
from shard_proc import ROLES, ShardProcess, append_request, define_types, wait_until

from quipu.shard.auth import token_digest

HAMMERS = 4


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    s = ShardProcess.prepare(tmp_path_factory.mktemp("auth-reload"))
    s.config["auth"]["max_concurrent_queries"] = 4 * HAMMERS  # load, not the query cap, is tested
    s.add_token("A")
    s.add_token("B")
    s.write_config()
    s.launch()
    try:
        define_types(s)
        yield s
    finally:
        s.stop()


def status_of(shard, token: str) -> int:
    return shard.request("POST", "/v1/logs/count", {}, token=token).status


def sighup(shard) -> None:
    shard.proc.send_signal(signal.SIGHUP)


def reload_failures(shard) -> int:
    return shard.log().count("auth reload failed")


def write_raw_config(shard, text: str) -> None:
    tmp = shard.config_path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(shard.config_path)


class Hammer(threading.Thread):
    """Sends requests with one token until stopped, recording every status in order."""

    def __init__(self, shard, token: str, calls: list[tuple[str, str, object]]) -> None:
        super().__init__(daemon=True)
        self.shard, self.token, self.calls = shard, token, calls
        self.statuses: list[tuple[str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            method, path, body = self.calls[i % len(self.calls)]
            try:
                status = self.shard.request(method, path, body, token=self.token).status
            except OSError as err:  # a refused or reset connection is a failed request too
                status = f"{type(err).__name__}"
            self.statuses.append((path, status))
            i += 1

    def wait_for(self, n: int) -> None:
        start = len(self.statuses)
        wait_until(lambda: len(self.statuses) >= start + n or not self.is_alive(), f"{n} more requests")


def test_sighup_rotation_under_load_fails_no_request_that_should_succeed(shard):
    token_c = shard.add_token("C")  # in `config` only: the running shard has not read it
    assert status_of(shard, token_c) == 401
    keep_calls = [
        ("POST", "/v1/logs", append_request("rotation")),
        ("POST", "/v1/logs/count", {}),
        ("GET", "/v1/types", None),
        ("POST", "/v1/logs/query", {"limit": 1}),
    ]
    kept = [Hammer(shard, shard.tokens["B"], keep_calls) for _ in range(HAMMERS)]
    dropped = Hammer(shard, shard.tokens["A"], [("POST", "/v1/logs/count", {})])
    hammers = [*kept, dropped]
    for h in hammers:
        h.start()
    try:
        for h in hammers:
            h.wait_for(20)
        shard.remove_token("A")
        shard.write_config()
        sighup(shard)
        wait_until(lambda: status_of(shard, token_c) == 200, "the added token works")
        wait_until(lambda: any(s == 401 for _, s in dropped.statuses), "the removed token is refused")
        for h in hammers:
            h.wait_for(20)
    finally:
        for h in hammers:
            h.stop.set()
        for h in hammers:
            h.join(60)

    for h in kept:
        failed = [(path, s) for path, s in h.statuses if s not in (200, 202)]
        assert not failed, f"requests with the kept token failed: {failed[:10]}"
    a = [s for _, s in dropped.statuses]
    assert set(a) <= {200, 401}, f"the removed token failed otherwise than 401: {set(a)}"
    first_401 = a.index(401)
    assert first_401 > 0 and set(a[first_401:]) == {401}, "once refused, the removed token stays refused"
    assert status_of(shard, token_c) == 200 and status_of(shard, shard.tokens["A"]) == 401

    emitted = sum(1 for h in kept for path, s in h.statuses if path == "/v1/logs" and s == 202)
    shard.flush()
    query = {"actor_type": "default_actor", "actor_id": "rotation"}
    assert shard.count(query, token=token_c) == emitted, "every event accepted during the reload is recorded"


BROKEN_CONFIGS = {
    "YAML syntax error": lambda good: good + "\nauth: [unclosed\n",
    "not a mapping": lambda good: "- just\n- a list\n",
    "empty file": lambda good: "",
}


def test_broken_config_file_on_sighup_keeps_the_old_tokens_and_logs_why(shard):
    working = shard.tokens["B"]
    assert status_of(shard, working) == 200
    good = shard.config_path.read_text()
    try:
        for what, broken in BROKEN_CONFIGS.items():
            failures = reload_failures(shard)
            write_raw_config(shard, broken(good))
            sighup(shard)
            wait_until(lambda n=failures: reload_failures(shard) > n, f"a logged reload failure ({what})")
            assert status_of(shard, working) == 200, what

        # Well-formed YAML with a bad auth section: the token it adds must not work either.
        newcomer = shard.add_token("D")
        shard.config["auth"]["grants"] = {**shard.config["auth"]["grants"], "admin": ["emit", "fly"]}
        failures = reload_failures(shard)
        shard.write_config()
        sighup(shard)
        wait_until(lambda: reload_failures(shard) > failures, "a logged reload failure (unknown action)")
        assert status_of(shard, newcomer) == 401
        assert status_of(shard, working) == 200
        assert shard.request("GET", "/v1/admin/dlq", token=working).status == 200, "old grants kept"
        line = [ln for ln in shard.log().splitlines() if "auth reload failed" in ln][-1]
        assert "auth.grants" in line and "fly" in line, line
    finally:
        shard.config["auth"]["grants"] = dict(ROLES)
        shard.write_config()
        sighup(shard)
    wait_until(lambda: status_of(shard, shard.tokens["D"]) == 200, "a good file is read again")
    assert status_of(shard, working) == 200
    log = shard.log()
    leaked = [name for name, token in shard.tokens.items() if token in log]
    assert not leaked, f"the shard log holds the tokens of {leaked}"


def test_token_given_a_past_expiry_by_sighup_is_refused(shard):
    token = shard.add_token("E")
    shard.write_config()
    sighup(shard)
    wait_until(lambda: status_of(shard, token) == 200, "the new token works")
    shard.config["auth"]["tokens"][token_digest(token)] = {"role": "admin", "expires": "2001-01-01T00:00:00Z"}
    shard.write_config()
    sighup(shard)
    wait_until(lambda: status_of(shard, token) == 401, "the expired token is refused")
    r = shard.request("POST", "/v1/logs/count", {}, token=token)
    assert r.json() == shard.request("POST", "/v1/logs/count", {}, role=None).json(), "no hint why"


def test_plain_token_in_the_config_works_and_its_warning_never_shows_it(shard):
    plain = f"plain-token-{time.monotonic_ns()}"
    shard.config["auth"]["tokens"][plain] = "auditor"
    shard.write_config()
    try:
        sighup(shard)
        wait_until(lambda: status_of(shard, plain) == 200, "the plain token works")
        assert "plain text" in shard.log()
        assert plain not in shard.log()
    finally:
        del shard.config["auth"]["tokens"][plain]
        shard.write_config()
        sighup(shard)
    wait_until(lambda: status_of(shard, plain) == 401, "the plain token is gone again")
