"""The simulator on small plans whose timelines are computed by hand.

Numbers: exec times per function, cold 0.5 s, warm 0.05 s, a Redis round trip 0.01 s and
1000 bytes/s, so moving 10 bytes costs 0.02 s and 1000 bytes 1.01 s.
"""

from __future__ import annotations

import dask
import pytest
from plan_dags import dag_of, plan_of

from dask_serverless.costmodel import LAMBDA_PRICE_GB_S, LAMBDA_PRICE_REQUEST, FixedCostModel
from dask_serverless.plan import Optimizations, Warmup
from dask_serverless.planners import WukongPlanner
from dask_serverless.protocol.constants import HOLD_POLL_S
from dask_serverless.simulator import Faults, Recovery, Simulator, simulate


def model(exec_s, out_bytes=10) -> FixedCostModel:
    return FixedCostModel(exec_s=exec_s, out_bytes=out_bytes, cold_s=0.5, warm_s=0.05,
                          latency_s=0.01, bandwidth=1000.0)


def test_chain_on_one_worker():
    dag = dag_of([[], [0], [1]])
    plan = WukongPlanner().plan(dag, parallelism=4, memory_mb=2048)
    r = simulate(dag, plan, model(1.0, 0))
    # cold start, three tasks, final flush (0.01) and client download (0.01)
    assert r.makespan == pytest.approx(0.5 + 3 + 0.01 + 0.01)
    assert (len(r.invocations), r.cold_starts, r.bytes_moved) == (1, 1, 0)
    assert r.gb_seconds == pytest.approx(3.01 * 2)
    assert r.cost == pytest.approx(6.02 * LAMBDA_PRICE_GB_S + LAMBDA_PRICE_REQUEST)
    assert r.critical_path == [0, 1, 2]


def test_the_client_downloads_each_output_as_it_lands():
    """Two outputs of 1000 bytes stored at 2.51 s and 4.51 s: the first is downloaded
    while the second computes (done 3.52 s), so the run ends at 4.51 + 1.01 s, not after
    downloading both at the end (6.52 s)."""
    dag = dag_of([[], []], {0: "early", 1: "late"})
    r = simulate(dag, plan_of(["w0", "w1"]), model({"early": 1.0, "late": 3.0}, 1000))
    assert r.makespan == pytest.approx(0.5 + 3 + 1.01 + 1.01)


def test_threads_overlap_tasks_that_wait_and_share_the_vcpus_of_those_that_compute():
    """Four independent 1 s tasks and a sink, all on one worker of 3 threads."""
    dag = dag_of([[], [], [], [], [0, 1, 2, 3]])
    plan = plan_of(["w0"] * 5, threads=3)
    waiting = FixedCostModel(exec_s=1.0, out_bytes=0, cold_s=0.5, warm_s=0.05,
                             latency_s=0.01, bandwidth=1000.0, cpu_fraction=0.0)
    # three roots at once (0.5 -> 1.5), the fourth 1.5 -> 2.5, the sink 2.5 -> 3.5,
    # final flush and client download 0.01 each
    r = simulate(dag, plan, waiting)
    assert r.makespan == pytest.approx(3.52)
    assert sorted(r.task_start[:4]) == pytest.approx([0.5, 0.5, 0.5, 1.5])
    assert r.gb_seconds == pytest.approx(3.01)  # one invocation of 1 GB
    # CPU-bound tasks on a 1024 MB worker (one vCPU): threads do not help
    computing = FixedCostModel(exec_s=1.0, out_bytes=0, cold_s=0.5, warm_s=0.05,
                               latency_s=0.01, bandwidth=1000.0, cpu_fraction=1.0)
    assert simulate(dag, plan, computing).makespan == pytest.approx(0.5 + 5 + 0.02)
    # one thread: the hand-computed sequential timeline
    assert simulate(dag, plan_of(["w0"] * 5), waiting).makespan == pytest.approx(5.52)
    # a 3008 MB worker has two vCPUs: two CPU-bound tasks at a time
    assert simulate(dag, plan_of(["w0"] * 5, mb=3008, threads=3), computing).makespan \
        == pytest.approx(0.5 + 2 + 1 + 0.02)


