"""Properties of the proofs a store issues, before and after retention purges.

Every inclusion proof (retained records, and purged ones: the Merkle spine outlives its
segments) and every consistency proof for an earlier size verifies with the standalone
verifiers of quipu.core.merkle against roots computed independently with merkle.mth over the
list of appended entries; any single flipped bit in any hash of a proof, or a changed leaf
index or size, makes verification raise ProofError.

One caveat is RFC 9162's, not quipu's: a proof does not commit to the tree size by itself.
Verifying with another size whose proof has the same shape (e.g. leaf 0 in size 5 instead of
8) reproduces the same root and passes; the size is authenticated by the signed checkpoint
that pins (tree_size, root). The size-mutation checks below use mutations that change the
shape, and one test pins down the caveat exactly.
"""

import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quipu.core.errors import ProofError
from quipu.core.keyring import KeyRing
from quipu.core.ledger import Ledger
from quipu.core.merkle import leaf_hash, mth, verify_consistency, verify_inclusion
from quipu.core.proof import ConsistencyProof, InclusionProof, audit_path, consistency_proof
from quipu.core.retention import RetentionPolicy
from quipu.core.sync import SyncPolicy
from quipu.core.table import Table, TableConfig

SEGMENT_BYTES = 4096  # the minimum: many segments, so purges cut deep into the tree


class Reference:
    """Roots by plain merkle.mth over the appended entries (no store involved), per size."""

    def __init__(self, entries: list[bytes]) -> None:
        self.entries = entries
        self._roots: dict[int, bytes] = {}

    def root(self, size: int) -> bytes:
        if size not in self._roots:
            self._roots[size] = mth(self.entries[:size])
        return self._roots[size]


def make_entries(count: int, salt: bytes, pad: int) -> list[bytes]:
    """Distinct entries, cheap to make: salt, index, and 0..pad filler bytes."""
    return [b"%s:%d:%s" % (salt.hex().encode(), i, b"x" * (i % (pad + 1))) for i in range(count)]


def open_store(root: Path, keys: KeyRing, retention: RetentionPolicy | None = None) -> Ledger:
    config = TableConfig(
        max_segment_bytes=SEGMENT_BYTES,
        sync=SyncPolicy.os_managed(),
        retention=retention or RetentionPolicy(),
    )
    return Ledger.open(root, {"logs": config}, keys=keys)


def append_in_chunks(table: Table, entries: list[bytes], chunk: int) -> None:
    for lo in range(0, len(entries), chunk):
        batch = entries[lo : lo + chunk]
        assert table.append_many(batch) == range(table.tree_size - len(batch), table.tree_size)


def flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def powers_of_two_upto(n: int) -> list[int]:
    return [1 << k for k in range(n.bit_length()) if 1 << k <= n]


def inclusion_hash_variants(p: InclusionProof, bits: Iterable[int]) -> Iterable[tuple]:
    """(leaf, path, root) with one bit flipped in one hash, for every hash of the proof."""
    bits = iter(bits)
    yield flip(p.leaf_hash, next(bits)), p.path, p.root
    yield p.leaf_hash, p.path, flip(p.root, next(bits))
    for k in range(len(p.path)):
        path = list(p.path)
        path[k] = flip(path[k], next(bits))
        yield p.leaf_hash, path, p.root


def consistency_hash_variants(p: ConsistencyProof, bits: Iterable[int]) -> Iterable[tuple]:
    """(first_root, second_root, proof) with one bit flipped in one hash of the proof."""
    bits = iter(bits)
    yield flip(p.first_root, next(bits)), p.second_root, p.proof
    yield p.first_root, flip(p.second_root, next(bits)), p.proof
    for k in range(len(p.proof)):
        proof = list(p.proof)
        proof[k] = flip(proof[k], next(bits))
        yield p.first_root, p.second_root, proof


