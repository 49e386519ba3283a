"""Health states and the disk probe, on the real file system of the test's tmp dir."""

import shutil

import pytest

from quipu.shard.health import PROBE_NAME, DiskProbe, HealthState


def _alive() -> HealthState:
    health = HealthState()
    health.writer_alive = True
    return health


def test_new_state_is_unhealthy_until_a_writer_runs():
    assert HealthState().status() == ("unhealthy", ["writer thread is not running"])


def test_healthy_disk_reports_ok_with_no_reasons(tmp_path):
    health = _alive()
    DiskProbe(tmp_path, health, min_free_bytes=0, min_free_ratio=0.0).run()
    assert health.status() == ("ok", [])
    assert 0 < health.free_bytes <= health.total_bytes
    assert not (tmp_path / PROBE_NAME).exists(), "the probe file is removed after the write"


def test_low_disk_by_ratio_is_degraded_not_unhealthy(tmp_path):
    health = _alive()
    DiskProbe(tmp_path, health, min_free_bytes=0, min_free_ratio=1.01).run()
    status, reasons = health.status()
    assert status == "degraded"
    assert len(reasons) == 1 and reasons[0].startswith(f"low disk: {health.free_bytes} bytes free (below ")


def test_low_disk_by_bytes_is_degraded(tmp_path):
    health = _alive()
    DiskProbe(tmp_path, health, min_free_bytes=1 << 62, min_free_ratio=0.0).run()
    assert health.low_disk
    assert health.status()[0] == "degraded"


def test_space_above_threshold_clears_low_disk(tmp_path):
    health = _alive()
    DiskProbe(tmp_path, health, min_free_bytes=1 << 62).run()
    DiskProbe(tmp_path, health, min_free_bytes=0, min_free_ratio=0.0).run()
    assert health.status() == ("ok", [])


def test_dead_writer_is_unhealthy_even_on_low_disk(tmp_path):
    health = HealthState()
    DiskProbe(tmp_path, health, min_free_ratio=1.01).run()
    assert health.status() == ("unhealthy", ["writer thread is not running"])


def test_disk_full_latch_is_unhealthy():
    health = _alive()
    health.set_disk_full(True)
    assert health.disk_full
    assert health.status() == (
        "unhealthy",
        ["disk full (ENOSPC): writes go to the dead-letter queue until space is freed"],
    )
    health.set_disk_full(False)
    assert health.status() == ("ok", [])


def test_probe_on_missing_root_is_unhealthy_with_errno(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    health = _alive()
    probe = DiskProbe(root, health, min_free_bytes=0, min_free_ratio=0.0)
    shutil.rmtree(root)  # works as root too, unlike chmod
    probe.run()
    assert health.probe_failed
    assert health.status() == ("unhealthy", ["probe write to the store root failed: ENOENT"])

    root.mkdir()
    probe.run()
    assert health.status() == ("ok", [])


def test_successful_probe_clears_the_disk_full_latch(tmp_path):
    health = _alive()
    health.set_disk_full(True)
    DiskProbe(tmp_path, health, min_free_bytes=0, min_free_ratio=0.0).run()
    assert not health.disk_full
    assert health.status() == ("ok", [])


def test_failed_probe_keeps_the_latch(tmp_path):
    health = _alive()
    health.set_disk_full(True)
    DiskProbe(tmp_path / "missing", health, min_free_bytes=0, min_free_ratio=0.0).run()
    status, reasons = health.status()
    assert status == "unhealthy" and health.disk_full and len(reasons) == 2


@pytest.mark.parametrize(
    "kwargs", [{"min_free_bytes": -1}, {"min_free_ratio": -0.1}, {"min_free_ratio": float("nan")}]
)
def test_probe_refuses_negative_thresholds(tmp_path, kwargs):
    with pytest.raises(ValueError):
        DiskProbe(tmp_path, HealthState(), **kwargs)
