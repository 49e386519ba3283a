"""Which shard owns which tenant, in every generation of the cluster: `shards.json`.

A tenant is placed by consistent hashing (uhashring's ketama ring) of `seed + tenant` over
the active shards of the newest generation. A grow adds a generation; by default the
previous active set is frozen, so it takes no more writes, and no record ever moves. A
tenant's history therefore lies on exactly one shard per generation: its reads consult
those shards and no other (`read_shards`), and the shards it owned before a grow are the
ones that may already hold a retried Idempotency-Key (`previous_owners`).

The seed is fixed at creation: changing it would move every tenant. The file is written by
temp file + fsync + rename, so a reader sees the old map or the new one, never half of
either. Its canonical bytes are what a cross-shard anchor signs (`manifest_hash`), so a
hand edit of the file is visible to `quipu-cluster verify`. Format: docs/format.md
("Shard map").
"""

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import orjson
from uhashring import HashRing

from quipu.core.errors import BadInput, NotFound
from quipu.core.files import ReloadedFile, replace_durably

log = logging.getLogger(__name__)
FORMAT = "quipu-shard-map"
VERSION = 1
_SHARD_ID = re.compile(r"shard-[0-9]{4,8}")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}")
RECHECK_SECS = 0.2  # how stale a ShardMapFile may be: one stat per interval at most


@dataclass(frozen=True)
class ShardInfo:
    id: str  # "shard-0000"
    url: str  # "http://127.0.0.1:7101", no trailing slash

    def __post_init__(self) -> None:
        if not _SHARD_ID.fullmatch(self.id):
            raise BadInput(f"shard id {self.id!r}: expected shard-NNNN")
        if not _URL.fullmatch(self.url):
            raise BadInput(f"shard {self.id} url: expected http://HOST:PORT (no path)")


@dataclass(frozen=True)
class ShardMap:
    """One immutable version of the map. Every change returns a new map to `save`."""

    seed: str
    shards: dict[str, ShardInfo]
    generations: tuple[tuple[str, ...], ...]
    frozen: frozenset[str] = frozenset()
    pending: tuple[ShardInfo, ...] = ()
    _rings: dict[int, HashRing] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, str) or not self.seed:
            raise BadInput("seed: expected a non-empty string")
        if not self.generations or any(not g for g in self.generations):
            raise BadInput("generations: every generation needs at least one shard")
        known = set(self.shards)
        for n, generation in enumerate(self.generations):
            if not set(generation) <= known:
                raise BadInput(f"generations[{n}] names a shard that is not in shards")
        if not self.frozen <= known:
            raise BadInput("frozen names a shard that is not in shards")
        if not self.active:
            raise BadInput("the newest generation has no active (unfrozen) shard")
        if any(p.id in known for p in self.pending):
            raise BadInput("pending names a shard that already exists")

    # --- building -----------------------------------------------------------------------

    @classmethod
    def create(cls, seed: str, shards: Sequence[ShardInfo]) -> "ShardMap":
        """Generation 0: every given shard active."""
        _unique(shards)
        return cls(seed, {s.id: s for s in shards}, (tuple(s.id for s in shards),))

    def with_pending(self, new: Sequence[ShardInfo]) -> "ShardMap":
        """The map with shards asked for by a grow, not yet started: nothing routes to them."""
        _unique([*self.shards.values(), *self.pending, *new])
        return replace(self, pending=(*self.pending, *new), _rings={})

    def commit_pending(self, freeze_previous: bool = True) -> "ShardMap":
        """A new generation of the pending shards (plus, unless frozen, the active ones)."""
        if not self.pending:
            raise BadInput("no pending shards to commit: run grow first")
        added = {p.id: p for p in self.pending}
        carried = () if freeze_previous else self.active
        frozen = self.frozen | set(self.active) if freeze_previous else self.frozen
        generation = (*carried, *added)
        return ShardMap(self.seed, self.shards | added, (*self.generations, generation), frozenset(frozen))

    # --- routing ------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return len(self.generations) - 1

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(s for s in self.generations[-1] if s not in self.frozen)

    def route_write(self, tenant: str) -> ShardInfo:
        """The one shard that takes this tenant's writes now."""
        return self.shards[self._owner(len(self.generations) - 1, tenant)]

    def read_shards(self, tenant: str | None) -> list[ShardInfo]:
        """Every shard that may hold the tenant's rows (its owner in each generation, oldest
        first); every shard for a read across all tenants."""
        if tenant is None:
            return list(self.shards.values())
        ids = dict.fromkeys(self._owner(g, tenant) for g in range(len(self.generations)))
        return [self.shards[i] for i in ids]

    def previous_owners(self, tenant: str) -> list[ShardInfo]:
        """Shards that owned the tenant in an earlier generation and no longer take its writes."""
        now = self.route_write(tenant)
        return [s for s in self.read_shards(tenant) if s.id != now.id]

    def url(self, shard_id: str) -> str:
        if shard_id not in self.shards:
            raise NotFound(f"no shard {shard_id} in the shard map")
        return self.shards[shard_id].url

    def _owner(self, generation: int, tenant: str) -> str:
        ring = self._rings.get(generation)
        if ring is None:
            nodes = self.generations[generation]
            if generation == len(self.generations) - 1:
                nodes = self.active  # frozen shards of the newest generation take no writes
            ring = self._rings[generation] = HashRing(nodes=sorted(nodes))
        return ring.get_node(f"{self.seed}\x00{tenant}")

    # --- the file -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "seed": self.seed,
            "shards": {s.id: {"url": s.url} for s in self.shards.values()},
            "generations": [list(g) for g in self.generations],
            "frozen": sorted(self.frozen),
            "pending": [{"id": p.id, "url": p.url} for p in self.pending],
        }
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"

    @cached_property
    def manifest_hash(self) -> str:
        """SHA-256 (hex) of the canonical file bytes: what a cross-shard anchor signs."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: Path) -> None:
        replace_durably(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> "ShardMap":
        try:
            return cls.from_bytes(path.read_bytes())
        except BadInput as err:
            raise BadInput(f"{path}: {err}") from err

    @classmethod
    def from_bytes(cls, data: bytes) -> "ShardMap":
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise BadInput(f"not JSON ({err})") from err
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise BadInput(f"not a shard map (format is not {FORMAT!r})")
        if body.get("version") != VERSION:
            raise BadInput(
                f"shard map version {body.get('version')!r} is not readable (this release reads {VERSION})"
            )
        try:
            shards = {i: ShardInfo(i, s["url"]) for i, s in body["shards"].items()}
            generations = tuple(tuple(g) for g in body["generations"])
            pending = tuple(ShardInfo(p["id"], p["url"]) for p in body.get("pending", []))
            return cls(body["seed"], shards, generations, frozenset(body.get("frozen", [])), pending)
        except (KeyError, TypeError, AttributeError) as err:
            raise BadInput(f"shard map is missing or mistypes a key ({err})") from err


def _unique(shards: Sequence[ShardInfo]) -> None:
    ids = [s.id for s in shards]
    urls = [s.url for s in shards]
    if len(set(ids)) != len(ids) or len(set(urls)) != len(urls):
        raise BadInput("shard ids and urls must be unique")


class ShardMapFile(ReloadedFile[ShardMap]):
    """The map on disk, re-read when the file changes: how a running front picks up a grow
    without a restart. `current(fresh=True)` re-reads at once (after a shard said it is
    frozen). A file that cannot be read keeps the last good map: a grow writes by rename,
    so that is a hand edit or a bad disk, and verify reports it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, ShardMap.load, RECHECK_SECS)
