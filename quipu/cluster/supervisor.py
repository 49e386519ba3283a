"""The supervisor `quipu-cluster up` runs: start the shards, then the router, then the ingest
workers; restart whichever crashes; apply a grow; stop everything in order.

Order matters both ways. At start a front is useless before the shards it calls are
healthy. At stop the ingest workers go first (no new writes), then every shard is flushed
with the cluster token, so whatever a client was told is queued is on disk before the
router and the shards get SIGTERM (each shard also drains its own queue on SIGTERM; the
flush makes the order explicit and reports a shard that cannot).

The cluster token is made fresh by every `up` and lives only in this process's memory,
the shards' configs (as its digest) and the router's and workers' environment. It is
never in argv, a file or a log line. The loop is single-threaded: children are forked
from one thread, and every wait is a short poll that also watches for SIGTERM.
"""

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from quipu.cluster import grow, shard_admin
from quipu.cluster.child import Child, Event, ProcessSpec, State
from quipu.cluster.config import ClusterConfig
from quipu.cluster.daemon import PidFile
from quipu.cluster.http_client import Unreachable, call
from quipu.cluster.process_config import ingest_config, router_config, shard_config, write_config
from quipu.core.errors import QuipuError
from quipu.core.files import replace_durably
from quipu.router.shard_client import CLUSTER_TOKEN_ENV
from quipu.router.shard_map import ShardInfo, ShardMap
from quipu.shard.auth import new_token, token_digest

log = logging.getLogger("quipu.cluster")
TICK = 0.1  # seconds between looks at the children
MAP_POLL = 0.5  # seconds between looks at shards.json for a pending grow
FRONT_STOP_TIMEOUT = 30.0
SHARD_STOP_TIMEOUT = 120.0
READY = {
    "shard": "quipu shard listening on ",
    "router": "quipu router listening on ",
    "ingest": "quipu ingest listening on ",
}


class StartFailed(QuipuError):
    """A process did not come up during `up`; the message is its own last error line."""


