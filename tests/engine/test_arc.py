"""The byte-bounded ARC cache: bounds, freshness, scan resistance, accounting."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartridgefs.engine.arc import _MIN_GHOSTS, ArcCache


def check_invariants(cache: ArcCache) -> None:
    """The ARC bounds, in bytes, plus exact byte accounting."""
    c = cache.max_bytes
    t1 = sum(size for _, size in cache._t1.values())
    t2 = sum(size for _, size in cache._t2.values())
    b1, b2 = sum(cache._b1.values()), sum(cache._b2.values())
    assert (t1, t2, b1, b2) == (cache._t1_bytes, cache._t2_bytes, cache._b1_bytes, cache._b2_bytes)
    assert cache.bytes_used == t1 + t2 <= c
    assert t1 + b1 <= c
    assert t1 + t2 + b1 + b2 <= 2 * c
    assert 0 <= cache._p <= c
    assert len(cache) == len(cache._t1) + len(cache._t2)
    most = max(len(cache), _MIN_GHOSTS)
    assert len(cache._b1) <= most and len(cache._b2) <= most
    lists = [set(cache._t1), set(cache._t2), set(cache._b1), set(cache._b2)]
    assert sum(map(len, lists)) == len(set().union(*lists))  # each key in one list at most


def test_basic_accounting():
    cache = ArcCache(100)
    assert cache.get("a") is None
    cache.put("a", "A", 10)
    cache.put("b", "B", 20)
    assert (cache.get("a"), cache.get("a"), cache.get("b")) == ("A", "A", "B")
    assert (cache.hits, cache.misses) == (3, 1)
    assert (len(cache), cache.bytes_used) == (2, 30)
    cache.put("a", "A2", 15)  # replaces the old value
    assert (cache.get("a"), cache.bytes_used) == ("A2", 35)
    cache.discard("a")
    cache.discard("missing")
    assert (cache.get("a"), len(cache), cache.bytes_used) == (None, 1, 20)
    cache.clear()
    assert (len(cache), cache.bytes_used, cache.get("b")) == (0, 0, None)
    assert (cache.hits, cache.misses) == (4, 3)
    with pytest.raises(ValueError):
        cache.put("x", "X", -1)
    with pytest.raises(ValueError):
        ArcCache(-1)


def test_too_large_values_are_not_cached():
    cache = ArcCache(100)
    cache.put("k", "small", 10)
    cache.put("other", "o", 50)
    cache.put("k", "huge", 101)
    assert cache.get("k") is None  # and the stale small value is gone too
    assert cache.get("other") == "o"
    check_invariants(cache)
    empty = ArcCache(0)
    empty.put("k", "v", 1)
    assert len(empty) == 0
    empty.put("z", "v", 0)  # size 0 fits even a zero budget
    assert empty.get("z") == "v"


ops = st.lists(
    st.tuples(
        st.sampled_from(["get", "get", "put", "put", "put", "discard"]),
        st.integers(0, 40),
        st.integers(0, 60),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 200), ops)
def test_random_workload_keeps_bounds_and_freshness(max_bytes, workload):
    cache = ArcCache(max_bytes)
    latest: dict[int, tuple[int, int]] = {}
    for step, (op, key, size) in enumerate(workload):
        if op == "put":
            cache.put(key, (step, size), size)
            latest[key] = (step, size)
        elif op == "get":
            value = cache.get(key)
            # Never a stale value: only the latest one put, if any.
            assert value is None or value == latest.get(key)
        else:
            cache.discard(key)
            latest.pop(key, None)
        check_invariants(cache)
    assert cache.hits + cache.misses == sum(op == "get" for op, _, _ in workload)


def test_scan_does_not_flush_the_working_set():
    cache = ArcCache(100 * 4096)
    hot = [("hot", i) for i in range(50)]
    for _ in range(2):
        for key in hot:
            if cache.get(key) is None:
                cache.put(key, key, 4096)
    for i in range(10_000):  # a one-pass scan, e.g. reading one big file
        key = ("scan", i)
        assert cache.get(key) is None
        cache.put(key, key, 4096)
    survivors = sum(cache.get(key) is not None for key in hot)
    assert survivors == len(hot)
    check_invariants(cache)


def test_without_rereferences_the_newest_entries_stay():
    """With no re-references ARC behaves like LRU: the newest entries are the cached ones."""
    cache = ArcCache(10)
    for i in range(100):
        cache.put(i, i, 1)
    assert sorted(k for k in range(100) if cache.get(k) is not None) == list(range(90, 100))


def test_ghost_hits_adapt_the_target():
    cache = ArcCache(10)
    for i in range(5):
        cache.put(i, i, 1)
        cache.get(i)  # 0..4 are "frequent" (T2)
    for i in range(5, 15):
        cache.put(i, i, 1)  # T1 has room for 5: 5..9 go to the ghost list B1
    assert (cache._p, list(cache._b1)) == (0, [5, 6, 7, 8, 9])
    cache.put(7, 7, 1)  # a B1 ghost hit: recency deserved more room
    assert cache._p > 0
    assert 7 in cache._t2 and cache.get(7) == 7
    check_invariants(cache)
    while not cache._b2:  # more B1 hits grow T1's target until T2 entries get evicted
        ghost = next(iter(cache._b1))
        cache.put(ghost, ghost, 1)
    p = cache._p
    cache.put(next(iter(cache._b2)), "again", 1)  # a B2 ghost hit: frequency deserved more
    assert cache._p < p
    check_invariants(cache)


def test_thread_safety():
    cache = ArcCache(64 * 100)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(5000):
                key = rng.randrange(300)
                if rng.random() < 0.5:
                    value = cache.get(key)
                    assert value is None or value[0] == key
                else:
                    cache.put(key, (key, seed), rng.randrange(1, 100))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check_invariants(cache)
