"""Streamed outputs: a producer announces an output, then writes it in chunks, so its
consumers start (and start reading) while it is still being uploaded.

Keys (``keys.RunKeys``):

- the head ``s:<task>``: a JSON ``StreamHead`` (the writing attempt's token, invocation
  id and attempt, worker, total bytes, chunk count), sealed for the run and its key
  (``seal_head``), written with ``SET NX`` in the MULTI that registers the producer in its
  consumers' fan-in sets, so an entry fires only once each of its inputs is stored whole
  or announced. A head whose seal or fields are wrong (``open_head``: forged, garbled, or
  replayed from another run or task) is logged and treated as no head: readers wait for
  a real one, a writer takes its place, nothing is allocated from its sizes;
- the chunks ``c:<task>:<token>``: a list the writing attempt ``RPUSH``es to (TTL set
  after the first push); the set ``streams`` names every such list, for cleanup. The
  last push also marks a final output done, in one MULTI.

A reader polls the list, and the head when nothing new came (short waits growing to
``POLL_MAX_S``), copies the chunks into a buffer of the announced size and returns the
sealed blob; the caller checks its HMAC, which covers the whole blob, as for any
output. An output stored whole (``o:<task>``: too small to stream at run time, or
written by task-dup) wins. Per chunk, writer and reader use single commands, not
pipelines: one reply per round trip.

Retries: an attempt that finds the head held by an earlier attempt of its own invocation
(which died: only then is an invocation re-sent) takes the head over unless that stream
is complete, and deletes the partial list; readers see the token change and start
again. Any other writer (a duplicate delivery) leaves the stream to the head's holder.
A reader gives up at the run's deadline with an error naming the input and its writer,
or as soon as the run is cancelled.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

from ..errors import DeadlineExceededError, RunDataLostError
from . import serialize
from .serialize import Encoded, Purpose
from .store import RunStore

logger = logging.getLogger(__name__)

POLL_MIN_S, POLL_MAX_S = 0.0005, 0.01
_BATCH = 8  # chunks fetched per round trip at most
_MAX_TEXT = 256  # characters of a head's token, invocation or worker


class StreamCancelled(Exception):
    """The run was cancelled while a reader waited for chunks."""


@dataclass(frozen=True, slots=True)
class StreamHead:
    """Who writes a streamed output and how much of it there will be."""

    token: str
    invocation: str
    attempt: int
    worker: str
    nbytes: int
    chunks: int

    @classmethod
    def new(cls, invocation: str, attempt: int, worker: str, nbytes: int,
            chunk_bytes: int) -> StreamHead:
        token = f"{attempt}-{uuid.uuid4().hex[:12]}"  # unique per execution
        return cls(token, invocation, attempt, worker, nbytes, -(-nbytes // chunk_bytes))

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> StreamHead:
        """The head in JSON ``raw``; ``ValueError`` unless every field is there, typed and
        consistent (at most one chunk per byte)."""
        data = json.loads(raw)
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ValueError("not a stream head")
        texts, counts = ("token", "invocation", "worker"), ("attempt", "nbytes", "chunks")
        if not all(isinstance(data[n], str) and 0 < len(data[n]) <= _MAX_TEXT for n in texts):
            raise ValueError("a stream head with a bad token, invocation or worker")
        if not all(type(data[n]) is int and data[n] >= 0 for n in counts) or not (
                1 <= data["chunks"] <= max(1, data["nbytes"])):
            raise ValueError("a stream head with bad sizes")
        return cls(**data)

    def describe(self) -> str:
        return (f"worker {self.worker} (invocation {self.invocation}, attempt "
                f"{self.attempt + 1})")


def seal_head(store: RunStore, task: int, head: StreamHead) -> bytes:
    """``head`` as stored: sealed for this run and ``task``'s head key."""
    return serialize.seal(head.dumps().encode(), Purpose.STREAM_HEAD, store.keys.run_id,
                          store.keys.stream(task))


def open_head(store: RunStore, task: int, raw: bytes) -> StreamHead | None:
    """The head stored as ``raw`` for ``task``, or None (logged) when its seal is not this
    run's and task's or its fields are wrong."""
    k = store.keys
    try:
        data = serialize.unseal(raw, Purpose.STREAM_HEAD, k.run_id, k.stream(task),
                                "stream head")
        return StreamHead.loads(bytes(data))
    except (serialize.TamperedPayloadError, ValueError, TypeError) as exc:
        logger.warning("run %s: ignored the stream head of task %d: %s", k.run_id, task, exc)
        return None


def announce(store: RunStore, task: int, head: StreamHead,
             fanins: list[tuple[int, int]]) -> tuple[bool, list[int]]:
    """Announce ``task``'s stream and register its fan-in edges in one MULTI. Returns
    whether this attempt writes the chunks, and the fan-in set sizes seen."""
    chunks = store.keys.stream_chunks(task, head.token)
    won, current, sizes = store.announce_stream(task, seal_head(store, task, head), chunks,
                                                fanins)
    return won or _take_over(store, task, head, open_head(store, task, current)), sizes


