"""Paging stays exact while rows arrive, and reads on other threads never stop the writer."""

import tempfile
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.query_spec import LogQuery, TargetFilter
from quipu.core.schema import default_actor_type, default_target_type
from quipu.core.values import Content, Value

T0 = 1_700_000_000_000_000


def event(ts: int, doc: int) -> AuditEvent:
    target = TargetSpec("default_target", EntityInput(f"d{doc}").text("name", f"doc{doc}"))
    return AuditEvent(
        "default_actor",
        EntityInput("a"),
        "PUT",
        "/x",
        Content("Text", "x"),
        targets=(target,),
        occurred_at=ts,
    )


def open_store(root: str) -> AuditStore:
    store = AuditStore.open(StoreConfig(root, max_segment_bytes=4096))
    store.define_type(default_actor_type())
    store.define_type(default_target_type())
    return store


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 3)), min_size=1, max_size=120),
    steps=st.lists(
        st.lists(st.tuples(st.integers(0, 500), st.integers(0, 3)), max_size=8), min_size=1, max_size=40
    ),
    limit=st.integers(1, 15),
    order=st.sampled_from(["desc", "asc"]),
    by_target=st.booleans(),
)
def test_pages_return_the_first_page_snapshot_exactly_while_rows_are_appended(
    initial, steps, limit, order, by_target
):
    """Every row of the snapshot the first page saw, once, in order: none of the rows
    appended between page reads (older or newer) leaks in, none goes missing."""
    with tempfile.TemporaryDirectory() as root, open_store(root) as store:
        for ts, doc in initial:
            store.append(event(T0 + ts, doc))
        targets = (TargetFilter.exact("default_target", "name", Value.text_("doc1")),) if by_target else ()
        q = LogQuery(limit=limit, order=order, targets=targets)
        expected = [
            (v["occurred_at"], v["log_id"])
            for v in store.query(LogQuery(limit=10_000, order=order, targets=targets)).logs
        ]
        seen, page, step = [], store.query(q), 0
        while True:
            seen += [(v["occurred_at"], v["log_id"]) for v in page.logs]
            if page.next_cursor is None:
                break
            for ts, doc in steps[step % len(steps)]:
                store.append(event(T0 + ts, doc))
            step += 1
            page = store.query(LogQuery(limit=limit, order=order, targets=targets, cursor=page.next_cursor))
        assert seen == expected
        assert len(set(seen)) == len(seen)


def test_queries_on_other_threads_never_block_appends(tmp_path):
    with open_store(str(tmp_path)) as store:
        for i in range(200):
            store.append(event(T0 + i, i % 4))
        stop, errors, pages = threading.Event(), [], [0]

        def reader() -> None:
            try:
                while not stop.is_set():
                    page = store.query(LogQuery(limit=50))
                    times = [v["occurred_at"] for v in page.logs]
                    assert times == sorted(times, reverse=True)
                    store.count(
                        LogQuery(targets=(TargetFilter.exact("default_target", "name", Value.text_("doc2")),))
                    )
                    pages[0] += 1
            except Exception as err:  # reported to the main thread below
                errors.append(err)

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        ids = [store.append(event(T0 + 1000 + i, i % 4)) for i in range(1500)]
        stop.set()
        for t in readers:
            t.join()
        assert not errors, errors
        assert pages[0] > 0
        assert len(set(ids)) == 1500
        assert store.count(LogQuery()) == 1700
