"""The decision core on its own: events in, instructions out; no Redis, no clock.

Each test drives one ``InvocationState`` by hand, answering its questions the way a
driver would, and checks ``validate_state`` after every event.
"""

from __future__ import annotations

import pytest
from plan_dags import dag_of, plan_of

from dask_serverless.dag import DAG
from dask_serverless.layout import build_layout
from dask_serverless.plan import Optimizations
from dask_serverless.protocol import core
from dask_serverless.protocol.constants import FINAL_FLUSH_BYTES
from dask_serverless.protocol.view import RunView


def state_for(deps, assignment, worker="w0", floating=(), width=1, opt=None,
              inline_bytes=100, mb=1024, outputs=None):
    dag = dag_of(deps)
    if outputs is not None:
        dag = DAG(dag.tasks, outputs)
    plan = plan_of(assignment, floating=set(floating), mb=mb)
    if opt is not None:
        plan.optimizations = opt
    view = RunView.of(dag, plan, build_layout(dag, plan))
    return core.InvocationState(view, plan.workers[worker], width, inline_bytes=inline_bytes)


def step(state, event):
    out = state.handle(event)
    state.validate_state()
    asks = [i for i, inst in enumerate(out) if is_question(inst)]
    assert asks in ([], [len(out) - 1]), f"a question is not last: {out}"
    return out


def is_question(inst):
    return isinstance(inst, core.QUESTIONS) or (isinstance(inst, core.Execute)
                                                and inst.duplicate)


def drive_like_executor(state, begin, answer, size=8):
    """Perform instructions in ``worker.executor``'s order (one thread: a task's end is
    the answer to its ``Execute``; a question's answer is handled before the rest of its
    list) over the values a worker holds; a task must find every value it reads."""
    values = set(begin.inline)
    ran, written = set(), set()  # a value made here is fetched only once written
    todo = list(reversed(step(state, begin)))
    while todo:
        inst = todo.pop()
        event = None
        if isinstance(inst, core.Store) and inst.write:
            written.add(inst.task)
        if isinstance(inst, core.Fetch):
            lost = (set(inst.ids) & ran) - written
            assert not lost, f"{inst}: never stored"
            values.update(inst.ids)
        elif isinstance(inst, core.Release):
            values.difference_update(inst.ids)
        elif isinstance(inst, core.Execute):
            assert set(state.reads[inst.task]) <= values, (inst, values)
            values.add(inst.task)
            ran.add(inst.task)
            event = core.TaskDone(inst.task, size(inst.task) if callable(size) else size, 10)
        elif is_question(inst):
            event = answer(inst)
        if event is not None:
            todo.extend(reversed(step(state, event)))
    assert state.done


def kinds(instructions):
    return [type(i).__name__ for i in instructions]


def test_chain_runs_in_memory_and_releases_each_input_once_read():
    s = state_for([[], [0], [1]], ["w0"] * 3)
    assert step(s, core.Begin((0,))) == [core.Execute(0)]
    assert step(s, core.TaskDone(0, 8)) == [core.Execute(1)]
    assert step(s, core.TaskDone(1, 8)) == [core.Release((0,)), core.Execute(2)]
    out = step(s, core.TaskDone(2, 8, 30))  # the client's output: its sealed bytes are
    assert out == [core.Flush((2,)), core.DropBlobs((2,)),  # flushed, values dropped
                   core.Release((1, 2))]
    assert s.done and not s.memory


def test_remote_entry_is_invoked_with_its_small_input_inline():
    s = state_for([[], [0]], ["w0", "w1"])
    step(s, core.Begin((0,)))
    assert step(s, core.TaskDone(0, 8, 30)) == [core.Store(0, claims=(1,))]
    out = step(s, core.Published((), won=(True,)))  # every entry is claimed
    assert out == [core.Invoke("w1", (1,), (0,)), core.Release((0,))]
    assert s.done and 0 in s.inline_cache and 0 in s.blobs  # bytes kept to inline