def test_transfers_share_the_cores_of_a_machine():
    """Two workers flush a 1000-byte output (1 s of bytes). On Lambda each has its own
    network: both land at 2.51, the client reads 2000 bytes by 4.52. Locally transfers
    (pickling, sealing, Redis copying) need the shared cores: on two they still overlap,
    on one the second waits."""
    from dask_serverless.capacity import Capacity
    from dask_serverless.simulator import _Calendar

    dag = dag_of([[], []])
    plan = plan_of(["w0", "w1"])
    kw = dict(exec_s=1.0, out_bytes=1000, cold_s=0.5, warm_s=0.05, latency_s=0.01,
              bandwidth=1000.0, cpu_fraction=0.0)
    assert simulate(dag, plan, FixedCostModel(**kw)).makespan == pytest.approx(4.52)
    two = simulate(dag, plan, FixedCostModel(**kw, capacity=Capacity(cores=2)))
    assert two.makespan == pytest.approx(4.52)
    # one core: cold starts 0 -> 0.5 and 0.5 -> 1.0, tasks end 1.5 and 2.0; uploads
    # 1.5 -> 2.5 (+0.01) and 2.5 -> 3.5 (+0.01); the client reads 3.51 -> 5.51 (+0.01)
    one = simulate(dag, plan, FixedCostModel(**kw, capacity=Capacity(cores=1)))
    assert one.makespan == pytest.approx(5.52)
    # the calendar gives each transfer the first gap long enough, whatever the order
    c = _Calendar()
    assert [c.book(5.0, 1.0), c.book(3.0, 1.0), c.book(3.5, 1.0), c.book(0.0, 2.0)] == \
        [5.0, 3.0, 4.0, 0.0]  # 3.5 finds [3, 4) busy and fits the gap [4, 5) exactly
    assert (c.starts, c.ends) == ([0.0, 3.0], [2.0, 6.0])  # touching intervals merge


def test_floating_fan_in_runs_where_the_last_input_finished():
    dag = dag_of([[], [], [0, 1]])
    plan = plan_of(["w0", "w1", "w2"], floating={"w2"})
    r = simulate(dag, plan, model(1.0))
    # roots end 1.5, publish 1.52; the second registration completes the set: claim 1.53,
    # download the other input 1.55, run 2.55, flush 2.57, client download 2.59
    assert r.makespan == pytest.approx(2.59)
    assert r.task_invocation[2] == r.task_invocation[1]
    assert [(x.dep, x.source) for x in r.transfers] == [(0, "redis")]
    assert len(r.invocations) == 2


def test_pinned_entry_is_invoked_and_gets_small_inputs_inline():
    dag = dag_of([[], [0]])
    r = simulate(dag, plan_of(["w0", "w1"]), model(1.0))
    # w0: 0.5 + 1 + publish 0.02 -> invoke w1 at 1.52 (w0 still busy: cold) -> 2.02,
    # input inline, run 3.02, flush 3.04, client 3.06
    assert r.makespan == pytest.approx(3.06)
    assert [i.cold for i in r.invocations] == [True, True]
    assert [(x.dep, x.source) for x in r.transfers] == [(0, "inline")]


def test_keep_alive_makes_a_later_invocation_warm_and_pre_warm_does_too():
    dag = dag_of([[], [0], [1]])
    plan = plan_of(["w0", "w1", "w2"])
    r = simulate(dag, plan, model(1.0))
    # w2 is invoked at 3.04 when w0's container (free since 1.52) is idle: warm
    assert [i.cold for i in r.invocations] == [True, True, False]
    assert r.makespan == pytest.approx(3.04 + 0.05 + 1 + 0.02 + 0.02)
    plan.optimizations = Optimizations(prewarm=[Warmup(1.0, 1024, 1)])
    r = simulate(dag, plan, model(1.0))
    # the warm-up's container is idle from 1.5, so w1 (invoked 1.52) starts warm
    assert [i.cold for i in r.invocations] == [True, False, False]
    assert r.makespan == pytest.approx(1.52 + 0.05 + 1 + 0.02 + 0.05 + 1 + 0.02 + 0.02)
    assert r.requests == 4 and r.warmups == 1


