"""Exceptions a user of dask-serverless may see."""

from __future__ import annotations


class ServerlessError(RuntimeError):
    """Base class of our own errors."""


class WorkerCrashedError(ServerlessError):
    """A worker process died while running tasks (killed, segfault, out of memory)."""


class DeadlineExceededError(ServerlessError, TimeoutError):
    """A compute did not finish before ``serverless.deadline``."""


class RedisUnavailableError(ServerlessError, ConnectionError):
    """The configured Redis cannot be reached."""


class LambdaInvokeError(ServerlessError):
    """AWS Lambda (or the local Lambda API server) refused an invocation."""


class RunDataLostError(RedisUnavailableError):
    """Redis no longer holds a running computation's data (restarted, flushed, expired)."""


class OutputTooLargeError(ServerlessError, ValueError):
    """A task output is larger than ``serverless.max-output-bytes``."""


class HintError(ServerlessError, ValueError):
    """A hint (``@hints``, ``dask.annotate(serverless=...)``) is invalid or failed."""


class DiskShuffleError(ServerlessError, ValueError):
    """The graph shuffles through files on one worker's disk (Dask's ``"disk"`` shuffle),
    which serverless workers do not share, and its partd store is made in a form that
    cannot be moved to Redis (``worker/shuffle_store.py``)."""


class ForeignListenerError(ServerlessError, ConnectionError):
    """Another user of this machine listens on the loopback port of a server we were to
    use (e.g. the local Lambda API server's): nothing is sent to it."""


class StartTimeoutError(ServerlessError, TimeoutError):
    """An invocation stayed queued (accepted, never started) past
    ``serverless.start-timeout``."""


class PersistedDataLostError(RunDataLostError):
    """A persisted value (or a value a graph embedded) is no longer in Redis: its
    collection outlived ``serverless.persist.ttl`` unused, it was released, or Redis was
    flushed or restarted. Persist the collection again."""
