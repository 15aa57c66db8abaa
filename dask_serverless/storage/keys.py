"""Every Redis key and channel name, in one place.

A run's keys share the hash tag ``{run_id}``, so in a Redis Cluster one run lives in one
slot: fan-in scripts and pipelines touch one node.
"""

from __future__ import annotations


class RunKeys:
    """Key names for one run: ``ds:{run_id}:<kind>[:<task id>]``."""

    __slots__ = ("prefix", "run_id")

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.prefix = f"ds:{{{run_id}}}:"

    def output(self, task_id: int) -> str:
        return f"{self.prefix}o:{task_id}"

    def output_part(self, task_id: int, token: str, index: int) -> str:
        """One part of a large output written by one attempt (``store``: its key
        ``o:<task>`` then holds the parts' manifest)."""
        return f"{self.prefix}op:{task_id}:{token}:{index}"

    @property
    def parts(self) -> str:
        """Set of every output part and shuffle partition of the run (for cleanup)."""
        return f"{self.prefix}parts"

    def fanin(self, task_id: int) -> str:
        return f"{self.prefix}f:{task_id}"

    def fired(self, task_id: int) -> str:
        return f"{self.prefix}x:{task_id}"

    def stream(self, task_id: int) -> str:
        """A streamed output's head: who writes it, its size and chunk count."""
        return f"{self.prefix}s:{task_id}"

    def stream_chunks(self, task_id: int, token: str) -> str:
        """The chunks one writing attempt of a streamed output pushed so far (a list)."""
        return f"{self.prefix}c:{task_id}:{token}"

    @property
    def streams(self) -> str:
        """Set of every chunk list of the run (for cleanup)."""
        return f"{self.prefix}streams"

    def shuffle_part(self, store: str, part: str) -> str:
        """One partition of a disk-style shuffle's store: a hash of sealed pieces, one
        field per appending task and append (listed in ``parts``)."""
        return f"{self.prefix}sh:{store}:{part}"

    def payload(self, token: str) -> str:
        """An invocation payload too large for its transport (e.g. Lambda's event limit)."""
        return f"{self.prefix}p:{token}"

    @property
    def dag(self) -> str:
        """The run's spec header (``protocol.slices.RunHeader``)."""
        return f"{self.prefix}dag"

    def slice(self, name: str) -> str:
        """One invocation group's slice of the run spec (``protocol.slices``)."""
        return f"{self.prefix}sl:{name}"

    def piece(self, digest: str) -> str:
        """A shared piece of the run's slices (a function pickled by value)."""
        return f"{self.prefix}pc:{digest}"

    @property
    def slices_done(self) -> str:
        """Set once the client stored every slice: a slice missing then is lost."""
        return f"{self.prefix}sl-done"

    # -- invocation leases (``storage.leases``) -----------------------------------------
    @property
    def invocations(self) -> str:
        """Hash: invocation id -> what it starts, for every invocation sent and not ended."""
        return f"{self.prefix}inv"

    @property
    def running(self) -> str:
        """Hash: ``<invocation id>:<attempt>`` -> worker, for every execution started."""
        return f"{self.prefix}run"

    def lease(self, invocation: str, attempt: int) -> str:
        """One execution's lease (expires unless its heartbeat renews it)."""
        return f"{self.prefix}l:{invocation}:{attempt}"

    @property
    def ended(self) -> str:
        """Set of invocation ids whose work is done (a later delivery does nothing)."""
        return f"{self.prefix}ended"

    @property
    def durations(self) -> str:
        """List of ``<task id>:<seconds>`` of finished tasks (straggler detection)."""
        return f"{self.prefix}dur"

    @property
    def error(self) -> str:
        return f"{self.prefix}error"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}cancel"

    @property
    def outputs_done(self) -> str:
        return f"{self.prefix}nout"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def task_output(self) -> str:
        """List of what tasks printed and warned (JSON, one entry per task)."""
        return f"{self.prefix}tout"

    @property
    def pattern(self) -> str:
        return f"{self.prefix}*"


class MetricsKeys:
    """Key names of recorded metrics: ``dsm:...``, never deleted with a run's ``ds:`` keys.

    A run's records share the hash tag ``{run_id}`` so a worker's one pipeline touches
    one Redis Cluster slot.
    """

    runs = "dsm:runs"  # sorted set: run id -> submit time

    @staticmethod
    def run(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:run"  # JSON run record

    @staticmethod
    def invocations(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:inv"  # list: one JSON invocation record each

    @staticmethod
    def tasks(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:tasks"  # list: one JSON batch of task rows per invocation

    @staticmethod
    def plan(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:plan"  # JSON plan record (metrics.plans)

    @staticmethod
    def logs(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:logs"  # list: one JSON {task id: log lines} per invocation

    @staticmethod
    def signature(signature: str) -> str:
        return f"dsm:sig:{signature}"  # sorted set: run ids of one workflow -> submit time

    # live runs (only with serverless.dashboard.enabled): the client announces a run and
    # forwards its workers' progress events here, so a dashboard needs only this Redis
    live_runs = "dsm:live"  # sorted set: run id -> submit time, while the run is going

    @staticmethod
    def live(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:live"  # JSON: the run's structure and plan (expires)

    @staticmethod
    def live_log(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:live-log"  # list: the run's progress events so far

    @staticmethod
    def live_events(run_id: str) -> str:
        return f"dsm:{{{run_id}}}:live-events"  # pub/sub channel of the run's progress

    dashboard = "dsm:dashboard"  # URL of a running dashboard over this Redis (expires)
