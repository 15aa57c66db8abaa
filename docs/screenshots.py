"""Screenshots of every dashboard page for the README (``docs/images/*.png``).

Runs a small image-like pipeline (16 chunks: load, filter, features, then a tree of
merges) several times with several planners on the local backend, records metrics in a
private redis-server, starts ``dask-serverless dashboard`` over it and captures each page
with headless Chromium. The realtime page is captured while a run is going.

    python docs/screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.dashboard import launcher
from dask_serverless.dashboard.screenshot import CHARTS_DRAWN, Chromium, charts_ready
from dask_serverless.storage.embedded import EmbeddedRedis, free_port

log = logging.getLogger("pipeline")


def load(i: int, n: int) -> np.ndarray:
    log.info("chunk %d: generating %dx%d", i, n, n)
    return np.random.default_rng(i).random((n, n))


def smooth(img: np.ndarray) -> np.ndarray:
    out = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1)) / 3
    if out.mean() > 0.5:
        log.warning("bright chunk: mean %.3f", out.mean())
    return out


def features(img: np.ndarray) -> np.ndarray:
    return np.histogram(img, bins=64)[0]


def merge(*hists: np.ndarray) -> np.ndarray:
    return np.sum(hists, axis=0)


def pipeline(n: int, chunks: int = 16):
    level = [delayed(features)(delayed(smooth)(delayed(load)(i, n))) for i in range(chunks)]
    while len(level) > 1:
        level = [delayed(merge)(*level[i:i + 4]) for i in range(0, len(level), 4)]
    return level[0]


def slow(i: int) -> int:
    time.sleep(0.6)
    return i


def live_workflow():
    parts = [delayed(slow)(i) for i in range(24)]
    return delayed(sum)([delayed(slow)(p) for p in parts])


RUNS = [("wukong", []), ("per-task", []), ("uniform", []),
        ("wukong", ["pre-warm", "task-dup", "delayed-io", "pre-load"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"))
    parser.add_argument("--runs", type=int, default=3, help="runs per planner")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(prefer="redis-server")
    url = redis.start()
    proc = None
    try:
        with dask.config.set({"serverless.redis-url": url,
                              "serverless.dashboard.open-browser": False}):
            for planner, passes in RUNS:
                for _ in range(args.runs):
                    dask.compute(pipeline(300), scheduler=serverless_get, planner=planner,
                                 optimizations=passes)
            proc, dashboard = launcher.start(url, free_port())
            if not launcher.wait_healthy(dashboard, 90, proc):
                raise RuntimeError("the dashboard did not start")
            with Chromium(width=1500, height=900) as browser:
                for page, charts in (("workflow", 4), ("planners", 2), ("predictions", 2),
                                     ("simulator", 1)):
                    path = "" if page == "workflow" else page  # the default page is "/"
                    shot = browser.capture(launcher.page_url(dashboard, path),
                                           out / f"{page}.png", charts_ready(charts),
                                           settle=2.0)
                    print(f"{page}: {shot['charts']} charts, {shot['png']:,} bytes")
                worker = threading.Thread(target=dask.compute, args=(live_workflow(),),
                                          kwargs={"scheduler": serverless_get,
                                                  "serverless_dashboard": True,
                                                  "parallelism": 4})
                worker.start()
                time.sleep(4)  # part of the run is done
                shot = browser.capture(
                    launcher.page_url(dashboard, "realtime"), out / "realtime.png",
                    f"({CHARTS_DRAWN}) >= 1 && document.body.innerText.includes('running')",
                    settle=0.5)
                print(f"realtime: {shot['charts']} charts, {shot['png']:,} bytes")
                worker.join()
    finally:
        if proc is not None:
            launcher.stop(proc)
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