def check_inclusion(p: InclusionProof, ref: Reference, bits: list[int]) -> None:
    i, n = p.leaf_index, p.tree_size
    assert p.leaf_hash == leaf_hash(ref.entries[i])
    assert p.root == ref.root(n)
    verify_inclusion(i, n, leaf_hash(ref.entries[i]), p.path, ref.root(n))

    for leaf, path, root in inclusion_hash_variants(p, bits):
        with pytest.raises(ProofError):
            verify_inclusion(i, n, leaf, path, root)
    # Any other leaf index, in range or not (entries are distinct, so no sibling repeats).
    for j in {i - 1, i + 1, i ^ 2, i ^ (1 << bits[-1] % 12), n - 1 - i, n, -1} - {i}:
        with pytest.raises(ProofError):
            verify_inclusion(j, n, p.leaf_hash, p.path, p.root)
    # Size changes that change the path's shape (the mutations of the CT reference tests).
    for m in {n * 2, n // 2, 0}:
        with pytest.raises(ProofError):
            verify_inclusion(i, m, p.leaf_hash, p.path, p.root)
    # A truncated or extended path.
    if p.path:
        with pytest.raises(ProofError):
            verify_inclusion(i, n, p.leaf_hash, p.path[:-1], p.root)
    with pytest.raises(ProofError):
        verify_inclusion(i, n, p.leaf_hash, [*p.path, p.root], p.root)


def check_consistency(p: ConsistencyProof, ref: Reference, bits: list[int]) -> None:
    m, n = p.first_size, p.second_size
    assert (p.first_root, p.second_root) == (ref.root(m), ref.root(n))
    verify_consistency(m, n, ref.root(m), ref.root(n), p.proof)

    for first_root, second_root, proof in consistency_hash_variants(p, bits):
        with pytest.raises(ProofError):
            verify_consistency(m, n, first_root, second_root, proof)
    if m == n:
        return
    # Size changes (the mutations of the CT reference tests) and swapped sizes.
    for m2, n2 in {(m - 1, n), (m + 1, n), (m ^ 2, n), (m, n * 2), (m, n // 2), (n, m)}:
        with pytest.raises(ProofError):
            verify_consistency(m2, n2, p.first_root, p.second_root, p.proof)
    with pytest.raises(ProofError):
        verify_consistency(m, n, p.second_root, p.first_root, p.proof)
    with pytest.raises(ProofError):
        verify_consistency(m, n, p.first_root, p.second_root, p.proof[:-1])
    with pytest.raises(ProofError):
        verify_consistency(m, n, p.first_root, p.second_root, [*p.proof, p.second_root])


bit = st.integers(0, 255)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    size_before=st.integers(1, 3000) | st.integers(1000, 3000),
    size_after=st.integers(0, 400),
    salt=st.binary(max_size=8),
    pad=st.integers(0, 60),
    chunk=st.integers(1, 800),
    purge=st.sampled_from(["run_retention", "run_retention", "drop_oldest", "none"]),
    data=st.data(),
)
def test_store_proofs_around_a_retention_purge_verify_against_independent_roots_and_resist_tampering(
    rsa_key, size_before, size_after, salt, pad, chunk, purge, data
):
    keys = KeyRing([rsa_key])
    entries = make_entries(size_before + size_after, salt, pad)
    ref = Reference(entries)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with open_store(root, keys) as ledger:
            append_in_chunks(ledger.table(), entries[:size_before], chunk)
            on_disk = ledger.table().bytes_on_disk()

        budget = data.draw(st.integers(1, on_disk), label="max_bytes")
        policy = RetentionPolicy(max_bytes=budget) if purge == "run_retention" else None
        with open_store(root, keys, policy) as ledger:
            table = ledger.table()
            segments_before = len(table.segments)
            if purge == "run_retention":
                dropped = ledger.run_retention()["logs"]
                assert dropped == (segments_before - len(table.segments))
                assert table.bytes_on_disk() <= budget or len(table.segments) == 1
            elif purge == "drop_oldest":
                count = data.draw(st.integers(0, segments_before - 1), label="drop_oldest")
                table.drop_oldest(count, lambda t: ledger.checkpoint(t.name))
            first = table.first_index
            assert first <= size_before
            event(f"purge={purge}, {'some' if first else 'no'} records purged")
            event(
                f"tree size {'<100' if len(entries) < 100 else '<1000' if len(entries) < 1000 else '>=1000'}"
            )
            append_in_chunks(table, entries[size_before:], chunk)

            n = table.tree_size
            assert n == len(entries)
            assert table.root() == ref.root(n)
            assert table.record_count == n - first
            assert [r.payload for r in table.records(first)] == entries[first:]
            report = ledger.verify_integrity()
            assert report.ok, report.problems

            # Inclusion: retained records (edges + samples), and purged ones if any.
            retained = range(first, n)  # may be empty: a purge can leave only an empty active segment
            samples = data.draw(st.lists(st.sampled_from(retained), max_size=4)) if retained else []
            indices = {*retained[:1], *retained[-1:], *samples}
            if first:
                indices |= {0, first - 1, *data.draw(st.lists(st.integers(0, first - 1), max_size=2))}
            for k, i in enumerate(sorted(indices)):
                for size in {n, data.draw(st.integers(i + 1, n), label=f"size for leaf {i}")}:
                    p = table.prove_inclusion(i, size)
                    assert (p.leaf_index, p.tree_size) == (i, size)
                    if k == 0:
                        assert p.path == audit_path(i, entries[:size])
                    flips = data.draw(st.lists(bit, min_size=len(p.path) + 3, max_size=len(p.path) + 3))
                    check_inclusion(p, ref, flips)

            # Consistency: 1, powers of two, the pre-purge size, the current size, samples.
            pow2 = powers_of_two_upto(n)
            firsts = {1, n, size_before, pow2[-1], *data.draw(st.lists(st.sampled_from(pow2), max_size=2))}
            firsts |= set(data.draw(st.lists(st.integers(1, n), max_size=2)))
            for k, m in enumerate(sorted(firsts)):
                for second in {n, data.draw(st.integers(m, n), label=f"second size for {m}")}:
                    p = table.prove_consistency(m, second)
                    assert (p.first_size, p.second_size) == (m, second)
                    if k == 1:
                        assert p.proof == consistency_proof(m, entries[:second])
                    flips = data.draw(st.lists(bit, min_size=len(p.proof) + 2, max_size=len(p.proof) + 2))
                    check_consistency(p, ref, flips)
            assert table.prove_consistency(n).proof == []
            issued = [table.prove_inclusion(i) for i in sorted(indices)]
            issued_cons = [table.prove_consistency(m) for m in sorted(firsts)]

        # The purged store reopens to the same tree and issues the same proofs.
        with open_store(root, keys, policy) as reopened:
            table = reopened.table()
            assert (table.tree_size, table.first_index) == (n, first)
            assert table.root() == ref.root(n)
            assert reopened.verify_integrity().ok
            assert [table.prove_inclusion(p.leaf_index) for p in issued] == issued
            assert [table.prove_consistency(p.first_size) for p in issued_cons] == issued_cons


def test_every_single_bit_flip_in_every_hash_of_a_proof_is_rejected(tmp_path, rsa_key):
    entries = make_entries(777, b"all-bits", 40)
    ref = Reference(entries)
    with open_store(tmp_path, KeyRing([rsa_key]), RetentionPolicy(max_bytes=20_000)) as ledger:
        table = ledger.table()
        append_in_chunks(table, entries[:600], 97)
        assert ledger.run_retention()["logs"] > 0
        append_in_chunks(table, entries[600:], 50)
        first, n = table.first_index, table.tree_size
        assert 0 < first < 600
        assert ledger.verify_integrity().ok

        all_bits = range(256)
        for i, size in ((first, n), (n - 1, n), (first + 33, 640), (0, n), (5, 6)):
            p = table.prove_inclusion(i, size)
            verify_inclusion(i, size, leaf_hash(entries[i]), p.path, ref.root(size))
            hashes = len(p.path) + 2
            for b in all_bits:
                for leaf, path, root in inclusion_hash_variants(p, [b] * hashes):
                    with pytest.raises(ProofError):
                        verify_inclusion(i, size, leaf, path, root)
        for m, second in ((1, n), (512, n), (first, n), (600, 700), (383, 384), (n, n)):
            p = table.prove_consistency(m, second)
            verify_consistency(m, second, ref.root(m), ref.root(second), p.proof)
            hashes = len(p.proof) + 2
            for b in all_bits:
                for first_root, second_root, proof in consistency_hash_variants(p, [b] * hashes):
                    with pytest.raises(ProofError):
                        verify_consistency(m, second, first_root, second_root, proof)


def path_shape(index: int, size: int) -> list[bool]:
    """Sides of the siblings on PATH(index, D[size]) (RFC 6962 §2.1.1), leaf first:
    True where the sibling is on the right. Written here, independently of quipu."""
    sides, lo, hi = [], 0, size
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if index - lo < k:
            sides.append(True)
            hi = lo + k
        else:
            sides.append(False)
            lo += k
    return sides[::-1]


@settings(max_examples=40, deadline=None)
@given(
    entries_count=st.integers(2, 300),
    data=st.data(),
)
def test_inclusion_proof_under_another_tree_size_verifies_only_when_the_path_shape_is_unchanged(
    entries_count, data
):
    """The RFC 9162 caveat, pinned down: a size with the same path shape passes (the signed
    checkpoint, not the proof, binds the size); any size that changes the shape fails."""
    entries = make_entries(entries_count, b"shape", 3)
    ref = Reference(entries)
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp), KeyRing()) as ledger:
        table = ledger.table()
        append_in_chunks(table, entries, 64)
        n = data.draw(st.integers(1, entries_count), label="size")
        i = data.draw(st.integers(0, n - 1), label="leaf")
        p = table.prove_inclusion(i, n)
        verify_inclusion(i, n, p.leaf_hash, p.path, ref.root(n))
        others = {n - 1, n + 1, *data.draw(st.lists(st.integers(i + 1, 2 * n + 2), max_size=6))} - {n}
        for other in others:
            if other > i and path_shape(i, other) == path_shape(i, n):
                verify_inclusion(i, other, p.leaf_hash, p.path, p.root)
            else:
                with pytest.raises(ProofError):
                    verify_inclusion(i, other, p.leaf_hash, p.path, p.root)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=st.lists(st.tuples(st.integers(250, 700), st.integers(4096, 12_000)), min_size=2, max_size=5),
    salt=st.binary(max_size=8),
    data=st.data(),
)
def test_proofs_hold_after_any_number_of_purges(rsa_key, rounds, salt, data):
    """Rounds of appends, each followed by a byte-budget purge: every proof for a retained
    record and every consistency proof from any earlier size (including each round's
    boundary, which an auditor may have pinned) still verifies, and so does the store."""
    keys = KeyRing([rsa_key])
    entries = make_entries(sum(n for n, _ in rounds), salt, pad=40)
    ref, boundaries, appended = Reference(entries), [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for count, budget in rounds:
            with open_store(Path(tmp), keys, RetentionPolicy(max_bytes=budget)) as ledger:
                table = ledger.table()
                append_in_chunks(table, entries[appended : appended + count], chunk=97)
                appended += count
                boundaries.append(appended)
                ledger.run_retention()
                n, first = table.tree_size, table.first_index
                assert n == appended
                retained = range(first, n)  # may be empty: a purge can leave only an empty active segment
                samples = data.draw(st.lists(st.sampled_from(retained), max_size=3)) if retained else []
                for i in {*retained[:1], *retained[-1:], *samples}:
                    p = table.prove_inclusion(i)
                    verify_inclusion(i, n, leaf_hash(entries[i]), p.path, ref.root(n))
                for m in {1, *boundaries}:
                    c = table.prove_consistency(m)
                    verify_consistency(m, n, ref.root(m), ref.root(n), c.proof)
                assert ledger.verify_integrity().ok
        assert first > 0  # every round's records (>= 250 x ~75 bytes) overflow its budget
