"""Published RFC 6962 test vectors against quipu's Merkle functions, provers and a Ledger.

The vectors are data files in tests/vectors/rfc6962/, one case per file, copied from the
Certificate Transparency reference code (google/certificate-transparency) and its successor
(transparency-dev/merkle); README.md there says where every value comes from. Nothing here
computes an expected value with quipu: good cases must be reproduced bit for bit, mutated
probes (named by mutation) must be refused with ProofError.
"""

import json
from pathlib import Path

import pytest

from quipu.core.errors import ProofError
from quipu.core.ledger import Ledger
from quipu.core.merkle import (
    empty_root,
    leaf_hash,
    mth,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from quipu.core.proof import ConsistencyProof, InclusionProof, audit_path, consistency_proof
from quipu.core.table import TableConfig

VECTOR_DIR = Path(__file__).parent / "vectors" / "rfc6962"
KINDS = {"empty_root", "leaf_hash", "node_hash", "root", "inclusion", "consistency"}


def _load() -> list[dict]:
    cases = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        case = json.loads(path.read_text())
        case["id"] = path.stem
        cases.append(case)
    return cases


CASES = _load()


def _params(*kinds: str, expected: str | None = None) -> list:
    return [
        pytest.param(c, id=c["id"])
        for c in CASES
        if c["kind"] in kinds and (expected is None or c["expected"] == expected)
    ]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def hs(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def _by_kind(kind: str, expected: str = "ok") -> list[dict]:
    return [c for c in CASES if c["kind"] == kind and c.get("expected") == expected]


def _published_roots() -> dict[int, bytes]:
    return {c["tree_size"]: h(c["expected"]["root"]) for c in CASES if c["kind"] == "root"}


def _published_inputs() -> list[bytes]:
    largest = max((c for c in CASES if c["kind"] == "root"), key=lambda c: c["tree_size"])
    return hs(largest["entries"])


# --- the vector files themselves ------------------------------------------------------


@pytest.mark.parametrize("case", _params(*KINDS))
def test_every_vector_file_has_a_description_a_source_and_an_expected_outcome(case):
    assert case["kind"] in KINDS
    assert case["desc"].strip()
    source = case["source"]
    assert source["repo"] in ("google/certificate-transparency", "transparency-dev/merkle")
    assert source["path"]
    assert len(source["commit"]) == 40
    if case["kind"] in ("inclusion", "consistency"):
        assert case["expected"] in ("ok", "error")
    else:
        assert isinstance(case["expected"], dict) and case["expected"]


def test_vector_set_covers_every_prefix_root_and_both_outcomes_of_each_proof_kind():
    assert sorted(_published_roots()) == list(range(9))
    assert len(_published_inputs()) == 8
    for kind in ("inclusion", "consistency"):
        assert len(_by_kind(kind, "ok")) >= 5
        assert len(_by_kind(kind, "error")) >= 10
    names = {c["id"] for c in CASES}
    for mutation in (
        "inclusion-0-in-8.wrong-leaf",
        "inclusion-0-in-8.leaf-index-plus-1",
        "inclusion-0-in-8.truncated-path",
        "inclusion-0-in-8.trailing-root",
        "inclusion-0-in-8.random-root",
        "consistency-6-to-8.swapped-sizes",
        "consistency-6-to-8.swapped-roots",
        "consistency-6-to-8.truncated-proof",
        "consistency-6-to-8.trailing-root2",
    ):
        assert mutation in names


# --- pure functions ---------------------------------------------------------------------


@pytest.mark.parametrize("case", _params("empty_root", "leaf_hash", "node_hash"))
def test_published_hasher_vectors_match_leaf_node_and_empty_hashes(case):
    want = h(case["expected"]["hash"])
    if case["kind"] == "empty_root":
        assert empty_root() == want
        assert mth([]) == want
    elif case["kind"] == "leaf_hash":
        assert leaf_hash(h(case["entry"])) == want
    else:
        assert node_hash(h(case["left"]), h(case["right"])) == want


@pytest.mark.parametrize("case", _params("root"))
def test_mth_of_each_published_prefix_equals_the_published_root(case):
    entries = hs(case["entries"])
    assert len(entries) == case["tree_size"]
    assert mth(entries) == h(case["expected"]["root"])


@pytest.mark.parametrize("case", _params("inclusion", expected="ok"))
def test_published_inclusion_paths_match_and_verify(case):
    entries = hs(case["entries"])
    index, size = case["leaf_index"], case["tree_size"]
    leaf, path, root = h(case["leaf_hash"]), hs(case["path"]), h(case["root"])
    assert len(entries) == size
    assert leaf_hash(entries[index]) == leaf
    assert mth(entries) == root
    assert audit_path(index, entries) == path
    assert root_from_inclusion_proof(index, size, leaf, path) == root
    assert verify_inclusion(index, size, leaf, path, root) is None


@pytest.mark.parametrize("case", _params("consistency", expected="ok"))
def test_published_consistency_proofs_match_and_verify(case):
    entries = hs(case["entries"])
    first, second = case["first_size"], case["second_size"]
    first_root, second_root, proof = h(case["first_root"]), h(case["second_root"]), hs(case["proof"])
    assert len(entries) == second
    assert mth(entries[:first]) == first_root
    assert mth(entries) == second_root
    assert consistency_proof(first, entries) == proof
    assert verify_consistency(first, second, first_root, second_root, proof) is None


@pytest.mark.parametrize("case", _params("inclusion", expected="error"))
def test_mutated_inclusion_probes_are_rejected_with_proof_error(case):
    with pytest.raises(ProofError):
        verify_inclusion(
            case["leaf_index"],
            case["tree_size"],
            h(case["leaf_hash"]),
            hs(case["path"]),
            h(case["root"]),
        )


@pytest.mark.parametrize("case", _params("consistency", expected="error"))
def test_mutated_consistency_probes_are_rejected_with_proof_error(case):
    with pytest.raises(ProofError):
        verify_consistency(
            case["first_size"],
            case["second_size"],
            h(case["first_root"]),
            h(case["second_root"]),
            hs(case["proof"]),
        )


# --- the store ----------------------------------------------------------------------------


def _assert_ledger_matches_published_vectors(ledger: Ledger) -> None:
    table = ledger.table()
    roots = _published_roots()
    assert table.tree_size == 8
    for size, root in roots.items():
        assert table.root(size) == root, f"root at size {size}"
    assert table.root() == roots[8]
    for case in _by_kind("inclusion"):
        want = InclusionProof(
            case["leaf_index"],
            case["tree_size"],
            h(case["leaf_hash"]),
            hs(case["path"]),
            h(case["root"]),
        )
        got = table.prove_inclusion(case["leaf_index"], case["tree_size"])
        assert got == want, case["id"]
        verify_inclusion(got.leaf_index, got.tree_size, got.leaf_hash, got.path, got.root)
    for case in _by_kind("consistency"):
        want = ConsistencyProof(
            case["first_size"],
            case["second_size"],
            h(case["first_root"]),
            h(case["second_root"]),
            hs(case["proof"]),
        )
        got = table.prove_consistency(case["first_size"], case["second_size"])
        assert got == want, case["id"]
        verify_consistency(got.first_size, got.second_size, got.first_root, got.second_root, got.proof)


@pytest.mark.parametrize("batched", [False, True], ids=["append", "append_many"])
def test_ledger_fed_the_published_inputs_reproduces_published_roots_paths_and_proofs(tmp_path, keys, batched):
    inputs, roots = _published_inputs(), _published_roots()
    config = TableConfig(max_segment_bytes=4096)
    with Ledger.open(tmp_path, {"logs": config}, keys=keys) as ledger:
        table = ledger.table()
        assert table.root() == roots[0]
        if batched:
            assert table.append_many(inputs) == range(8)
        else:
            for n, entry in enumerate(inputs, start=1):
                assert table.append(entry) == n - 1
                assert table.root() == roots[n], f"root after {n} appends"
                assert table.prove_inclusion(n - 1).root == roots[n]
        _assert_ledger_matches_published_vectors(ledger)
        assert ledger.verify_integrity().ok

    with Ledger.open(tmp_path, {"logs": config}, keys=keys) as reopened:
        _assert_ledger_matches_published_vectors(reopened)
        assert [r.payload for r in reopened.table().records()] == inputs
        assert reopened.verify_integrity().ok
