"""A run's data in Redis: outputs (write-once), fan-in counters, errors, events.

Fan-in protocol: a producer adds itself to the consumer's set and reads its size in one
MULTI/EXEC (a retried producer never counts twice); whoever sees the set complete then
claims the consumer with ``SET NX`` so exactly one invocation runs it.

Large outputs (``LARGE_BYTES`` and more) are stored in parts: the writing attempt first
``SET``s its parts ``op:<task>:<token>:<i>`` (``PART_BYTES`` each, over a socket of its
own: ``bulk.write``, no copy of the value), then, in the same MULTI as a small output
would be, ``SET NX``es ``o:<task>`` to a *manifest*: the parts' token and sizes in a
sealed raw frame (``serialize.seal``, purpose ``output``, bound to ``o:<task>``; a value's
frame never ``unseal``s, a manifest never ``decode``s). An attempt that loses the
``SET NX`` deletes its parts. Readers (``get_outputs``, ``resolve``) open the manifest and
read the parts into one preallocated buffer (``bulk.read``), whose seal is then checked
as that of any output. So an output may exceed Redis's 512 MB string limit, up to
``serverless.max-output-bytes``; every part is named in the set ``parts`` for cleanup,
before it is written.
"""

from __future__ import annotations

import json
import logging
import mmap
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from ..errors import RunDataLostError
from . import bulk, run_events, serialize, stored
from .keys import RunKeys
from .serialize import Encoded, Purpose, decode, encode

logger = logging.getLogger(__name__)

_CLIENTS: dict[str, redis.Redis] = {}

LARGE_BYTES = 2**20  # outputs at least this large are stored in parts
PART_BYTES = 64 * 2**20  # a part of a large output (Redis refuses strings over 512 MiB)
_MAX_PARTS = 2**16


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str) -> redis.Redis:
    """A cached client for ``url`` (one connection pool per URL per process).

    ``redis+cluster://`` / ``rediss+cluster://`` URLs give a Redis Cluster client
    (a run's keys share one hash tag, so its transactions stay in one slot).
    """
    client = _CLIENTS.get(url)
    if client is None:
        scheme, sep, rest = url.partition("+cluster://")
        if sep:
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(f"{scheme}://{rest}", socket_connect_timeout=5)
        else:
            client = redis.Redis.from_url(url, socket_connect_timeout=5,
                                          health_check_interval=0)
        _CLIENTS[url] = client
    return client


