"""The shard write pipeline: real stores, real writer threads, no stand-ins for our code.

Waits are bounded (WAIT) and never timing assertions: a slow machine makes a test slower,
not red."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.errors import BadInput, Conflict, Forbidden, Overloaded, StorageFull
from quipu.core.event import AuditEvent, EntityInput
from quipu.core.query_spec import AccessQuery, LogQuery
from quipu.core.schema import ColumnDef, FieldDef, TypeSchema, default_actor_type
from quipu.core.sync import SyncPolicy
from quipu.core.table import now_micros
from quipu.core.values import Content, Value
from quipu.shard.dlq import ParkedEvent
from quipu.shard.health import DiskProbe, HealthState
from quipu.shard.idempotency import IdempotencyWindow, KeyState
from quipu.shard.permissions import Action, PermissionPolicy
from quipu.shard.pipeline import AuditPipeline, PipelineConfig

WAIT = 10.0  # seconds: a bound on every wait, so a hang fails instead of blocking the run
FAST = PipelineConfig(probe_interval=0.02, retry_backoff=0.001, wait_timeout=WAIT)
ALLOW = PermissionPolicy.allow_all()
ROBOT = TypeSchema("robot", (FieldDef.text("name").idx(),))


def event(i: int, *, key: str | None = None, actor_type: str = "default_actor", **kw) -> AuditEvent:
    return AuditEvent(
        actor_type,
        EntityInput(f"svc-{i % 3}").text("name", f"service {i % 3}"),
        "PUT",
        f"/docs/{i}",
        Content("Text", kw.pop("text", f"change {i}")),
        idempotency_key=key,
        **kw,
    )


def open_store(root: Path, **options) -> AuditStore:
    # every_n: no group-commit timer thread; flush() is what makes rows durable here.
    options.setdefault("sync", SyncPolicy.every_n(10_000))
    store = AuditStore.open(StoreConfig(root, **options))
    store.define_type(default_actor_type())
    return store


def total(store: AuditStore, **conditions) -> int:
    return store.count(LogQuery(**conditions))


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT}s: {what}")
        time.sleep(0.005)


class Shards:
    """Opens stores and pipelines and closes whatever a test left open, pipeline first."""

    def __init__(self) -> None:
        self.open: list[tuple[AuditStore, AuditPipeline]] = []

    def start(self, root: Path, policy=ALLOW, config=FAST, store_options=None, **kw):
        store = open_store(root, **(store_options or {}))
        pipeline = AuditPipeline.start(store, policy, config, **kw)
        self.open.append((store, pipeline))
        return store, pipeline

    def stop(self, store: AuditStore, pipeline: AuditPipeline) -> None:
        self.open.remove((store, pipeline))
        pipeline.close(WAIT)
        store.close()


@pytest.fixture
def shards():
    opened = Shards()
    yield opened
    for store, pipeline in reversed(opened.open):
        try:
            pipeline.close(WAIT)
        finally:
            store.close()


class Gate:
    """An on_written hook that holds the writer inside its first write until released:
    the deterministic way to keep events queued."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, event: AuditEvent, log_id: str) -> None:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise RuntimeError("the test never released the gate")


# --- writing ------------------------------------------------------------------------------


