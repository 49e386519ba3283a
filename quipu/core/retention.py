"""Which sealed segments a retention run may unlink: by age and/or by byte budget (OR).

Only whole sealed segments go, oldest first and as a contiguous prefix, so the retained
chain stays contiguous; the active segment is never dropped. The Merkle spine is not
segment data and is kept, which is what lets proofs outlive retention.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from quipu.core.errors import BadInput
from quipu.core.segment import Segment

MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep segments younger than `max_age_micros` and/or within `max_bytes` (None: no limit)."""

    max_age_micros: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_age_micros", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise BadInput(f"retention {name} must be positive, got {value}")

    @classmethod
    def days(cls, days: float, max_bytes: int | None = None) -> "RetentionPolicy":
        return cls(max_age_micros=int(days * MICROS_PER_DAY), max_bytes=max_bytes)

    def expired_prefix(self, segments: Sequence[Segment], now_micros: int) -> int:
        """How many of the oldest segments may go; `segments` ends with the active one."""
        total = sum(s.size for s in segments)
        dropped = 0
        for seg in segments[:-1]:
            too_old = (
                self.max_age_micros is not None
                and seg.seal_info is not None
                and seg.seal_info.max_ts < now_micros - self.max_age_micros
            )
            over_budget = self.max_bytes is not None and total > self.max_bytes
            if not (too_old or over_budget):
                break
            total -= seg.size
            dropped += 1
        return dropped
