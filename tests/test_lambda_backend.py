"""The ``lambda`` backend end to end through the local Lambda API server: errors, payload
spill, throttling, cold/warm starts, memory caps."""

from __future__ import annotations

import json
import time

import boto3
import dask
import numpy as np
import pytest
from dask import delayed

from dask_serverless import serverless_get, session
from dask_serverless.backends.aws_lambda import events
from dask_serverless.backends.aws_lambda.deploy import DeployOptions, deploy
from dask_serverless.errors import LambdaInvokeError
from dask_serverless.plan import ResourceConfig
from dask_serverless.protocol.wire import Invocation
from dask_serverless.storage.serialize import TamperedPayloadError
from dask_serverless.storage.store import connect


def _client(server):
    return boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                        **server.credentials.client_kwargs())


@delayed
def explode(x):
    raise ValueError(f"bad row {x}")


@delayed
def total(*xs):
    return sum(int(np.sum(x)) for x in xs)


def test_task_error_surfaces_with_its_own_exception(any_redis, lambda_backend):
    with pytest.raises(ValueError, match="bad row 7") as info:
        dask.compute(total(explode(7), delayed(np.ones)(3)), scheduler=serverless_get)
    assert any("failed on worker" in note for note in info.value.__notes__)


def _big_invocation(redis_url: str, run_id: str) -> Invocation:
    """An invocation carrying ~480 KB of inline input (over Lambda's 256 KB async limit)."""
    return Invocation(run_id, "w0", 1024, redis_url, [0],
                      inputs={1: np.arange(60_000, dtype="int64").tobytes()})


def test_oversized_invocation_spills_to_redis(any_redis, lambda_backend):
    """Client side: an event over the async limit goes as a sealed pointer to the payload in
    Redis. Worker side: a task whose ~480 KB output may ride inline (up to 4 MB) in the
    invocations it fires: the service refuses events over 256 KB, so the run is right only
    if those spill too."""
    from dask_serverless.backends.aws_lambda.invoker import LambdaInvoker

    invoker = LambdaInvoker()
    call = invoker.event_call(_big_invocation(any_redis, "spill-check"))
    assert invoker.spilled == 1 and len(call.payload) < 2048
    assert b'"spilled"' in call.payload
    assert len(events.decode(json.loads(call.payload))[0].inputs[1]) == 480_000
    big = delayed(np.arange)(60_000, dtype="int64")
    parts = [delayed(np.add)(big, i) for i in range(3)]  # fired with ``big`` inline
    with dask.config.set({"serverless.payload-inline-bytes": 4 * 2**20}):
        (got,) = dask.compute(total(*parts), scheduler=serverless_get)
    expect = np.arange(60_000, dtype="int64")
    assert got == sum(int(np.sum(expect + i)) for i in range(3))


def test_event_over_the_limit_without_spill_names_function_and_worker(real_redis,
                                                                      lambda_backend):
    from dask_serverless.backends.aws_lambda.invoker import LambdaInvoker

    with dask.config.set({"serverless.lambda.max-event-bytes": 8 * 2**20}):
        invoker = LambdaInvoker()
    with pytest.raises(LambdaInvokeError, match=r"'ds-test-1024'.*worker w0.*task ids.*"
                                                r"RequestEntityTooLarge"):
        invoker.invoke_many([_big_invocation(real_redis, "nospill")])
    assert invoker.spilled == 0


def test_throttling_and_server_errors_are_retried(real_redis, lambda_backend):
    service = lambda_backend.service
    before = service.throttled
    service.fail_next_invokes(3, status=429)
    service.fail_next_invokes(2, status=500)
    parts = [delayed(np.sum)(np.arange(10) + i) for i in range(6)]
    (got,) = dask.compute(delayed(sum)(parts), scheduler=serverless_get)
    assert got == sum(int(np.sum(np.arange(10) + i)) for i in range(6))
    assert service.throttled - before == 5
    assert session.backend().invoker.retries >= 1


def test_retries_give_up_with_a_clear_error(real_redis, lambda_backend):
    lambda_backend.service.fail_next_invokes(2, status=429)  # one root, 1 + 1 attempts
    with dask.config.set({"serverless.lambda.max-retries": 1}), \
            pytest.raises(LambdaInvokeError, match=r"'ds-test-1024'.*TooManyRequests.*"
                                                   r"gave up after 1 retries"):
        dask.compute(delayed(np.sum)(np.arange(5)), scheduler=serverless_get)


def test_missing_function_says_which_and_how_to_deploy(real_redis, lambda_backend):
    with pytest.raises(LambdaInvokeError, match=r"'ds-test-2048'.*ResourceNotFound.*"
                                                r"deploy --memory 2048"):
        dask.compute(delayed(np.sum)(np.arange(5)), scheduler=serverless_get, memory=2048)


