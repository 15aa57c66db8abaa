"""Protocol timings and thresholds shared by the executor, the simulator and planners."""

FINAL_FLUSH_BYTES = 8 * 2**20  # final outputs are written in batches of about this size
# a batch's "outputs" event names at most this many of its outputs (the client downloads
# those during the run; the rest, tiny ones of large batches, at its end)
EVENT_OUTPUT_IDS = 1000
CANCEL_CHECK_S = 0.2  # how often a running invocation checks the run's cancel flag
PROGRESS_S = 0.1  # how often a worker reports task progress (when the client listens)
HOLD_POLL_S = 0.005  # delayed I/O: how often a holding worker checks its fan-ins
KEPT_MEMORY_FRACTION = 0.25  # of a worker's memory: values kept for fan-ins it may run
INLINE_CACHE_BYTES = 4 * 2**20  # small outputs' sealed bytes kept to send inline
LEASE_BEATS = 3  # a lease lasts this many heartbeat intervals after its last renewal
SPECULATION_MIN_SAMPLES = 3  # finished tasks of a function before a straggler of it counts