class RunStore:
    """Redis operations of one run, used by both the client and the workers."""

    def __init__(self, client: redis.Redis, run_id: str, ttl: int = 3600):
        self.r = client
        self.keys = RunKeys(run_id)
        self.ttl = ttl
        # stored inputs of the run (``DAG.stored``): id -> StoredRef; read like outputs
        self.stored: dict[int, stored.StoredRef] = {}

    # -- outputs -------------------------------------------------------------------
    def encode_output(self, task: int, value: Any) -> Encoded:
        """``task``'s output sealed for its key in this run."""
        return encode(value, Purpose.OUTPUT, self.keys.run_id, self.keys.output(task))

    def decode_output(self, task: int, blob: bytes | bytearray | memoryview,
                      what: str = "output") -> Any:
        """The value of ``task``'s output ``blob`` (read whole or streamed) once its seal
        checks out for this run and task (a stored input's: for its reference)."""
        ref = self.stored.get(task) if self.stored else None
        if ref is not None:
            return stored.decode(ref, blob, what)
        return decode(blob, Purpose.OUTPUT, self.keys.run_id, self.keys.output(task), what)

    def get_outputs(self, task_ids: Sequence[int]) -> list[bytes | mmap.mmap | None]:
        """The stored blobs of these outputs (None: not stored); a large one read from
        its parts into a writable buffer; stored inputs' ids read their references
        (``PersistedDataLostError`` when one is gone)."""
        if self.stored and any(t in self.stored for t in task_ids):
            refs = [self.stored[t] for t in task_ids if t in self.stored]
            blobs = iter(stored.read(self.r, refs))
            own = [t for t in task_ids if t not in self.stored]
            outputs = iter(self.get_outputs(own) if own else [])
            return [next(blobs) if t in self.stored else next(outputs) for t in task_ids]
        out: list[Any] = []
        for i in range(0, len(task_ids), 1000):
            out.extend(self.r.mget([self.keys.output(t) for t in task_ids[i:i + 1000]]))
        return [self.resolve(t, blob) if blob is not None else None
                for t, blob in zip(task_ids, out, strict=True)]

    def resolve(self, task: int, blob: bytes) -> bytes | bytearray | mmap.mmap:
        """What ``o:<task>`` holds as the output's blob: ``blob`` itself, or the parts its
        manifest names, read into one buffer (``RunDataLostError`` when one is gone)."""
        parts = self.parts_of(task, blob)
        if parts is None:
            return blob
        k = self.keys
        names, sizes = parts
        buf = bulk.buffer(sum(sizes))
        if not bulk.read(self.r, names, sizes, memoryview(buf)):
            raise RunDataLostError(f"run {k.run_id}: a part of output {task} is missing "
                                   "from Redis (run cancelled, expired or Redis restarted)")
        return buf

    def parts_of(self, task: int, blob: bytes) -> tuple[list[str], list[int]] | None:
        """The parts' keys and sizes when ``blob`` (what ``o:<task>`` holds) is the
        manifest of a large output; None when it is the output itself."""
        if not serialize.is_raw(blob):
            return None
        k = self.keys
        token, sizes = _manifest(serialize.unseal(blob, Purpose.OUTPUT, k.run_id,
                                                  k.output(task), "output manifest"))
        return [k.output_part(task, token, i) for i in range(len(sizes))], sizes

    def _stage(self, task: int, data: Encoded) -> tuple[bytes, list[str]]:
        """What to ``SET NX`` under ``o:<task>`` for ``data``: its frame, or for a large
        one the manifest of its parts, which are written now (and returned)."""
        if data.nbytes < LARGE_BYTES:
            return data.tobytes(), []
        k = self.keys
        token = uuid.uuid4().hex[:12]
        items = [(k.output_part(task, token, i), views)
                 for i, views in enumerate(data.pieces(PART_BYTES))]
        names = [name for name, _ in items]
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(k.parts, *names)
        pipe.expire(k.parts, self.ttl)
        pipe.execute()
        bulk.write(self.r, items, self.ttl)
        sizes = [sum(v.nbytes for v in views) for _, views in items]
        manifest = json.dumps({"token": token, "sizes": sizes}, separators=(",", ":"))
        return serialize.seal(manifest.encode(), Purpose.OUTPUT, k.run_id,
                              k.output(task)), names

    def publish_outputs(self, outputs: Iterable[tuple[int, Encoded]], final: Iterable[int],
                        fanins: Sequence[tuple[int, int]]) -> list[int]:
        """Write outputs (NX), mark final ones done, register ``(producer, consumer)``
        fan-in edges; one round trip. Returns the set sizes seen for each fan-in edge."""
        k = self.keys
        staged = [(tid, *self._stage(tid, data)) for tid, data in outputs]
        pipe = self.r.pipeline(transaction=True)
        for tid, blob, _ in staged:
            pipe.set(k.output(tid), blob, nx=True, ex=self.ttl)
        final = list(final)
        if final:
            pipe.sadd(k.outputs_done, *final)
            pipe.expire(k.outputs_done, self.ttl)
        res = self._register(pipe, fanins).execute()
        self._drop_parts([names for (_, _, names), ok in zip(staged, res, strict=False)
                          if not ok])
        return self._fanin_sizes(res, fanins)

    def _drop_parts(self, lost: list[list[str]]) -> None:
        """Delete the parts of outputs whose ``SET NX`` lost (an earlier attempt won)."""
        names = [n for group in lost for n in group]
        if names:
            self.r.unlink(*names)

    def publish(self, task: int, data: Encoded | None, final: bool,
                fanins: Sequence[int], claims: Sequence[int],
                claimer: str) -> tuple[bool, list[int], list[bool]]:
        """One output's step, in one MULTI: write it once (unless ``data`` is None), mark
        it done when ``final``, add it to ``fanins``' sets and claim ``claims`` for
        ``claimer``. Returns whether this write stored it (False: an earlier attempt
        did), the set sizes seen, and which claims ``claimer`` holds."""
        k = self.keys
        blob, names = self._stage(task, data) if data is not None else (b"", [])
        pipe = self.r.pipeline(transaction=True)
        if data is not None:
            pipe.set(k.output(task), blob, nx=True, ex=self.ttl)
        if final:
            pipe.sadd(k.outputs_done, task)
            pipe.expire(k.outputs_done, self.ttl)
        edges = [(task, c) for c in fanins]
        self._register(pipe, edges)
        for c in claims:
            pipe.set(k.fired(c), claimer, nx=True, ex=self.ttl)
            pipe.get(k.fired(c))
        res = pipe.execute()
        written = data is None or bool(res[0])
        if not written:
            self._drop_parts([names])
        claimed = res[len(res) - 2 * len(claims):]
        head = res[:len(res) - 2 * len(claims)]
        mine = claimer.encode()
        return written, self._fanin_sizes(head, edges), [v == mine for v in claimed[1::2]]

    def outputs_stored(self, task_ids: Sequence[int]) -> list[bool]:
        """Which of these outputs are stored (whole)."""
        pipe = self.r.pipeline(transaction=False)
        for t in task_ids:
            pipe.exists(self.keys.output(t))
        return [bool(x) for x in pipe.execute()]

    def announce_stream(self, task: int, head: str, chunks_key: str,
                        fanins: Sequence[tuple[int, int]]) -> tuple[bool, bytes, list[int]]:
        """Announce a streamed output (head ``SET NX``; its chunk list registered for
        cleanup) and register ``(producer, consumer)`` fan-in edges in one MULTI. Returns
        whether this head was set, the head now stored and the fan-in set sizes seen."""
        k = self.keys
        pipe = self.r.pipeline(transaction=True)
        pipe.set(k.stream(task), head, nx=True, ex=self.ttl)
        pipe.get(k.stream(task))
        pipe.sadd(k.streams, chunks_key)
        pipe.expire(k.streams, self.ttl)
        res = self._register(pipe, fanins).execute()
        return bool(res[0]), res[1], self._fanin_sizes(res, fanins)

    def _register(self, pipe: Any, fanins: Sequence[tuple[int, int]]) -> Any:
        for producer, consumer in fanins:
            pipe.sadd(self.keys.fanin(consumer), producer)
            pipe.scard(self.keys.fanin(consumer))
            pipe.expire(self.keys.fanin(consumer), self.ttl)
        return pipe

    @staticmethod
    def _fanin_sizes(res: list[Any], fanins: Sequence[tuple[int, int]]) -> list[int]:
        if not fanins:
            return []
        return [int(x) for x in res[-3 * len(fanins) + 1::3]]

    def claim(self, consumers: Sequence[int], claimer: str) -> list[bool]:
        """Claim fan-in consumers whose sets are complete; True where ``claimer`` holds the
        claim (won now, or in an earlier attempt of the same invocation)."""
        pipe = self.r.pipeline(transaction=True)
        for c in consumers:
            pipe.set(self.keys.fired(c), claimer, nx=True, ex=self.ttl)
            pipe.get(self.keys.fired(c))
        res = pipe.execute()
        mine = claimer.encode()
        return [v == mine for v in res[1::2]]

    def fanin_sizes(self, consumers: Sequence[int]) -> list[int]:
        pipe = self.r.pipeline(transaction=False)
        for c in consumers:
            pipe.scard(self.keys.fanin(c))
        return [int(x) for x in pipe.execute()]

    def fanin_members(self, consumers: Sequence[int]) -> list[set[int]]:
        """The producers registered in each consumer's fan-in set."""
        pipe = self.r.pipeline(transaction=False)
        for c in consumers:
            pipe.smembers(self.keys.fanin(c))
        return [{int(x) for x in members} for members in pipe.execute()]

    def outputs_exist(self, task_ids: Sequence[int]) -> bool:
        return int(self.r.exists(*[self.keys.output(t) for t in task_ids])) == len(task_ids)

    def outputs_done(self) -> int:
        return int(self.r.scard(self.keys.outputs_done))

    def done_outputs(self) -> set[int]:
        return {int(x) for x in self.r.smembers(self.keys.outputs_done)}

    def spec_present(self) -> bool:
        return bool(self.r.exists(self.keys.dag))

    # -- errors, cancellation, events ---------------------------------------------------
    def fail(self, record: dict[str, Any]) -> bool:
        """Store the run's first error record (``protocol.wire.error_record``; later ones
        are dropped), sealed for this run's error key, and wake the client."""
        k = self.keys
        blob = encode(record, Purpose.ERROR, k.run_id, k.error).tobytes()
        first = bool(self.r.set(k.error, blob, nx=True, ex=self.ttl))
        self.event({"kind": "error"})
        return first

    def get_error(self) -> dict[str, Any] | None:
        """The run's error record, or None; ``TamperedPayloadError`` when its seal is not
        this run's."""
        blob = self.r.get(self.keys.error)
        if blob is None:
            return None
        return decode(blob, Purpose.ERROR, self.keys.run_id, self.keys.error, "error record")

    def cancel(self) -> None:
        self.r.set(self.keys.cancel, 1, ex=self.ttl)

    def cancelled(self) -> bool:
        return bool(self.r.exists(self.keys.cancel))

    def event(self, message: dict[str, Any]) -> None:
        """Publish ``message`` to the run's client (sealed: ``run_events``)."""
        self.r.publish(self.keys.events, run_events.encode(message, self.keys.run_id))

    def push_task_output(self, entry: dict[str, Any]) -> None:
        """Append what one task printed and warned (``worker.task_output``), sealed for
        this run's list (anyone reaching Redis could write to it)."""
        k = self.keys
        blob = serialize.seal(json.dumps(entry, separators=(",", ":")).encode(),
                              Purpose.EVENT, k.run_id, k.task_output)
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(k.task_output, blob)
        pipe.expire(k.task_output, self.ttl)
        pipe.execute()

    def task_output(self, start: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Entries of ``push_task_output`` from list index ``start`` on whose seal checks
        out, and how many entries were read."""
        k = self.keys
        entries = []
        blobs = self.r.lrange(k.task_output, start, -1)
        for blob in blobs:
            try:
                entries.append(json.loads(bytes(serialize.unseal(
                    blob, Purpose.EVENT, k.run_id, k.task_output, "task output"))))
            except (serialize.TamperedPayloadError, ValueError):
                logger.warning("run %s: ignored an entry of its task output list whose seal "
                               "does not match", k.run_id)
        return entries, len(blobs)

    def cleanup(self, task_ids_with_outputs: Iterable[int], entry_ids: Iterable[int],
                streamed: Iterable[int] = ()) -> int:
        """Delete the run's keys (all but the cancel flag, which expires by itself);
        ``streamed``: tasks whose outputs may have been streamed (heads and chunk lists)."""
        k = self.keys
        names = [k.dag, k.error, k.outputs_done, k.task_output, k.parts, k.invocations,
                 k.running, k.ended, k.durations]
        names += [k.output(t) for t in task_ids_with_outputs]
        heads = [k.stream(t) for t in streamed]
        pipe = self.r.pipeline(transaction=False)  # what the run registered: one round trip
        pipe.smembers(k.parts)
        pipe.hkeys(k.running)
        if heads:
            pipe.smembers(k.streams)
        parts, running, *chunk_lists = pipe.execute()
        names += [x.decode() for x in parts]
        for f in running:  # leases of executions still wrapping up
            inv_id, _, attempt = f.decode().rpartition(":")
            if attempt.isdigit():
                names.append(k.lease(inv_id, int(attempt)))
        for e in entry_ids:
            names += [k.fanin(e), k.fired(e)]
        if heads:
            names += [*heads, k.streams]
            names += [x.decode() for x in chunk_lists[0]]
        deleted = 0
        for i in range(0, len(names), 2000):
            deleted += int(self.r.unlink(*names[i:i + 2000]))
        return deleted


def _manifest(raw: memoryview) -> tuple[str, list[int]]:
    """The token and part sizes of a large output's manifest (sealed, so ours; checked
    anyway before anything is allocated from it)."""
    try:
        data = json.loads(bytes(raw))
        token, sizes = data["token"], data["sizes"]
        if not (isinstance(token, str) and 0 < len(token) <= 64 and token.isalnum()
                and isinstance(sizes, list) and 0 < len(sizes) <= _MAX_PARTS
                and all(type(n) is int and 0 < n <= PART_BYTES for n in sizes)):
            raise ValueError("bad fields")
    except (ValueError, KeyError, TypeError) as exc:
        raise serialize.TamperedPayloadError(f"an output manifest is malformed: {exc}") \
            from None
    return token, sizes
