"""ShardMap: placement by consistent hashing, generations and the frozen set, the file."""

import os
import time
from collections import Counter

import pytest

from quipu.core.errors import BadInput
from quipu.router.shard_map import ShardInfo, ShardMap, ShardMapFile


def shards(first: int, count: int) -> list[ShardInfo]:
    return [ShardInfo(f"shard-{i:04d}", f"http://127.0.0.1:{7100 + i}") for i in range(first, first + count)]


def grown(base: ShardMap, first: int, count: int, freeze: bool = True) -> ShardMap:
    return base.with_pending(shards(first, count)).commit_pending(freeze_previous=freeze)


TENANTS = [f"tenant-{i}" for i in range(2000)]


def test_every_active_shard_takes_a_fair_share_of_tenants():
    spread = Counter(ShardMap.create("s", shards(0, 3)).route_write(t).id for t in TENANTS)
    assert set(spread) == {"shard-0000", "shard-0001", "shard-0002"}
    assert min(spread.values()) > len(TENANTS) / 3 * 0.7


def test_placement_depends_on_the_seed_and_nothing_else():
    one, same, other = (ShardMap.create(seed, shards(0, 3)) for seed in ("a", "a", "b"))
    assert [one.route_write(t) for t in TENANTS] == [same.route_write(t) for t in TENANTS]
    assert [one.route_write(t) for t in TENANTS] != [other.route_write(t) for t in TENANTS]


def test_grow_freezes_the_old_shards_and_routes_only_to_the_new_ones():
    before = ShardMap.create("s", shards(0, 3))
    after = grown(before, 3, 2)
    assert after.frozen == {"shard-0000", "shard-0001", "shard-0002"}
    assert after.active == ("shard-0003", "shard-0004")
    assert {after.route_write(t).id for t in TENANTS} == {"shard-0003", "shard-0004"}


def test_a_tenants_reads_go_to_its_owner_in_each_generation_and_no_other_shard():
    before = ShardMap.create("s", shards(0, 3))
    after = grown(grown(before, 3, 2), 5, 1)
    for tenant in TENANTS[:200]:
        owners = [before.route_write(tenant).id, grown(before, 3, 2).route_write(tenant).id, "shard-0005"]
        assert [s.id for s in after.read_shards(tenant)] == owners
        assert [s.id for s in after.previous_owners(tenant)] == owners[:2]
    assert len(after.read_shards(None)) == 6


def test_grow_without_freezing_keeps_the_old_shards_in_the_ring():
    after = grown(ShardMap.create("s", shards(0, 2)), 2, 1, freeze=False)
    assert not after.frozen
    assert {after.route_write(t).id for t in TENANTS} == {"shard-0000", "shard-0001", "shard-0002"}


def test_pending_shards_take_no_writes_until_committed():
    pending = ShardMap.create("s", shards(0, 2)).with_pending(shards(2, 2))
    assert {pending.route_write(t).id for t in TENANTS} == {"shard-0000", "shard-0001"}
    assert pending.generation == 0


def test_the_file_round_trips_and_its_hash_changes_with_any_edit(tmp_path):
    path = tmp_path / "shards.json"
    m = grown(ShardMap.create("s", shards(0, 3)), 3, 2)
    m.save(path)
    loaded = ShardMap.load(path)
    assert loaded == m and loaded.manifest_hash == m.manifest_hash
    edited = path.read_bytes().replace(b":7100", b":7199", 1)
    assert ShardMap.from_bytes(edited).manifest_hash != m.manifest_hash


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a shard map"),
        (b'{"format": "quipu-shard-map", "version": 2}', "version 2 is not readable"),
        (b'{"format": "quipu-shard-map", "version": 1, "seed": "s"}', "missing or mistypes"),
    ],
)
def test_a_bad_file_is_refused_by_name(tmp_path, data, problem):
    path = tmp_path / "shards.json"
    path.write_bytes(data)
    with pytest.raises(BadInput, match=problem) as err:
        ShardMap.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ShardMap.create(
            "s", [ShardInfo("shard-0000", "http://h:1"), ShardInfo("shard-0000", "http://h:2")]
        ),
        lambda: ShardMap.create("", shards(0, 1)),
        lambda: ShardMap.create("s", shards(0, 1)).with_pending(shards(0, 1)),
        lambda: ShardMap.create("s", shards(0, 1)).commit_pending(),
        lambda: ShardInfo("../etc", "http://h:1"),
        lambda: ShardInfo("shard-0001", "http://h:1/path"),
    ],
)
def test_inconsistent_maps_are_refused(build):
    with pytest.raises(BadInput):
        build()


def test_a_running_reader_sees_a_rewritten_map_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "shards.json"
    first = ShardMap.create("s", shards(0, 2))
    first.save(path)
    reader = ShardMapFile(path)
    second = grown(first, 2, 1)
    second.save(path)
    assert reader.current(fresh=True) == second
    path.write_bytes(b"{ half a file")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert reader.current(fresh=True) == second