def test_delayed_io_holds_the_large_output_and_runs_the_fan_in():
    names = {0: "big", 1: "slow", 2: "join"}
    dag = dag_of([[], [], [0, 1]], names)
    cm = model({"big": 1.0, "slow": 2.0, "join": 1.0}, {"big": 1000, "*": 10})
    plan = plan_of(["w0", "w1", "w2"], floating={"w2"})
    plain = simulate(dag, plan, cm)
    # big uploads 1000 B (1.01 s) at 2.51; slow registers at 2.52, claims 2.53, downloads
    # big (1.01) 3.54, runs 4.54, flush 4.56, client 4.58
    assert plain.makespan == pytest.approx(4.58)
    plan.optimizations = Optimizations(delay={0: 5.0})
    held = simulate(dag, plan, cm)
    # big holds from 1.5; slow registers at 2.52 and wakes it (half a poll later); it adds
    # itself 0.01, claims 0.01, downloads slow's 10 B 0.02, runs 1, flush, client
    start = 2.52 + HOLD_POLL_S / 2
    assert held.makespan == pytest.approx(start + 0.01 + 0.01 + 0.02 + 1 + 0.02 + 0.02)
    assert held.task_invocation[2] == held.task_invocation[0]
    assert held.bytes_uploaded == 10 + 10  # big's 1000 bytes never leave its worker


def test_delayed_io_bound_expires_and_uploads():
    dag = dag_of([[], [], [0, 1]], {0: "big", 1: "slow", 2: "join"})
    cm = model({"big": 1.0, "slow": 2.0, "join": 1.0}, {"big": 1000, "*": 10})
    plan = plan_of(["w0", "w1", "w2"], floating={"w2"})
    plan.optimizations = Optimizations(delay={0: 0.2})
    r = simulate(dag, plan, cm)
    # big waits until 1.7, then uploads (1.01) and registers at 2.71, after slow (2.52):
    # big's worker completes the set, claims 2.72, downloads slow's 10 B 2.74, runs 3.74
    assert r.makespan == pytest.approx(2.72 + 0.02 + 1 + 0.02 + 0.02)
    assert r.task_invocation[2] == r.task_invocation[0]


def test_pre_load_downloads_inputs_while_holding():
    names = {0: "first", 1: "mid", 2: "last", 3: "join"}
    cm = model({"first": 0.1, "mid": 1.0, "last": 2.5, "join": 0.1},
               {"mid": 1000, "*": 10})
    dag = dag_of([[], [], [], [0, 1, 2]], names)
    plan = plan_of(["w0", "w1", "w2", "w3"], floating={"w3"})
    plan.optimizations = Optimizations(delay={0: 10.0})
    r = simulate(dag, plan, cm)
    wake = 3.02 + HOLD_POLL_S / 2
    # without pre-load both inputs are downloaded after the claim (1.02 s)
    assert r.makespan == pytest.approx(wake + 0.01 + 0.01 + 1.02 + 0.1 + 0.02 + 0.02)
    plan.optimizations = Optimizations(delay={0: 10.0}, preload=True)
    r = simulate(dag, plan, cm)
    # as the executor polls: mid's output lands at 2.51, the holder's poll finds it half
    # a poll later and downloads it (1.01) by 3.5225; last's (stored 3.02) is found by the
    # next poll and loaded by 3.5425; the holder registers (0.01), claims (0.01), runs
    # the join (0.1), flushes, the client reads
    loaded = 2.51 + HOLD_POLL_S / 2 + 1.01 + 0.02
    assert r.makespan == pytest.approx(loaded + 0.01 + 0.01 + 0.1 + 0.02 + 0.02)
    assert sorted(x.source for x in r.transfers) == ["preload", "preload"]