def test_large_outputs_are_not_inlined_and_their_bytes_dropped():
    s = state_for([[], [0]], ["w0", "w1"], inline_bytes=10)
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    out = step(s, core.Published((), won=(True,)))
    assert out == [core.Invoke("w1", (1,), ()), core.DropBlobs((0,)), core.Release((0,))]
    assert not s.blobs


def test_floating_fan_in_is_claimed_and_runs_here_with_the_other_input_fetched():
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"})
    step(s, core.Begin((0,)))
    assert step(s, core.TaskDone(0, 8, 30)) == [core.Store(0, (2,))]
    assert step(s, core.Published((2,))) == [core.Claim((2,))]
    out = step(s, core.Claimed((True,)))
    assert out == [core.Fetch((1,), 2), core.Execute(2)]
    assert 0 in s.kept  # the fan-in reads it here: kept, not downloaded back
    out = step(s, core.TaskDone(2, 8, 30, fetched=((1, 30),)))
    assert kinds(out) == ["Flush", "DropBlobs", "Release"] and s.done
    assert s.memory == {0: 8, 1: 30}  # kept and fetched values stay while memory allows


def test_a_fan_in_lost_to_another_invocation_is_not_run():
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"})
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    step(s, core.Published((2,)))
    assert step(s, core.Claimed((False,))) == []
    assert s.done and s.fired == [] and list(s.inline_cache) == [0]


def test_incomplete_fan_in_is_only_registered():
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"})
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    assert step(s, core.Published((1,))) == []
    assert s.done


def test_threads_run_up_to_width_tasks_at_once():
    s = state_for([[], [], [], [0, 1, 2]], ["w0"] * 4, width=2)
    assert kinds(step(s, core.Begin((0, 1, 2)))) == ["Execute", "Execute"]
    assert len(s.running) == 2
    assert step(s, core.TaskDone(0, 8)) == [core.Execute(2)]
    assert step(s, core.TaskDone(1, 8)) == []
    assert step(s, core.TaskDone(2, 8)) == [core.Execute(3)]


def test_a_task_that_is_not_running_cannot_finish():
    s = state_for([[], [0]], ["w0", "w0"])
    step(s, core.Begin((0,)))
    with pytest.raises(core.InvalidEvent):
        s.handle(core.TaskDone(1, 8))
    with pytest.raises(core.InvalidEvent):
        s.handle(core.Claimed((True,)))  # answers no question


def test_final_outputs_are_flushed_in_batches():
    deps = [[] for _ in range(3)]
    s = state_for(deps, ["w0"] * 3)
    step(s, core.Begin((0, 1, 2)))
    half = FINAL_FLUSH_BYTES // 2  # start tasks run in order
    assert step(s, core.TaskDone(0, 8, half)) == [core.Release((0,)), core.Execute(1)]
    out = step(s, core.TaskDone(1, 8, half))
    assert out[:3] == [core.Flush((0, 1)), core.DropBlobs((0,)), core.DropBlobs((1,))]
    out = step(s, core.TaskDone(2, 8, 10))
    assert out == [core.Flush((2,)), core.DropBlobs((2,)), core.Release((2,))] and s.done