def allocate(mb):
    return int(np.ones(mb * 2**20 // 8).sum())


def test_memory_cap_of_the_function(real_redis, lambda_backend):
    with pytest.raises(MemoryError, match="128"):
        dask.compute(delayed(allocate)(600), scheduler=serverless_get, memory=128)
    (got,) = dask.compute(delayed(allocate)(8), scheduler=serverless_get, memory=128)
    assert got == 8 * 2**20 // 8


def test_cold_then_warm_per_execution_environment(local_lambda):
    server, settings = local_lambda
    fresh = settings.__class__(function_prefix="ds-coldwarm", endpoint_url=server.url,
                               region="us-east-1")
    deploy(DeployOptions([256], fresh), say=lambda _: None)
    client = _client(server)
    answers = [json.loads(client.invoke(FunctionName="ds-coldwarm-256",
                                        Payload=events.WARMUP_EVENT)["Payload"].read())
               for _ in range(2)]
    assert [a["cold"] for a in answers] == [True, False]
    stats = server.service.stats("ds-coldwarm-256")
    assert (stats["cold_starts"], stats["warm_starts"]) == (1, 1)


def test_handler_error_sets_function_error(local_lambda):
    server, _ = local_lambda
    answer = _client(server).invoke(FunctionName="ds-test-1024", Payload=b'{"foo": 1}')
    assert answer["FunctionError"] == "Unhandled"
    body = json.loads(answer["Payload"].read())
    assert body["errorType"] == "EventError" and "not a dask-serverless event" in \
        body["errorMessage"]


def test_warm_up_sends_events(real_redis, lambda_backend):
    service = lambda_backend.service
    before = service.stats("ds-test-1024")
    session.backend().warm_up(ResourceConfig(1024), count=3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = service.stats("ds-test-1024")
        if after["cold_starts"] + after["warm_starts"] >= \
                before["cold_starts"] + before["warm_starts"] + 3:
            break
        time.sleep(0.05)
    assert after["invocations"] - before["invocations"] == 3
    assert after["errors"] == before["errors"]


def test_event_spill_roundtrip(any_redis):
    inv = Invocation("run1", "w0", 1024, any_redis, [1, 2], b"x" * 5000, {3: b"y" * 100})
    small, spilled = events.encode(inv, max_bytes=100_000, ttl=60)
    assert not spilled and events.decode(json.loads(small))[0] == inv
    event, spilled = events.encode(inv, max_bytes=1000, ttl=60)
    assert spilled and len(event) < 1000
    back, key, url = events.decode(json.loads(event))
    assert back == inv and key.startswith("ds:{run1}:p:") and url == any_redis
    assert 0 < connect(any_redis).ttl(key) <= 60
    events.drop_spilled(any_redis, key)
    with pytest.raises(events.EventError, match="gone from Redis"):
        events.decode(json.loads(event))


def test_worker_with_another_secret_refuses_and_the_client_fails_fast(local_lambda,
                                                                      real_redis):
    server, settings = local_lambda
    other = settings.__class__(function_prefix="ds-secret", endpoint_url=server.url,
                               region="us-east-1")
    with dask.config.set({"serverless.secret": "not-the-clients-secret-but-32-bytes-long"}):
        deploy(DeployOptions([1024], other), say=lambda _: None)
    with dask.config.set({"serverless.backend": "lambda",
                          "serverless.lambda.endpoint-url": server.url,
                          "serverless.lambda.function-prefix": "ds-secret",
                          "serverless.lambda.region": "us-east-1",
                          "serverless.deadline": 60}):
        try:
            # the error says what to do: deploy again, or the functions' secret here
            with pytest.raises(TamperedPayloadError, match=r"(?s)HMAC seal.*run "
                               r"`dask-serverless deploy`.*DASK_SERVERLESS__SECRET"):
                dask.compute(delayed(np.sum)(np.arange(5)), scheduler=serverless_get)
        finally:
            session.reset_backend("lambda")


def test_disk_shuffle_through_lambda_functions_keeps_every_element(real_redis,
                                                                   lambda_backend):
    """Each Lambda function has its own disk: a bag's disk groupby, each task in its own
    invocation, still groups every element once (its partd store lives in Redis)."""
    import dask.bag as db

    data = list(range(60)) * 3
    b = db.from_sequence(data, npartitions=4).groupby(lambda v: v % 7, shuffle="disk")
    (got,) = dask.compute(b, scheduler=serverless_get, planner="per-task")
    assert {k: sorted(v) for k, v in got} == {
        k: sorted(v for v in data if v % 7 == k) for k in range(7)}
