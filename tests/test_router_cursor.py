"""The multi-shard cursor's format: what it binds to, and that anything else is refused."""

import base64
import hashlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quipu.core.errors import BadInput
from quipu.core.query import Cursor
from quipu.router.cursor import INVALID, MultiCursor, Position

SHARDS = frozenset({"shard-0000", "shard-0001", "shard-0002"})
QHASH = "aaaaaaaaaaaaaaaa"

positions = st.one_of(
    st.none(),
    st.builds(Position),
    st.builds(lambda snap, skip: Position(snap, None, None, skip), st.integers(0, 2**40), st.integers(0, 99)),
    st.builds(
        Position, st.integers(0, 2**40), st.integers(0, 2**62), st.integers(0, 2**40), st.integers(0, 9)
    ),
)


def cursor(**positions: Position | None) -> MultiCursor:
    return MultiCursor("desc", QHASH, positions or {"shard-0000": Position(5, 10, 4), "shard-0001": None})


@given(st.dictionaries(st.sampled_from(sorted(SHARDS)), positions), st.sampled_from(["desc", "asc"]))
def test_cursor_round_trips(held, order):
    """Also checks the checksum is computed as docs/format.md says (see the forged case)."""
    mc = MultiCursor(order, QHASH, held)
    assert MultiCursor.decode(mc.encode(), order, QHASH, SHARDS) == mc


def test_cursor_from_another_query_is_refused():
    with pytest.raises(BadInput, match="not valid for this query"):
        MultiCursor.decode(cursor().encode(), "desc", "b" * 16, SHARDS)


def test_cursor_in_the_other_order_is_refused():
    with pytest.raises(BadInput, match="not valid for this query"):
        MultiCursor.decode(cursor().encode(), "asc", QHASH, SHARDS)


def test_cursor_naming_a_shard_the_read_does_not_cover_is_refused():
    with pytest.raises(BadInput, match="does not cover"):
        MultiCursor.decode(cursor().encode(), "desc", QHASH, frozenset({"shard-0001"}))


def test_a_shards_own_cursor_is_not_a_multi_shard_cursor():
    shard_cursor = Cursor("desc", 10, 4, 5, QHASH).encode()
    with pytest.raises(BadInput, match="not valid for this query"):
        MultiCursor.decode(shard_cursor, "desc", QHASH, SHARDS)


def _edit(text: str, change) -> str:
    body = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    change(body)
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b["p"]["shard-0000"].__setitem__(1, 11),  # a moved position
        lambda b: b["p"].__setitem__("shard-0001", [5, None, None, 0]),  # a done shard revived
        lambda b: b["p"].pop("shard-0001"),
        lambda b: b.__setitem__("mc", 2),
        lambda b: b.pop("c"),
    ],
    ids=["moved-position", "revived-shard", "dropped-shard", "unknown-version", "no-checksum"],
)
def test_edited_cursor_is_refused(change):
    with pytest.raises(BadInput) as err:
        MultiCursor.decode(_edit(cursor().encode(), change), "desc", QHASH, SHARDS)
    assert str(err.value) == INVALID


@given(st.text(max_size=60))
def test_garbage_is_refused_with_one_message(text):
    with pytest.raises(BadInput) as err:
        MultiCursor.decode(text, "desc", QHASH, SHARDS)
    assert str(err.value) == INVALID


def _forged(position: list) -> str:
    """A cursor built by hand as docs/format.md describes it, checksum included."""
    body = {"mc": 1, "o": "desc", "q": QHASH, "p": {"shard-0000": position}}
    body["c"] = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


def test_malformed_position_is_refused_even_with_a_fresh_checksum():
    """A position that does not hold together (a ts without its leaf) is refused, also when
    whoever forged it recomputed the checksum as documented."""
    good = MultiCursor.decode(_forged([5, 10, 4, 0]), "desc", QHASH, SHARDS)
    assert good.positions == {"shard-0000": Position(5, 10, 4, 0)}
    for bad in ([5, 10, None, 0], [None, 10, 4, 0], [5, 10, 4, -1], [5, True, 4, 0], [5, 10, 4]):
        with pytest.raises(BadInput):
            MultiCursor.decode(_forged(bad), "desc", QHASH, SHARDS)


def test_start_position_asks_for_the_whole_pinned_snapshot():
    for order in ("desc", "asc"):
        text = Position(7).shard_cursor(order, QHASH)
        shard_cursor = Cursor.decode(text, order, QHASH)
        assert shard_cursor.snap == 7
        assert (shard_cursor.ts, shard_cursor.leaf) == ((1 << 63, 0) if order == "desc" else (-1, 0))
    assert Position().shard_cursor("desc", QHASH) is None