def test_task_dup_runs_a_late_cheap_input_and_the_fan_in_once():
    dag = dag_of([[], [], [0, 1]])
    plan = plan_of(["w0", "w1", "w2"], floating={"w2"})
    cm = model(0.1)
    warm = {1024: 1}  # w0 gets the warm container, w1 starts cold
    plain = simulate(dag, plan, cm, warm=warm)
    assert plain.makespan == pytest.approx(0.5 + 0.1 + 0.02 + 0.01 + 0.02 + 0.1 + 0.04)
    plan.optimizations = Optimizations(duplicate={2: (1,)})
    r = simulate(dag, plan, cm, warm=warm)
    # w0: 0.05 + 0.1, publish 0.17 (incomplete), check 0.18, runs task 1 to 0.28, publishes
    # 0.30 completing the set, claims 0.31, runs the fan-in 0.41, flush 0.43, client 0.45
    assert r.makespan == pytest.approx(0.45)
    assert r.duplicates == 1
    assert r.task_invocation[2] == 0
    assert r.task_start[2] == pytest.approx(0.31)


def test_critical_path_follows_the_longest_chain():
    dag = dag_of([[], [0], [0], [1, 2]])
    cm = model(1.0, 0)
    r = simulate(dag, WukongPlanner().plan(dag, parallelism=2, memory_mb=1024), cm)
    assert r.makespan >= 0.5 + 3  # a cold start plus the three-task critical path
    assert r.critical_path[0] == 0 and r.critical_path[-1] == 3


def test_streamed_output_is_read_while_it_uploads():
    dag = dag_of([[], [0]], {0: "big"})
    cm = model(1.0, {"big": 1000, "*": 10})
    plan = plan_of(["w0", "w1"])
    plain = simulate(dag, plan, cm, inline_bytes=100)
    # w0: cold 0.5, runs to 1.5, uploads 1000 B (1.01) -> 2.51 and invokes w1 (cold) ->
    # 3.01; w1 downloads (1.01) 4.02, runs 5.02, flush 5.04, client 5.06
    assert plain.makespan == pytest.approx(5.06)
    plan.optimizations = Optimizations(stream={0: 100})
    r = simulate(dag, plan, cm, inline_bytes=100)
    # w0 announces at 1.51 (one round trip), invokes w1 and uploads until 2.52; w1 starts
    # at 2.01, its read of the stored inputs (none) ends 2.02, the stream read at
    # max(2.52, 2.02 + 1.01) plus one 100 B chunk (0.11) = 3.14; runs 4.14, flush 4.16,
    # client 4.18
    assert r.makespan == pytest.approx(4.18)
    assert r.invocations[0].end_time == pytest.approx(2.52)
    assert r.invocations[1].start_time == pytest.approx(2.01)
    assert [(x.dep, x.source) for x in r.transfers] == [(0, "stream")]
    assert (r.bytes_uploaded, r.bytes_downloaded) == (plain.bytes_uploaded,
                                                      plain.bytes_downloaded)
    plan.optimizations = Optimizations(stream={0: 1000})  # one chunk: not streamed
    assert simulate(dag, plan, cm, inline_bytes=100).makespan == pytest.approx(5.06)


def test_a_straggler_gets_a_backup_that_finishes_its_work():
    """Eight 0.2 s roots on eight workers and a floating sink; root 3's first attempt
    takes 60 s. Speculation (factor 3, at least 10 s) sends a backup when root 3 has run
    10 s, at the client's check 10.5: warm (0.05), it checks what is stored (0.01), runs
    root 3 (0.2), stores it completing the sink's set (0.02), claims (0.01), checks the
    sink's group too (0.01), fetches the seven other inputs (70 B: 0.08), runs the sink
    (0.2), flushes (0.02); the client reads (0.02). The straggler is cancelled when the
    backup ends (billed 0.2 s more)."""
    dag = dag_of([[] for _ in range(8)] + [list(range(8))])
    plan = plan_of([f"w{i}" for i in range(8)] + ["s"], floating={"s"})
    slow = Faults(slow={3: 60.0})
    r = Simulator(dag, model(0.2), recovery=Recovery(min_s=10.0)).run(plan, faults=slow)
    assert r.backups == 1 and r.retries == 0
    assert r.makespan == pytest.approx(10.5 + 0.05 + 0.01 + 0.2 + 0.02 + 0.01 + 0.01 + 0.08
                                       + 0.2 + 0.02 + 0.02)
    backup = next(i for i in r.invocations if i.backup)
    original = next(i for i in r.invocations if i.worker_id == "w3" and not i.backup)
    assert original.outcome == "cancelled"
    assert original.end_time == pytest.approx(backup.end_time + 0.2)
    assert r.task_invocation[8] == r.invocations.index(backup)  # the sink ran there
    # without speculation the straggler holds the run: 60.5 + store, claim, fetch, sink...
    off = Simulator(dag, model(0.2), recovery=Recovery(speculation=False)).run(plan,
                                                                               faults=slow)
    assert off.backups == 0
    assert off.makespan == pytest.approx(60.5 + 0.02 + 0.01 + 0.08 + 0.2 + 0.02 + 0.02)
    assert r.cost > Simulator(dag, model(0.2)).run(plan).cost  # backups cost something


