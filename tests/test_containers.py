"""The container policy the local pool and the simulator share (no processes, no clock)."""

from __future__ import annotations

from dask_serverless.containers import ContainerPolicy


def test_warm_reuse_takes_the_most_recently_idle_container_of_the_size():
    p = ContainerPolicy(max_containers=4, keep_alive=10.0)
    a = p.place(1024, "a", 0.0)
    b = p.place(1024, "b", 0.0)
    assert a.cold and b.cold and a.slot is not b.slot
    p.finished(a.slot, 1.0)
    p.finished(b.slot, 2.0)
    c = p.place(1024, "c", 3.0)
    assert not c.cold and c.slot is b.slot
    assert p.place(2048, "d", 3.0).cold  # another size never runs warm here


def test_at_the_cap_the_longest_idle_other_size_is_retired_else_work_queues():
    p = ContainerPolicy(max_containers=2, keep_alive=10.0)
    a = p.place(1024, "a", 0.0)
    b = p.place(2048, "b", 0.0)
    assert p.place(512, "c", 0.5).slot is None  # both busy: queued
    assert p.counts()["pending"] == 1
    # a idles: the queued 512 MB work needs room, a (idle) is retired for it
    nxt = p.finished(a.slot, 1.0)
    assert nxt is not None and nxt.work == "c" and nxt.cold and nxt.retired == [a.slot]
    # b idles; new 1024 work retires b (longest idle of another size) at the cap
    p.finished(b.slot, 2.0)
    d = p.place(1024, "d", 3.0)
    assert d.cold and d.retired == [b.slot]


def test_a_finished_container_takes_queued_work_of_its_size_first():
    p = ContainerPolicy(max_containers=1, keep_alive=10.0)
    a = p.place(1024, "a", 0.0)
    p.place(2048, "x", 0.1)
    p.place(1024, "y", 0.2)
    nxt = p.finished(a.slot, 1.0)
    assert nxt.work == "y" and nxt.slot is a.slot and not nxt.cold


def test_idle_containers_expire_after_the_keep_alive_and_pre_warmed_ones_serve_work():
    p = ContainerPolicy(max_containers=0, keep_alive=5.0)
    slot = p.start_idle(1024)
    assert p.ready(slot, 1.0) is None and p.idle_by_memory() == {1024: 1}
    assert not p.place(1024, "a", 2.0).cold  # the warm-up serves it
    p.finished(slot, 3.0)
    placed = p.place(1024, "b", 9.0)  # idle since 3.0: expired at 8.0
    assert placed.cold and placed.retired == [slot]


def test_a_dead_container_makes_room_for_queued_work():
    p = ContainerPolicy(max_containers=1, keep_alive=5.0)
    a = p.place(1024, "a", 0.0)
    p.place(1024, "b", 0.1)
    nxt = p.died(a.slot, 1.0)
    assert nxt is not None and nxt.work == "b" and nxt.cold
    assert p.drop_queued(lambda w: True) == []
