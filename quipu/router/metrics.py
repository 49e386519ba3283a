"""The router's own counters, rendered as Prometheus text format 0.0.4 with the shard's
pieces (quipu/shard/metrics.py).

The router adds nothing to the shards' figures (scrape each shard for those); it counts
what only it sees: requests by route template and status, shard calls by shard and outcome,
anchors signed and refused. Route templates never carry path values (ids are values).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from quipu.shard.metrics import Counter, LabeledCounter, format_value, label_set, write_family

# (family, HELP, label names) of the labeled counters; a label value is "a|b" for two labels.
_LABELED = (
    (
        "requests",
        "quipu_router_requests_total",
        "Requests answered, by route and status.",
        ("route", "status"),
    ),
    (
        "shard_calls",
        "quipu_router_shard_calls_total",
        "Calls to shards, by shard and outcome.",
        ("shard", "outcome"),
    ),
)
_COUNTERS = (
    ("anchors_signed", "quipu_router_anchors_signed_total", "Cross-shard anchors signed and logged."),
    ("anchor_failures", "quipu_router_anchor_failures_total", "Anchor attempts that could not sign."),
    ("export_failures", "quipu_router_anchor_export_failures_total", "Anchors the export refused."),
)


@dataclass(frozen=True)
class RouterMetrics:
    requests: LabeledCounter = field(default_factory=LabeledCounter)
    shard_calls: LabeledCounter = field(default_factory=LabeledCounter)
    anchors_signed: Counter = field(default_factory=Counter)
    anchor_failures: Counter = field(default_factory=Counter)
    export_failures: Counter = field(default_factory=Counter)

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> str:
        """The counters plus `gauges` (name -> (HELP, value))."""
        lines: list[str] = []
        for attr, name, help_text, labels in _LABELED:
            write_family(lines, name, "counter", help_text)
            for key, value in sorted(getattr(self, attr).values().items()):
                pairs = zip(labels, key.split("|", len(labels) - 1), strict=True)
                lines.append(f"{name}{label_set(pairs)} {value}")
        for attr, name, help_text in _COUNTERS:
            write_family(lines, name, "counter", help_text)
            lines.append(f"{name} {getattr(self, attr).value}")
        for name, (help_text, value) in gauges.items():
            write_family(lines, name, "gauge", help_text)
            lines.append(f"{name} {format_value(float(value))}")
        return "\n".join(lines) + "\n"