class Supervisor:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._token = new_token()  # this up's cluster token: memory and child env only
        self._stop_signal: int | None = None
        self.shards: dict[str, Child] = {}
        self.fronts: list[Child] = []  # the router first, then the ingest workers
        self._pidfile = PidFile(config.pid_file)
        self._next_map_check = 0.0
        self._grow_blocked_until = 0.0

    # --- running ------------------------------------------------------------------------

    def run(self, on_up: Callable[[], None]) -> int:
        """Hold the pid file, start everything, call `on_up`, supervise until a signal."""
        self._pidfile.acquire(self.config.data_dir)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            shard_map = grow.load_map(self.config)
            self._start_shards(list(shard_map.shards.values()))
            self._reconcile(shard_map)
            self._start_fronts()
            self._write_pids()
            on_up()
            self._loop()
            return 0
        finally:
            self._shutdown()
            self._pidfile.release()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    @property
    def stopping(self) -> bool:
        return self._stop_signal is not None

    def _loop(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            self._tick_children(now)
            if now >= self._next_map_check:
                self._next_map_check = now + MAP_POLL
                self._check_grow()
            time.sleep(TICK)
        log.info("stopping (%s)", signal.Signals(self._stop_signal).name)

    def _children(self) -> list[Child]:
        return [*self.shards.values(), *self.fronts]

    def _tick_children(self, now: float) -> None:
        changed = False
        for child in self._children():
            event = child.tick(now)
            if event is Event.EXITED:
                delay = child.schedule_restart(now)
                log.error(
                    "%s %s (%s); restarting in %.1f s",
                    child.name,
                    child.exit_text(),
                    child.last_error(),
                    delay,
                )
                changed = True
            elif event is Event.READY and child.restarts:
                log.info("%s is back (restart %d, pid %d)", child.name, child.restarts, child.pid)
            elif event is Event.READY:
                log.info("%s ready (pid %d)", child.name, child.pid)
            if child.due(now) and not self.stopping:
                child.restarts += 1
                child.start()
                changed = True
        if changed:
            self._write_pids()

    # --- start --------------------------------------------------------------------------

    def _shard_child(self, info: ShardInfo) -> Child:
        path = write_config(
            self.config.run_dir / f"{info.id}.json",
            shard_config(self.config, info, token_digest(self._token)),
        )
        return Child(self._spec(info.id, "shard", path, info.url, with_token=False))

    def _spec(
        self, name: str, kind: str, config_path: Path, health_url: str, with_token: bool
    ) -> ProcessSpec:
        env = {k: v for k, v in os.environ.items() if k not in ("QUIPU_TOKEN", CLUSTER_TOKEN_ENV)}
        if with_token:
            env[CLUSTER_TOKEN_ENV] = self._token
        return ProcessSpec(
            name=name,
            argv=(sys.executable, "-m", "quipu.cli.main", kind, "serve", str(config_path)),
            env=env,
            ready_prefix=READY[kind],
            health_url=health_url,
            log_path=self.config.run_dir / f"{name}.log",
        )

    def _start_shards(self, infos: list[ShardInfo]) -> None:
        started = []
        for info in infos:
            child = self.shards[info.id] = self._shard_child(info)
            child.start()
            started.append(child)
        log.info("starting %s", ", ".join(c.name for c in started))
        self._await_ready(started)

    def _start_fronts(self) -> None:
        config = self.config
        router_path = write_config(config.run_dir / "router.json", router_config(config))
        router = Child(self._spec("router", "router", router_path, config.router_url, with_token=True))
        self.fronts.append(router)
        router.start()
        self._await_ready([router])
        ingest_path = write_config(config.run_dir / "ingest.json", ingest_config(config))
        workers = [
            Child(self._spec(f"ingest-{n}", "ingest", ingest_path, config.public_url, with_token=True))
            for n in range(config.ingest_workers)
        ]
        self.fronts += workers
        for worker in workers:
            worker.start()
        self._await_ready(workers)

    def _await_ready(self, children: list[Child]) -> None:
        """Until each is RUNNING; StartFailed with the first one's own error when one exits."""
        while not self.stopping:
            for child in children:
                if child.tick(time.monotonic()) is Event.EXITED:
                    raise StartFailed(f"{child.name} could not start: {_strip(child.last_error())}")
            if all(child.state is State.RUNNING for child in children):
                for child in children:
                    log.info("%s ready (pid %d)", child.name, child.pid)
                return
            time.sleep(TICK / 2)
        raise StartFailed(f"stopped by {signal.Signals(self._stop_signal).name} while starting")

    def _reconcile(self, shard_map: ShardMap) -> None:
        """Make the shards match the map: frozen ones frozen (a grow committed while no
        supervisor ran could not freeze them), and every type and column everywhere."""
        shards = list(shard_map.shards.values())
        for shard_id in sorted(shard_map.frozen):
            shard_admin.freeze(shard_map.shards[shard_id], self._token)
        sent = shard_admin.sync_schema(shards, self._token)
        if sent:
            log.info("copied %d type/column definitions onto shards that lacked them", sent)

    # --- grow ---------------------------------------------------------------------------

    def _check_grow(self) -> None:
        """Apply a pending grow step by step across ticks: start the new shards, and once
        they are healthy copy the schema, freeze the old shards, commit, anchor."""
        if time.monotonic() < self._grow_blocked_until:
            return
        try:
            shard_map = ShardMap.load(self.config.shard_map_path)
        except QuipuError as err:
            log.error("cannot read the shard map, keeping the running one: %s", err)
            self._grow_blocked_until = time.monotonic() + 10
            return
        if not shard_map.pending:
            return
        new = [self.shards.get(p.id) for p in shard_map.pending]
        if any(child is None for child in new):
            for info in shard_map.pending:
                if info.id not in self.shards:
                    log.info("grow: starting %s at %s", info.id, info.url)
                    self.shards[info.id] = self._shard_child(info)
                    self.shards[info.id].start()
            self._write_pids()
            return
        if all(child.state is State.RUNNING for child in new):
            self._commit_grow(shard_map)

    def _commit_grow(self, shard_map: ShardMap) -> None:
        try:
            shard_admin.sync_schema([*shard_map.shards.values(), *shard_map.pending], self._token)
            for shard_id in shard_map.active:
                shard_admin.freeze(shard_map.shards[shard_id], self._token)
        except QuipuError as err:  # a shard down or refusing: try again in a while
            log.error("grow: not committed yet (%s); retrying in 5 s", err)
            self._grow_blocked_until = time.monotonic() + 5
            return
        committed = grow.commit(self.config, shard_map.pending)
        if committed is None:
            return
        log.info(
            "grow: generation %d committed: active %s, frozen %s",
            committed.generation,
            ", ".join(committed.active),
            ", ".join(sorted(committed.frozen)),
        )
        self._anchor()

    def _anchor(self) -> None:
        """Ask the router to sign an anchor over the new map now (best effort: the
        periodic one follows anyway)."""
        try:
            reply = call(self.config.router_url, "POST", "/v1/cluster/anchor", token=self._token, timeout=30)
        except Unreachable as err:
            log.warning("no anchor after the grow (%s); the periodic one will cover it", err)
            return
        if reply.status >= 300:
            log.warning("no anchor after the grow (%s); the periodic one will cover it", reply.error_text())

    # --- stop ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        workers, router = self.fronts[1:], self.fronts[:1]
        _stop_all(workers, FRONT_STOP_TIMEOUT)
        for shard_id, child in self.shards.items():
            if child.state is State.RUNNING:
                try:
                    shard_admin.flush(ShardInfo(shard_id, child.spec.health_url), self._token)
                except QuipuError as err:
                    log.error("%s: flush failed (%s); it drains its queue on SIGTERM", shard_id, err)
        _stop_all(router, FRONT_STOP_TIMEOUT)
        _stop_all(list(self.shards.values()), SHARD_STOP_TIMEOUT)
        self.config.pids_file.unlink(missing_ok=True)
        if self.shards:
            log.info("stopped")

    def _write_pids(self) -> None:
        pids = {child.name: child.pid for child in self._children()}
        body = {"supervisor": os.getpid(), "processes": pids}
        replace_durably(self.config.pids_file, json.dumps(body, indent=2).encode() + b"\n")


def _stop_all(children: list[Child], timeout: float) -> None:
    """SIGTERM them all at once, then wait for each (SIGKILL after `timeout`)."""
    for child in children:
        child.terminate()
    for child in children:
        child.stop(timeout)


def _strip(text: str) -> str:
    """A child's `quipu: <message>` without its program name: ours comes first."""
    return text.split(": ", 1)[1] if text.startswith(("quipu: ", "quipu-cluster: ")) else text
