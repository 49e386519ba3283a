"""The pipeline metrics and their Prometheus rendering, checked with Prometheus' own parser."""

import math
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quipu.shard.metrics import (
    GAUGE_HELP,
    LATENCY_BUCKETS,
    REJECT_REASONS,
    Counter,
    Histogram,
    LabeledCounter,
    PipelineMetrics,
    render_prometheus,
)

GAUGES = {
    "quipu_queue_depth": 3,
    "quipu_dlq_entries": 1,
    "quipu_store_bytes": 123_456_789,
    "quipu_disk_free_bytes": 500_000_000_000,
    "quipu_disk_total_bytes": 1_000_000_000_000,
    "quipu_writer_alive": 1,
    "quipu_disk_full": 0,
    "quipu_disk_low": 1,
}


def _parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, tuple], float]]:
    """(family name -> (type, help), (sample name, sorted labels) -> value)."""
    families, samples = {}, {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.documentation)
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return families, samples


def _filled_metrics() -> PipelineMetrics:
    m = PipelineMetrics()
    m.writes_ok.inc(7)
    m.write_retries.inc(2)
    m.writes_parked.inc()
    m.events_lost.inc(0)
    m.emit_rejected.inc("queue_full", 4)
    m.verify_runs.inc(3)
    for seconds in (0.0002, 0.0007, 0.003, 0.003, 0.4, 30.0):
        m.write_latency.observe(seconds)
    return m


def test_rendering_parses_with_every_family_and_value():
    families, samples = _parse(render_prometheus(_filled_metrics(), GAUGES))

    counters = {
        "quipu_writes_ok": 7,
        "quipu_write_retries": 2,
        "quipu_writes_parked": 1,
        "quipu_events_lost": 0,
        "quipu_verify_runs": 3,
    }
    for name, value in counters.items():
        assert families[name][0] == "counter" and families[name][1]
        assert samples[(f"{name}_total", ())] == value

    assert families["quipu_emit_rejected"][0] == "counter"
    assert {r: samples[("quipu_emit_rejected_total", (("reason", r),))] for r in REJECT_REASONS} == {
        "queue_full": 4,
        "disk_full": 0,
        "writer_stopped": 0,
    }

    for name, value in GAUGES.items():
        assert families[name] == ("gauge", GAUGE_HELP[name])
        assert samples[(name, ())] == value
    assert len(GAUGES) == len(GAUGE_HELP) == 8


def test_histogram_buckets_are_cumulative_and_inf_equals_count():
    families, samples = _parse(render_prometheus(_filled_metrics(), {}))
    name = "quipu_write_latency_seconds"
    assert families[name][0] == "histogram"

    buckets = [samples[(f"{name}_bucket", (("le", repr(b)),))] for b in LATENCY_BUCKETS]
    assert buckets == sorted(buckets), "buckets must be cumulative"
    # 0.0002 <= 0.0005; 0.0007 <= 0.001; two 0.003 <= 0.005; 0.4 <= 0.5; 30 only in +Inf.
    assert samples[(f"{name}_bucket", (("le", "0.0005"),))] == 1
    assert samples[(f"{name}_bucket", (("le", "0.001"),))] == 2
    assert samples[(f"{name}_bucket", (("le", "0.005"),))] == 4
    assert samples[(f"{name}_bucket", (("le", "0.5"),))] == 5
    assert samples[(f"{name}_bucket", (("le", "10.0"),))] == 5
    assert samples[(f"{name}_bucket", (("le", "+Inf"),))] == samples[(f"{name}_count", ())] == 6
    assert math.isclose(samples[(f"{name}_sum", ())], 0.0002 + 0.0007 + 0.003 + 0.003 + 0.4 + 30.0)


def test_every_family_has_help_and_type_lines():
    text = render_prometheus(PipelineMetrics(), GAUGES)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert names == helps
    assert len(names) == 5 + 1 + 1 + 8
    assert text.endswith("\n")


def test_unknown_gauge_is_refused():
    with pytest.raises(ValueError, match="quipu_no_such_gauge"):
        render_prometheus(PipelineMetrics(), {"quipu_no_such_gauge": 1})


def test_label_values_are_escaped():
    m = PipelineMetrics()
    odd = 'a"b\\c\nd'
    m.emit_rejected.inc(odd, 2)
    _, samples = _parse(render_prometheus(m, {}))
    assert samples[("quipu_emit_rejected_total", (("reason", odd),))] == 2


def test_counter_refuses_to_go_down():
    with pytest.raises(ValueError):
        Counter().inc(-1)
    with pytest.raises(ValueError):
        LabeledCounter().inc("queue_full", -1)


def test_negative_or_nan_latency_is_clamped_to_zero():
    h = Histogram()
    h.observe(-0.5)
    h.observe(float("nan"))
    snap = h.snapshot()
    assert snap.count == 2 and snap.sum == 0.0 and snap.cumulative[0] == 2


def test_counters_are_exact_under_concurrent_increments():
    m = PipelineMetrics()
    threads_n, per_thread = 4, 10_000
    start = threading.Barrier(threads_n)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            m.writes_ok.inc()
            m.emit_rejected.inc("queue_full")
            m.write_latency.observe(0.001)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = threads_n * per_thread
    assert m.writes_ok.value == total
    assert m.emit_rejected.values() == {"queue_full": total}
    assert m.write_latency.snapshot().count == total


def test_two_pipelines_keep_separate_metrics():
    a, b = PipelineMetrics(), PipelineMetrics()
    a.writes_ok.inc()
    assert b.writes_ok.value == 0