def _take_over(store: RunStore, task: int, head: StreamHead, held: StreamHead | None) -> bool:
    """Reset a stream an earlier, dead attempt of this invocation left unfinished, or
    replace a head that is not one (forged or garbled)."""
    partial = None
    if held is not None:
        if held.invocation != head.invocation or held.attempt >= head.attempt:
            return False
        partial = store.keys.stream_chunks(task, held.token)
        if store.r.llen(partial) >= held.chunks:
            return False  # that attempt finished the stream before it died
    pipe = store.r.pipeline(transaction=True)
    pipe.set(store.keys.stream(task), seal_head(store, task, head), ex=store.ttl)
    if partial is not None:
        pipe.delete(partial)
    pipe.execute()
    return True


def unfinished(store: RunStore, tasks: Iterable[int]) -> list[tuple[int, StreamHead, int]]:
    """Streams of ``tasks`` announced but not complete: (task, head, chunks written)."""
    k = store.keys
    tasks = list(tasks)
    raws = store.r.mget([k.stream(t) for t in tasks]) if tasks else []
    opened = [(t, open_head(store, t, raw)) for t, raw in zip(tasks, raws, strict=True)
              if raw is not None]
    heads = [(t, head) for t, head in opened if head is not None]
    pipe = store.r.pipeline(transaction=False)
    for t, head in heads:
        pipe.llen(k.stream_chunks(t, head.token))
    counts = pipe.execute() if heads else []
    return [(t, h, int(n)) for (t, h), n in zip(heads, counts, strict=True) if n < h.chunks]


def write(store: RunStore, task: int, head: StreamHead, data: Encoded, chunk_bytes: int,
          final: bool) -> None:
    """Push ``data`` in chunks, one single-command round trip each (the list's TTL set
    after the first); the last push marks a final output done in the same MULTI."""
    k = store.keys
    key = k.stream_chunks(task, head.token)
    for i, chunk in enumerate(data.chunks(chunk_bytes)):
        if final and i == head.chunks - 1:
            pipe = store.r.pipeline(transaction=True)
            pipe.rpush(key, chunk)
            pipe.sadd(k.outputs_done, task)
            pipe.expire(k.outputs_done, store.ttl)
            pipe.execute()
        else:
            store.r.rpush(key, chunk)
        if i == 0:
            store.r.expire(key, store.ttl)


def read(store: RunStore, task: int, what: str, deadline_at: float = 0.0,
         cancelled: Callable[[], bool] | None = None) -> tuple[bytes | bytearray, float]:
    """The sealed blob of ``task``'s output, stored whole or streamed (waiting for the
    chunks), and the seconds spent waiting for chunks to be written. ``what`` names the
    input in errors; ``deadline_at`` (epoch seconds, 0: none) bounds the wait.

    Each round trip is one command: ``LRANGE`` for the next chunks, and when none came,
    ``MGET`` of the output and the head. Chunks of a list that the head no longer names
    are still a valid copy if they complete it (the seal is checked after the join)."""
    k = store.keys
    token, buf, got, filled, waited = "", bytearray(), 0, 0, 0.0
    head: StreamHead | None = None
    wait = POLL_MIN_S
    while True:
        if head is not None:
            new = store.r.lrange(k.stream_chunks(task, token), got, got + _BATCH - 1)
            for chunk in new:
                if filled + len(chunk) > head.nbytes:
                    raise ValueError(f"{what}: the stream from {head.describe()} is longer "
                                     f"than the {head.nbytes} bytes announced")
                buf[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
            got += len(new)
            if got >= head.chunks:
                return buf, waited
            if new:
                wait = POLL_MIN_S
                continue
            _check_wait(what, head, got, deadline_at, cancelled)
            time.sleep(wait)
            waited += wait
            wait = min(wait * 2, POLL_MAX_S)
        whole, raw = store.r.mget([k.output(task), k.stream(task)])
        if whole is not None:
            return store.resolve(task, whole), waited
        if raw is None:
            raise RunDataLostError(f"{what} is missing from Redis: neither stored nor "
                                   "announced (run cancelled, expired or Redis restarted)")
        fresh = open_head(store, task, raw)
        if fresh is None:  # not a head: wait for its writer to replace it
            if head is None:
                _check_wait(what, None, 0, deadline_at, cancelled)
                time.sleep(wait)
                waited += wait
                wait = min(wait * 2, POLL_MAX_S)
            continue
        head = fresh
        if head.token != token:  # first look, or a retry of the writer started over
            token, buf, got, filled = head.token, bytearray(head.nbytes), 0, 0


def _check_wait(what: str, head: StreamHead | None, got: int, deadline_at: float,
                cancelled: Callable[[], bool] | None) -> None:
    """Stop waiting for ``what`` when the run is cancelled or its deadline passed."""
    if cancelled is not None and cancelled():
        raise StreamCancelled(what)
    if deadline_at and time.time() >= deadline_at:
        if head is None:
            raise DeadlineExceededError(
                f"{what}: no valid stream head by the run's deadline (serverless.deadline); "
                "what is stored under its key is not one")
        raise DeadlineExceededError(
            f"{what} streamed by {head.describe()}: {got} of {head.chunks} chunks arrived by "
            "the run's deadline (serverless.deadline); its producer died or stalled "
            "mid-stream")