def test_kept_values_are_evicted_oldest_first_past_their_share_of_memory():
    # four roots on w0, each an input of its own floating fan-in: all kept, 128 MB worker
    deps = [[], [], [], [], [], [0, 4], [1, 4], [2, 4], [3, 4]]
    s = state_for(deps, ["w0"] * 4 + ["w1"] + ["f"] * 4, floating={"f"}, mb=128,
                  inline_bytes=0)
    step(s, core.Begin((0, 1, 2, 3)))
    budget = s.kept_budget
    for t in (0, 1, 2, 3):
        step(s, core.TaskDone(t, budget // 3, 10))
        step(s, core.Published((1,)))
    assert list(s.kept) == [1, 2, 3] and 0 not in s.memory  # the oldest (0) was dropped


def test_a_value_evicted_then_fetched_again_is_not_dropped_by_a_late_release():
    # 0 and 1 feed two floating fan-ins 2 and 3; keeping 1 evicts 0 (128 MB worker) while
    # 1's store is asked; both fan-ins then run here: 3 fetches 0 again and 2 reads it
    # after (a Release told behind the question used to drop it in between: KeyError)
    deps = [[], [], [0, 1], [0, 1]]
    s = state_for(deps, ["w0", "w0", "f", "f"], floating={"f"}, mb=128, inline_bytes=0)
    big = s.kept_budget * 2 // 3

    def answer(inst):
        if isinstance(inst, core.Store):
            n = 1 if inst.task == 0 else 2
            return core.Published((n,) * len(inst.fanins), won=(True,) * len(inst.claims))
        assert isinstance(inst, core.Claim)
        return core.Claimed((True,) * len(inst.entries))

    drive_like_executor(s, core.Begin((0, 1)), answer, size=lambda t: big)


def test_delayed_io_holds_then_releases_without_writing_when_the_others_are_in():
    opt = Optimizations(delay={0: 5.0})
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"}, opt=opt)
    step(s, core.Begin((0,)))
    out = step(s, core.TaskDone(0, 8, 30))
    assert out == [core.Hold(0, 2, 5.0), core.PollHeld((2,))]
    assert step(s, core.HeldStatus((0,))) == [core.PollHeld((2,), wait=True)]
    assert step(s, core.HeldStatus((1,))) == [core.Store(0, (2,), write=False)]
    assert step(s, core.Published((2,))) == [core.Claim((2,))]
    # the held bytes are no longer needed: the fan-in runs here, reading the value
    assert step(s, core.Claimed((True,))) == [core.DropBlobs((0,)), core.Fetch((1,), 2),
                                              core.Execute(2)]


def test_a_held_output_registered_unwritten_is_stored_when_another_runs_the_fan_in():
    opt = Optimizations(delay={0: 5.0})
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"}, opt=opt)
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    step(s, core.HeldStatus((1,)))
    step(s, core.Published((2,)))
    assert step(s, core.Claimed((False,))) == [core.Store(0)]  # its reader needs it stored
    assert kinds(step(s, core.Published(()))) == ["DropBlobs"] and s.done


@pytest.mark.parametrize("retry", [False, True])
def test_a_held_output_evicted_from_kept_values_stays_for_its_fan_in_here(retry):
    # 1's output is held for fan-in 5 while 0, 2 and 3 are kept for their fan-ins and
    # evict it (128 MB worker); when 5's other input lands, 1 is registered unwritten
    # and must still be here when 5 runs (it was released before the claim: data lost)
    deps = [[], [], [], [], [], [1, 4], [0, 4], [2, 4], [3, 4]]
    assignment = ["w0"] * 4 + ["w1"] + ["f"] * 4
    s = state_for(deps, assignment, floating={"f"}, mb=128, inline_bytes=0,
                  opt=Optimizations(delay={1: 5.0}))
    big = s.kept_budget // 3
    state = {"polls": 0}

    def answer(inst):
        if isinstance(inst, core.Store):
            return core.Published((1,) * len(inst.fanins) if inst.write else (2,))
        if isinstance(inst, core.PollHeld):
            state["polls"] += 1
            return core.HeldStatus((1,))  # 5 is in: 1 completes the set
        if isinstance(inst, core.CheckStored):  # a retry: nothing of it is stored
            return core.Stored(frozenset())
        assert isinstance(inst, core.Claim)
        return core.Claimed((True,) * len(inst.entries))

    drive_like_executor(s, core.Begin((1, 0, 2, 3), recheck=retry), answer,
                        size=lambda t: big)
    assert state["polls"] == 1 and s.tasks_done == 5


def test_delayed_io_writes_the_output_when_its_bound_passes():
    opt = Optimizations(delay={0: 0.2})
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"}, opt=opt)
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    out = step(s, core.HeldStatus((0,), expired=frozenset({(0, 2)})))
    assert out == [core.Store(0, (2,), write=True)]
    assert step(s, core.Published((1,))) == [core.DropBlobs((0,))]
    assert s.done and 0 in s.kept  # its fan-in may still come here


def test_pre_load_fetches_inputs_as_they_land():
    opt = Optimizations(delay={0: 5.0}, preload=True)
    s = state_for([[], [], [], [0, 1, 2]], ["w0", "w1", "w2", "w3"], floating={"w3"},
                  opt=opt)
    step(s, core.Begin((0,)))
    assert step(s, core.TaskDone(0, 8, 30))[-1] == core.PollHeld((3,), members=True)
    out = step(s, core.HeldStatus((1,), members=(frozenset({1}),)))
    assert out == [core.Fetch((1,), 3, "preload"), core.PollHeld((3,), True, wait=True)]
    out = step(s, core.HeldStatus((2,), members=(frozenset({1, 2}),)))
    assert out == [core.Fetch((2,), 3, "preload"), core.Store(0, (3,), write=False)]
    step(s, core.Published((3,)))
    out = step(s, core.Claimed((True,)))
    assert out[-1] == core.Execute(3) and not any(isinstance(i, core.Fetch) for i in out)


def test_task_dup_runs_a_missing_input_and_claims_the_fan_in():
    opt = Optimizations(duplicate={2: (1,)})
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"}, opt=opt)
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    assert step(s, core.Published((1,))) == [core.QueryDup(2, (1,), ((),))]
    out = step(s, core.DupStatus(frozenset({0}), frozenset({1})))
    assert out == [core.Execute(1, duplicate=True)]
    assert step(s, core.TaskDone(1, 8, 30)) == [core.Store(1, (2,))]
    assert step(s, core.Published((2,))) == [core.DropBlobs((1,)), core.Claim((2,))]
    out = step(s, core.Claimed((True,)))
    assert out[-1] == core.Execute(2) and s.duplicates == 1


def test_task_dup_skips_a_candidate_already_in_the_set_or_failing():
    opt = Optimizations(duplicate={2: (1,)})
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"}, opt=opt)
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    step(s, core.Published((1,)))
    assert step(s, core.DupStatus(frozenset({0, 1}), frozenset())) == []
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"], floating={"w2"}, opt=opt)
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    step(s, core.Published((1,)))
    step(s, core.DupStatus(frozenset({0}), frozenset({1})))
    assert step(s, core.TaskFailed(1)) == [] and s.done


def test_task_dup_leaves_a_candidate_running_here_to_finish_and_store_itself():
    """The fan-in's missing input runs on this invocation's other thread: duplicating it
    would run it twice here and lose track of the first run (found by hypothesis)."""
    opt = Optimizations(duplicate={2: (1,)})
    s = state_for([[], [], [0, 1]], ["w0", "w0", "w2"], floating={"w2"}, opt=opt, width=2)
    assert step(s, core.Begin((0, 1))) == [core.Execute(0), core.Execute(1)]
    step(s, core.TaskDone(0, 8, 30))
    assert step(s, core.Published((1,))) == [core.QueryDup(2, (1,), ((),))]
    assert step(s, core.DupStatus(frozenset({0}), frozenset({1}))) == []
    assert step(s, core.TaskDone(1, 8, 30))[0] == core.Store(1, (2,))


def test_task_dup_leaves_a_candidate_queued_here_to_run_once():
    """The fan-in's missing input is next in this invocation's own queue: duplicating it
    ran it twice, and its second store claimed the fan-in again (found by hypothesis)."""
    opt = Optimizations(duplicate={2: (1,)})
    s = state_for([[], [0], [0, 1]], ["w0", "w0", "w2"], floating={"w2"}, opt=opt)
    assert step(s, core.Begin((0,))) == [core.Execute(0)]
    step(s, core.TaskDone(0, 8, 30))
    assert step(s, core.Published((1,)))[-1] == core.QueryDup(2, (1,), ((),))
    out = step(s, core.DupStatus(frozenset({0}), frozenset({1})))
    assert core.Execute(1, duplicate=True) not in out and core.Execute(1) in out
    assert step(s, core.TaskDone(1, 8, 30))[-1] == core.Store(1, (2,))
    assert step(s, core.Published((2,)))[-1] == core.Claim((2,))
    assert s.duplicates == 0


def test_streamed_output_fires_its_consumer_before_the_chunks_are_written():
    opt = Optimizations(stream={0: 10})
    s = state_for([[], [0]], ["w0", "w1"], opt=opt, inline_bytes=0)
    step(s, core.Begin((0,)))
    assert step(s, core.TaskDone(0, 8, 30)) == [core.Store(0, stream_chunk=10, claims=(1,))]
    out = step(s, core.Published((), won=(True,)))
    assert out[:2] == [core.Invoke("w1", (1,), ()), core.WriteStream(0, False)]


def test_inputs_that_came_inline_are_not_fetched():
    s = state_for([[], [], [0, 1]], ["w0", "w1", "w2"])
    out = step(s, core.Begin((2,), inline=(0,)))
    assert out == [core.Fetch((1,), 2), core.Execute(2)]


def test_an_entry_claimed_by_another_attempt_is_not_fired_again():
    s = state_for([[], [0]], ["w0", "w1"])
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    out = step(s, core.Published((), won=(False,)))
    assert not any(isinstance(i, core.Invoke) for i in out) and s.fired == []


def test_a_write_lost_to_another_attempt_continues_with_the_stored_value():
    s = state_for([[], [0], [0]], ["w0", "w1", "w0"])  # 1 reads 0 elsewhere, 2 here
    step(s, core.Begin((0,)))
    step(s, core.TaskDone(0, 8, 30))
    out = step(s, core.Published((), won=(True,), written=False))
    # the stored value replaces this attempt's before the local dependent runs, and this
    # attempt's bytes are not sent inline
    assert out[0] == core.Fetch((0,), 0)
    assert core.Invoke("w1", (1,), ()) in out and out[-1] == core.Execute(2)
    assert out.index(core.Fetch((0,), 0)) < out.index(core.Execute(2))


def test_a_final_output_read_here_is_stored_at_once_not_batched():
    s = state_for([[], [0]], ["w0", "w0"], outputs=[0, 1])
    step(s, core.Begin((0,)))
    assert step(s, core.TaskDone(0, 8, 30)) == [core.Store(0, final=True)]


def test_a_retry_runs_only_what_is_not_stored_and_publishes_the_rest_again():
    # 0 -> 1 -> 2 on w0; 1 also feeds 3 on w1; 2 is the client's
    s = state_for([[], [0], [1], [1]], ["w0", "w0", "w0", "w1"])
    out = step(s, core.Begin((0,), recheck=True))
    assert out == [core.CheckStored((1, 2))]
    out = step(s, core.Stored(frozenset({1})))
    # 0 is not needed (1 is stored); 1 is registered and claimed again, 2 runs on 1's
    # stored value
    assert out == [core.Store(1, write=False, claims=(3,))]
    out = step(s, core.Published((), won=(True,)))
    assert out == [core.Invoke("w1", (3,), ()), core.Fetch((1,), 2), core.Execute(2)]
    assert s.skipped == {0, 1}
    out = step(s, core.TaskDone(2, 8, 30))
    assert core.Flush((2,)) in out and s.done


def test_a_retry_with_nothing_stored_runs_everything():
    s = state_for([[], [0]], ["w0", "w0"])
    assert step(s, core.Begin((0,), recheck=True)) == [core.CheckStored((1,))]
    assert step(s, core.Stored(frozenset())) == [core.Execute(0)]
