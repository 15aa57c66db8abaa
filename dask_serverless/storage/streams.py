"""Streamed outputs: a producer announces an output, then writes it in chunks, so its
consumers start (and start reading) while it is still being uploaded.

Keys (``keys.RunKeys``):

- the head ``s:<task>``: a JSON ``StreamHead`` (the writing attempt's token, invocation
  id and attempt, worker, total bytes, chunk count), written with ``SET NX`` in the MULTI
  that registers the producer in its consumers' fan-in sets, so an entry fires only once
  each of its inputs is stored whole or announced;
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
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from ..errors import DeadlineExceededError, RunDataLostError
from .serialize import Encoded
from .store import RunStore

POLL_MIN_S, POLL_MAX_S = 0.0005, 0.01
_BATCH = 8  # chunks fetched per round trip at most


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
        return cls(**json.loads(raw))

    def describe(self) -> str:
        return (f"worker {self.worker} (invocation {self.invocation}, attempt "
                f"{self.attempt + 1})")


def announce(store: RunStore, task: int, head: StreamHead,
             fanins: list[tuple[int, int]]) -> tuple[bool, list[int]]:
    """Announce ``task``'s stream and register its fan-in edges in one MULTI. Returns
    whether this attempt writes the chunks, and the fan-in set sizes seen."""
    chunks = store.keys.stream_chunks(task, head.token)
    won, current, sizes = store.announce_stream(task, head.dumps(), chunks, fanins)
    return won or _take_over(store, task, head, StreamHead.loads(current)), sizes


def _take_over(store: RunStore, task: int, head: StreamHead, held: StreamHead) -> bool:
    """Reset a stream an earlier, dead attempt of this invocation left unfinished."""
    if held.invocation != head.invocation or held.attempt >= head.attempt:
        return False
    partial = store.keys.stream_chunks(task, held.token)
    if store.r.llen(partial) >= held.chunks:
        return False  # that attempt finished the stream before it died
    pipe = store.r.pipeline(transaction=True)
    pipe.set(store.keys.stream(task), head.dumps(), ex=store.ttl)
    pipe.delete(partial)
    pipe.execute()
    return True


def unfinished(store: RunStore, tasks: Iterable[int]) -> list[tuple[int, StreamHead, int]]:
    """Streams of ``tasks`` announced but not complete: (task, head, chunks written)."""
    k = store.keys
    tasks = list(tasks)
    raws = store.r.mget([k.stream(t) for t in tasks]) if tasks else []
    heads = [(t, StreamHead.loads(raw)) for t, raw in zip(tasks, raws, strict=True)
             if raw is not None]
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
            if cancelled is not None and cancelled():
                raise StreamCancelled(what)
            if deadline_at and time.time() >= deadline_at:
                raise DeadlineExceededError(
                    f"{what} streamed by {head.describe()}: {got} of {head.chunks} chunks "
                    "arrived by the run's deadline (serverless.deadline); its producer died "
                    "or stalled mid-stream")
            time.sleep(wait)
            waited += wait
            wait = min(wait * 2, POLL_MAX_S)
        whole, raw = store.r.mget([k.output(task), k.stream(task)])
        if whole is not None:
            return whole, waited
        if raw is None:
            raise RunDataLostError(f"{what} is missing from Redis: neither stored nor "
                                   "announced (run cancelled, expired or Redis restarted)")
        head = StreamHead.loads(raw)
        if head.token != token:  # first look, or a retry of the writer started over
            token, buf, got, filled = head.token, bytearray(head.nbytes), 0, 0