def test_a_dead_worker_is_noticed_by_its_lease_and_retried_without_redoing_stored_work():
    """a -> b -> c on w0 (b also feeds d on w1, so it is stored); w0 dies 1 s into c.
    Leases (heartbeat 5 s, three intervals): renewed at 0.5 and 5.5, expired at 20.5, seen
    by the client's check at 20.5; re-sent after 0.2; warm (0.05: w1's container is idle
    by then). The retry asks what is
    stored (0.01): b is, so a is not run again; b is registered and claimed again (0.01;
    d was sent already, not sent twice); c fetches b (0.02), runs (2), flushes (0.02); the
    client downloads c's output (10 B: 0.02; d's, long before, as it landed)."""
    dag = dag_of([[], [0], [1], [1]])
    plan = plan_of(["w0", "w0", "w0", "w1"])
    crash = Faults(crash={2: 1.0})
    r = Simulator(dag, model(2.0), recovery=Recovery(heartbeat_s=5.0)).run(plan, faults=crash)
    assert r.retries == 1 and not r.failed
    assert r.makespan == pytest.approx(20.7 + 0.05 + 0.01 + 0.01 + 0.02 + 2 + 0.02 + 0.02)
    died, _, retry = r.invocations
    assert died.outcome == "crashed" and died.end_time == pytest.approx(5.52)
    assert retry.attempt == 1 and retry.tasks == [2]  # neither a nor b again
    assert [i.worker_id for i in r.invocations].count("w1") == 1
    # the local pool sees the death itself: re-sent at once (cold: w1 is busy until 7.04)
    local = Simulator(dag, model(2.0), recovery=Recovery(direct=True)).run(plan, faults=crash)
    assert local.makespan == pytest.approx(5.52 + 0.2 + 0.5 + 0.01 + 0.01 + 0.02 + 2 + 0.02
                                           + 0.02)
    # no retries left: the run fails when the client notices
    gone = Simulator(dag, model(2.0), recovery=Recovery(retries=0)).run(plan, faults=crash)
    assert gone.failed and gone.makespan == pytest.approx(20.5)


def test_recovery_from_config_is_what_the_client_runs_with():
    """The simulator predicts with the client's own settings: heartbeat 1 s (lease 3 s),
    checks every 0.25 s, one retry, backups after 4 x the median and 2 s."""
    settings = {"serverless.heartbeat-interval": 1.0, "serverless.poll-interval": 0.25,
                "serverless.retries": 1, "serverless.retry-backoff": 0.5,
                "serverless.speculation.enabled": True, "serverless.speculation.factor": 4.0,
                "serverless.speculation.min-seconds": 2.0,
                "serverless.speculation.max-backups": 3}
    with dask.config.set(settings):
        r = Recovery.from_config()
        local = Recovery.from_config(direct=True)
    assert r == Recovery(direct=False, heartbeat_s=1.0, poll_s=0.25, retries=1,
                         retry_backoff=0.5, speculation=True, factor=4.0, min_s=2.0,
                         max_backups=3)
    assert local.direct and local.heartbeat_s == 1.0
    # the chain of the test above: w0 dies 1 s into c (at 5.52); renewed at 5.5, its lease
    # expires at 8.5, seen at the check 8.5, re-sent after 0.5 s
    dag = dag_of([[], [0], [1], [1]])
    plan = plan_of(["w0", "w0", "w0", "w1"])
    got = Simulator(dag, model(2.0), recovery=r).run(plan, faults=Faults(crash={2: 1.0}))
    assert got.retries == 1
    retry = got.invocations[-1]
    assert retry.attempt == 1 and retry.invoke_time == pytest.approx(8.5 + 0.5)