def test_emitted_events_are_queryable_exactly_once_after_flush(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    twin = handle.clone()
    assert twin == handle and twin is not handle
    for i in range(40):
        assert (handle if i % 2 else twin).emit(event(i)) == "queued"
    handle.flush()
    assert total(store) == 40
    urls = sorted(row["url"] for row in store.query(LogQuery(limit=100)).logs)
    assert urls == sorted(f"/docs/{i}" for i in range(40))
    assert pipeline.metrics.writes_ok.value == 40
    assert pipeline.metrics.write_latency.snapshot().count == 40
    assert pipeline.queue_depth == 0 and pipeline.writer_alive


def test_accept_time_becomes_occurred_at_and_a_given_time_is_kept(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    before = now_micros()
    handle.emit(event(1))
    after = now_micros()
    handle.emit(event(2, occurred_at=1_700_000_000_000_000))
    handle.flush()
    rows = {row["url"]: row["occurred_at"] for row in store.query(LogQuery()).logs}
    assert before <= rows["/docs/1"] <= after
    assert rows["/docs/2"] == 1_700_000_000_000_000


def test_on_written_gets_every_log_id_and_a_failing_hook_does_not_stop_the_writer(tmp_path, shards):
    seen = []

    def hook(event: AuditEvent, log_id: str) -> None:
        seen.append(log_id)
        raise RuntimeError("hook bug")

    store, pipeline = shards.start(tmp_path, on_written=hook)
    handle = pipeline.handle("app")
    for i in range(5):
        handle.emit(event(i))
    handle.flush()
    assert sorted(seen) == sorted(row["log_id"] for row in store.query(LogQuery()).logs)
    assert pipeline.writer_alive
    assert handle.emit(event(9)) == "queued"


def test_unknown_custom_column_is_refused_at_emit(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    bad = event(1, custom={"ticket": Value.number(7)})
    with pytest.raises(BadInput, match="unknown column"):
        handle.emit(bad)
    outcomes = handle.emit_many([event(2), bad])
    assert outcomes[0] == "queued" and isinstance(outcomes[1], BadInput)
    handle.define_column(ColumnDef("ticket", "Number"))
    assert handle.emit(bad) == "queued"
    handle.flush()
    assert total(store) == 2


# --- idempotency ----------------------------------------------------------------------------


def test_duplicate_key_is_recorded_once_and_stays_duplicate_after_restart(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    assert handle.emit(event(1, key="k-1")) == "queued"
    assert handle.emit(event(1, key="k-1")) == "duplicate"
    assert handle.emit(event(1, key="k-1", tenant="acme")) == "queued"  # keys are per tenant
    assert handle.emit(event(2, key="k-parked", actor_type="robot")) == "queued"
    handle.flush()
    assert total(store) == 2 and pipeline.dlq_count == 1
    shards.stop(store, pipeline)

    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    assert handle.emit(event(1, key="k-1")) == "duplicate"
    assert handle.emit(event(1, key="k-1", tenant="acme")) == "duplicate"
    assert handle.emit(event(2, key="k-parked", actor_type="robot")) == "duplicate"
    assert handle.emit(event(3, key="k-new")) == "queued"
    handle.flush()
    assert total(store) == 3


def test_window_forgets_its_oldest_key_first():
    window = IdempotencyWindow(2)
    assert window.claim(None, "a") and window.claim(None, "b")
    assert not window.claim(None, "a")
    window.mark(None, "a", KeyState.RECORDED)
    assert window.claim(None, "c")  # pushes out "a", the oldest insertion
    assert window.state(None, "a") is None and len(window) == 2
    window.forget(None, "b")
    assert window.claim(None, "b")
    with pytest.raises(BadInput):
        IdempotencyWindow(0)


# --- permissions ----------------------------------------------------------------------------


def every_call(handle):
    """Each public handle method with valid arguments."""
    return {
        "emit": lambda: handle.emit(event(1)),
        "emit_many": lambda: handle.emit_many([event(1)]),
        "flush": handle.flush,
        "redrive": handle.redrive,
        "dlq_count": handle.dlq_count,
        "verify": handle.verify,
        "run_retention": handle.run_retention,
        "checkpoint": handle.checkpoint,
        "define_type": lambda: handle.define_type(ROBOT),
        "define_column": lambda: handle.define_column(ColumnDef("ticket", "Number")),
        "query": lambda: handle.query(LogQuery()),
        "count": lambda: handle.count(LogQuery()),
        "list_entities": lambda: handle.list_entities("default_actor"),
        "entity_history": lambda: handle.entity_history("default_actor", "svc-1"),
        "prove_inclusion": lambda: handle.prove_inclusion("0" * 32),
        "prove_consistency": lambda: handle.prove_consistency(1),
        "entity_types": handle.entity_types,
        "query_access": lambda: handle.query_access(AccessQuery()),
    }


def test_role_without_grants_is_forbidden_for_every_method(tmp_path, shards):
    store, pipeline = shards.start(tmp_path, PermissionPolicy.deny_by_default())
    for name, call in every_call(pipeline.handle("stranger")).items():
        with pytest.raises(Forbidden):
            call()
            pytest.fail(f"{name} was allowed")
    assert total(store) == 0


def test_grants_allow_exactly_their_actions(tmp_path, shards):
    policy = (
        PermissionPolicy.deny_by_default()
        .grant("service", [Action.EMIT])
        .grant("auditor", [Action.QUERY])
        .grant("admin", [Action.ADMINISTER])
    )
    _, pipeline = shards.start(tmp_path, policy, store_options={"access_log": True})
    service, auditor, admin = (pipeline.handle(r) for r in ("service", "auditor", "admin"))
    assert service.emit(event(1)) == "queued"
    admin.flush()
    assert auditor.count(LogQuery()) == 1
    for handle in (service, auditor, admin):
        assert [t.type_name for t in handle.entity_types()] == ["default_actor"]
    with pytest.raises(Forbidden):
        service.query(LogQuery())
    with pytest.raises(Forbidden):
        auditor.emit(event(2))
    with pytest.raises(Forbidden):
        admin.emit(event(2))
    with pytest.raises(Forbidden):
        auditor.flush()
    # The access log records the handle's actor (here defaulting to the role).
    ops = {(r["actor"], r["op"]) for r in admin.query_access(AccessQuery()).records}
    assert ("auditor", "count") in ops and ("admin", "flush") in ops


def test_verify_reports_and_counts_its_runs(tmp_path, shards):
    _, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("ops")
    handle.emit(event(1))
    handle.flush()
    assert handle.verify().ok
    assert pipeline.metrics.verify_runs.value == 1


# --- overload and stop --------------------------------------------------------------------


def test_full_queue_refuses_with_overloaded_and_everything_accepted_is_recorded(tmp_path, shards):
    gate = Gate()
    config = PipelineConfig(queue_capacity=2, batch_max=1, probe_interval=0.02, wait_timeout=WAIT)
    store, pipeline = shards.start(tmp_path, config=config, on_written=gate)
    handle = pipeline.handle("app")
    handle.emit(event(0))
    assert gate.entered.wait(WAIT)  # the writer holds event 0, so the queue no longer drains
    assert handle.emit_many([event(1), event(2)]) == ["queued", "queued"]
    with pytest.raises(Overloaded, match=r"the write queue is full \(2 events\)"):
        handle.emit(event(3, key="k-3"))
    outcome = handle.emit_many([event(4)])[0]
    assert isinstance(outcome, Overloaded)
    assert pipeline.metrics.emit_rejected.values() == {"queue_full": 2}
    assert pipeline.queue_depth == 2
    gate.release.set()
    handle.flush()
    assert handle.emit(event(3, key="k-3")) == "queued"  # the refused key was forgotten
    handle.flush()
    assert total(store) == 4


def test_emit_after_close_is_refused_as_writer_stopped(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    handle.emit(event(1, key="k-1"))
    pipeline.close(WAIT)
    assert total(store) == 1  # close drained the queue
    assert not pipeline.writer_alive and not pipeline.health.writer_alive
    with pytest.raises(Overloaded, match="writer is not running"):
        handle.emit(event(2))
    with pytest.raises(Conflict):
        handle.flush()
    assert pipeline.metrics.emit_rejected.values() == {"writer_stopped": 1}


def test_store_errors_are_retried_with_backoff_then_parked(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    store.close()  # every append now fails with Conflict: not a bad event, not a full disk
    handle.emit(event(1, key="k-1"))
    wait_until(lambda: pipeline.metrics.writes_parked.value == 1, "the event parks")
    assert pipeline.metrics.write_retries.value == FAST.max_retries
    assert pipeline.dlq_count == 1
    [parked] = pipeline.dlq.load(pipeline.dlq.batches()[0])
    assert parked.event.idempotency_key == "k-1" and "Conflict" in parked.reason
    pipeline.close(WAIT)
    shards.open.clear()


NO_TICK = PipelineConfig(probe_interval=3600, wait_timeout=WAIT)  # the latch only changes when told


def test_while_latched_batches_park_and_a_successful_flush_clears_the_latch(tmp_path, shards):
    store, pipeline = shards.start(tmp_path, config=NO_TICK)
    handle = pipeline.handle("app")
    pipeline.health.set_disk_full(True)
    assert handle.emit(event(1, key="k-1")) == "queued"
    handle.flush()  # the event parks (latched), then the store flush succeeds
    assert pipeline.dlq_count == 1 and total(store) == 0
    assert not pipeline.health.disk_full
    assert handle.redrive() == 1 and total(store) == 1


def test_emit_is_refused_fast_while_latched_when_configured(tmp_path, shards):
    config = PipelineConfig(probe_interval=3600, wait_timeout=WAIT, reject_emit_when_disk_full=True)
    store, pipeline = shards.start(tmp_path, config=config)
    handle = pipeline.handle("app")
    pipeline.health.set_disk_full(True)
    with pytest.raises(StorageFull):
        handle.emit(event(1, key="k-1"))
    assert isinstance(handle.emit_many([event(2)])[0], StorageFull)
    assert pipeline.metrics.emit_rejected.values() == {"disk_full": 2}
    handle.flush()
    assert handle.emit(event(1, key="k-1")) == "queued"  # the refused key was forgotten
    handle.flush()
    assert total(store) == 1


# --- the dead-letter queue ------------------------------------------------------------------


def test_undefined_actor_type_parks_and_redrives_with_its_original_time_after_restart(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    accepted_from = now_micros()
    handle.emit(event(1, actor_type="robot", key="k-robot"))
    accepted_to = now_micros()
    handle.flush()
    assert handle.dlq_count() == 1 and pipeline.metrics.writes_parked.value == 1
    assert total(store) == 0
    shards.stop(store, pipeline)

    store, pipeline = shards.start(tmp_path)  # the DLQ survives the restart
    handle = pipeline.handle("app")
    assert handle.dlq_count() == 1
    assert handle.redrive() == 0  # still undefined: it stays parked
    assert handle.dlq_count() == 1
    handle.define_type(ROBOT)
    redrive_from = now_micros()
    assert handle.redrive() == 1
    [row] = store.query(LogQuery(actor_type="robot")).logs
    assert accepted_from <= row["occurred_at"] <= accepted_to < redrive_from
    assert handle.dlq_count() == 0 and pipeline.dlq.batches() == []
    assert handle.emit(event(1, actor_type="robot", key="k-robot")) == "duplicate"


def test_bad_event_does_not_hold_back_the_good_ones_in_its_batch(tmp_path, shards):
    gate = Gate()
    store, pipeline = shards.start(tmp_path, on_written=gate)
    handle = pipeline.handle("app")
    handle.emit(event(0))
    assert gate.entered.wait(WAIT)
    batch = [event(1), event(2, actor_type="robot"), event(3), event(4, actor_type="robot"), event(5)]
    assert handle.emit_many(batch) == ["queued"] * 5  # queued together: one batch for the writer
    gate.release.set()
    handle.flush()
    assert total(store) == 4
    assert pipeline.dlq_count == 2 and len(pipeline.dlq.batches()) == 1
    assert pipeline.metrics.writes_parked.value == 2


def test_corrupt_dlq_files_are_quarantined_and_the_good_ones_still_redrive(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    handle.emit(event(1, actor_type="robot"))
    handle.flush()
    shards.stop(store, pipeline)
    dlq = tmp_path / "dlq"
    (dlq / "0000000000000007.dlq").write_bytes(b"\x00garbage\xff")
    (dlq / "0000000000000008.dlq").write_bytes(b'{"v":2,"entries":[]}')

    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    assert pipeline.dlq.quarantined == 2
    assert sorted(p.name for p in (dlq / "quarantine").iterdir()) == [
        "0000000000000007.dlq",
        "0000000000000008.dlq",
    ]
    assert handle.dlq_count() == 1
    handle.define_type(ROBOT)
    assert handle.redrive() == 1
    assert total(store, actor_type="robot") == 1


def test_a_dlq_file_corrupted_while_running_is_quarantined_by_redrive(tmp_path, shards):
    _, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    handle.emit(event(1, actor_type="robot"))
    handle.flush()
    [path] = pipeline.dlq.batches()
    path.write_bytes(b"{not json")
    assert handle.redrive() == 0
    assert pipeline.dlq.quarantined == 1 and handle.dlq_count() == 0
    assert (tmp_path / "dlq" / "quarantine" / path.name).exists()


def test_redrive_after_a_crash_between_store_flush_and_dlq_rewrite_records_nothing_twice(tmp_path, shards):
    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    for i in range(3):
        handle.emit(event(i, actor_type="robot", key=f"k-{i}"))
    handle.emit(event(9, actor_type="robot"))  # no key: cannot be recognised, so it is redriven
    handle.flush()
    [path] = pipeline.dlq.batches()
    parked = pipeline.dlq.load(path)
    pipeline.close(WAIT)
    # The crash window: the redrive's rows reached the store, the DLQ file was not rewritten.
    store.define_type(ROBOT)
    store.append_many([p.event for p in parked if p.event.idempotency_key is not None])
    store.flush()
    shards.open.clear()
    store.close()

    store, pipeline = shards.start(tmp_path)
    handle = pipeline.handle("app")
    assert handle.dlq_count() == 4
    assert handle.redrive() == 1
    assert total(store, actor_type="robot") == 4
    assert sorted(k for _, k in store.recent_idempotency_keys(100)) == ["k-0", "k-1", "k-2"]
    assert handle.dlq_count() == 0 and not path.exists()


# --- durability -----------------------------------------------------------------------------

CHILD = """
import sys, time
from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.event import AuditEvent, EntityInput
from quipu.core.schema import default_actor_type
from quipu.core.sync import SyncPolicy
from quipu.core.values import Content
from quipu.shard.permissions import PermissionPolicy
from quipu.shard.pipeline import AuditPipeline

store = AuditStore.open(StoreConfig(sys.argv[1], sync=SyncPolicy.every_n(1_000_000)))
store.define_type(default_actor_type())
handle = AuditPipeline.start(store, PermissionPolicy.allow_all()).handle("app")
for i in range(int(sys.argv[2])):
    actor = EntityInput("svc").text("name", "svc")
    handle.emit(AuditEvent("default_actor", actor, "PUT", f"/d/{i}", Content("Text", "x"),
                           idempotency_key=f"k-{i}"))
handle.flush()
print("flushed", flush=True)
time.sleep(60)
"""


def test_flush_is_durable_even_if_the_process_is_killed_right_after(tmp_path):
    # The store's own sync policy never syncs here, so only flush() can put rows on disk.
    out = tmp_path / "child.out"
    with open(out, "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "store"), "300"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: b"flushed\n" in out.read_bytes() or child.poll() is not None, "the flush")
        assert b"flushed\n" in out.read_bytes(), out.read_text()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with AuditStore.open(StoreConfig(tmp_path / "store")) as store:
        assert total(store) == 300
        keys = [k for _, k in store.recent_idempotency_keys(1000)]
        assert sorted(keys) == sorted(f"k-{i}" for i in range(300))


# --- a full disk (ENOSPC) -------------------------------------------------------------------

BIG = "x" * 12_000  # rows bigger than a page: none fits in the slack of a file's last page


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: a disk that really fills up. Mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root; the ENOSPC path is not exercised")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses even one more page."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def start_on(disk_root: Path, shards: Shards, **kw) -> tuple[AuditStore, AuditPipeline, int]:
    """A shard on the tiny disk with one row written, so its files exist before the disk fills.

    One event per batch: the first write after the disk fills trips the latch, so the
    others park for sure (with bigger batches all five might sit in the store's buffer)."""
    config = PipelineConfig(batch_max=1, probe_interval=0.02, wait_timeout=WAIT)
    options = {"sync": SyncPolicy.always()}
    store, pipeline = shards.start(disk_root, config=config, store_options=options, **kw)
    handle = pipeline.handle("app")
    handle.emit(event(0, key="k-0", text=BIG))
    handle.flush()
    return store, pipeline, total(store)


def test_full_disk_latches_parks_in_the_dlq_and_recovers_by_itself(tmp_path, tiny_disk, shards):
    root = tiny_disk / "store"
    AuditStore.open(StoreConfig(root)).close()
    (tmp_path / "dlq-elsewhere").mkdir()
    (root / "dlq").symlink_to(tmp_path / "dlq-elsewhere")  # the DLQ stays writable
    health = HealthState()
    probe = DiskProbe(root, health, min_free_bytes=0, min_free_ratio=0)
    store, pipeline, baseline = start_on(root, shards, health=health, probe=probe)
    handle = pipeline.handle("app")
    filler = fill(tiny_disk)

    for i in range(1, 6):
        handle.emit(event(i, key=f"k-{i}", text=BIG))
    with pytest.raises(StorageFull):
        handle.flush()
    assert pipeline.health.disk_full
    buffered = store.tree_size - baseline  # in the store, waiting for space: written, never re-sent
    assert buffered + pipeline.dlq_count == 5 and pipeline.dlq_count >= 4
    assert pipeline.metrics.events_lost.value == 0

    filler.unlink()
    wait_until(lambda: not pipeline.health.disk_full, "the latch clears once space is back")
    assert handle.emit(event(6, key="k-6")) == "queued"
    handle.flush()
    assert handle.redrive() == 5 - buffered
    shards.stop(store, pipeline)

    with AuditStore.open(StoreConfig(root)) as reopened:
        keys = [k for _, k in reopened.recent_idempotency_keys(100)]
        assert sorted(keys) == sorted(f"k-{i}" for i in range(7))  # each once: none lost, none twice


@pytest.mark.parametrize("with_fallback", [True, False])
def test_full_disk_without_room_for_the_dlq_uses_the_fallback_else_counts_the_loss(
    tiny_disk, shards, with_fallback
):
    handed: list[ParkedEvent] = []
    hooks = {"fallback": handed.extend} if with_fallback else {}
    store, pipeline, baseline = start_on(tiny_disk / "store", shards, **hooks)
    handle = pipeline.handle("app")
    filler = fill(tiny_disk)

    for i in range(1, 6):
        handle.emit(event(i, key=f"k-{i}", text=BIG))
    with pytest.raises(StorageFull):
        handle.flush()
    buffered = store.tree_size - baseline
    missing = 5 - buffered
    assert missing >= 4 and pipeline.dlq_count == 0
    if with_fallback:
        assert len(handed) == missing and pipeline.metrics.events_lost.value == 0
        assert all(p.event.occurred_at is not None and p.reason for p in handed)
    else:
        assert pipeline.metrics.events_lost.value == missing

    filler.unlink()
    wait_until(lambda: not pipeline.health.disk_full, "the latch clears once space is back")
    retried = [handle.emit(event(i, key=f"k-{i}", text=BIG)) for i in range(1, 6)]
    # A lost event's key was forgotten, so the client's retry records it; the rest are known.
    assert retried.count("queued") == (0 if with_fallback else missing)
    handle.flush()
    shards.stop(store, pipeline)
    with AuditStore.open(StoreConfig(tiny_disk / "store")) as reopened:
        keys = sorted(k for _, k in reopened.recent_idempotency_keys(100))
        expected = 6 if not with_fallback else 1 + buffered
        assert len(keys) == len(set(keys)) == expected
