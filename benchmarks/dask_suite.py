"""Dask's own test suite through ``serverless_get``, compared with a
``distributed.LocalCluster``: which tests fail on each, and which fail only on ours.

Chosen modules of the installed ``dask`` package's tests (arrays, bags, dataframes,
delayed: tests that compute) run once per scheduler, each in its own pytest process with
``benchmarks/dask_suite_plugin.py`` sending every compute to that scheduler (see there).
The summary lists the failure counts and the tests that fail on serverless but not on the
LocalCluster (those are ours to fix), with their error messages.

    python benchmarks/dask_suite.py [--schedulers serverless,localcluster] \
        [--modules bag/tests/test_bag.py,...] [--out benchmarks/out/dask_suite] [-k EXPR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

MODULES = [
    "bag/tests/test_bag.py",
    "tests/test_delayed.py",
    "array/tests/test_array_core.py",
    "dataframe/tests/test_shuffle.py",
    "dataframe/tests/test_multi.py",
]
HERE = Path(__file__).resolve().parent
# dask's tests under their own rootdir, without this project's pytest settings
_ISOLATED = ["-p", "no:cacheprovider", "--rootdir=.", "-c", os.devnull]


def dask_dir() -> Path:
    import dask

    return Path(dask.__file__).parent


def collect(paths: list[str], extra: list[str]) -> int:
    """How many tests the modules hold (for the progress bar)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          *_ISOLATED, *extra, *paths],
                         capture_output=True, text=True, cwd=dask_dir().parent)
    return sum(1 for line in out.stdout.splitlines() if "::" in line)


def run(scheduler: str, paths: list[str], extra: list[str], out: Path,
        timeout: int, resume: bool = False) -> dict[str, dict]:
    """Run the modules on one scheduler; {test id: {"outcome", "message"}}. A test that
    crashes the whole pytest process is recorded as ``crashed`` and the run goes on
    after it (``resume``: after the tests an earlier run recorded)."""
    outcomes = out / f"{scheduler}.jsonl"
    if not resume:
        outcomes.unlink(missing_ok=True)
    total = collect(paths, extra)
    env = dict(os.environ, DASK_SUITE_SCHEDULER=scheduler, DASK_SUITE_OUTCOMES=str(outcomes),
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", *_ISOLATED, "-p", "dask_suite_plugin",
           f"--timeout={timeout}", "-W", "ignore", *extra, *paths]
    with tqdm(total=total, desc=scheduler, unit="test") as bar, \
            open(out / f"{scheduler}.log", "a" if resume else "w") as log:
        seen = _count(outcomes)
        bar.update(seen)
        while True:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=dask_dir().parent)
            while proc.poll() is None:
                time.sleep(2)
                now = _count(outcomes)
                bar.update(now - seen)
                seen = now
            if proc.returncode in (0, 1, 5) or not _record_crash(outcomes, proc.returncode):
                break
        bar.update(_count(outcomes) - seen)
    results = {}
    if outcomes.exists():
        for line in outcomes.read_text().splitlines():
            entry = json.loads(line)
            results[entry.pop("test")] = entry
    return results


def _record_crash(outcomes: Path, returncode: int) -> bool:
    """Record the test that was running when pytest died; False when none was."""
    running = Path(f"{outcomes}.running")
    if not running.exists():
        return False
    test = running.read_text().strip()
    running.unlink()
    with open(outcomes, "a") as f:
        f.write(json.dumps({"test": test, "outcome": "crashed",
                            "message": f"pytest died (exit code {returncode})"}) + "\n")
    return True


def _count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def failed(results: dict[str, dict]) -> set[str]:
    return {t for t, e in results.items() if e["outcome"] in ("failed", "error", "crashed")}


def summarize(all_results: dict[str, dict[str, dict]]) -> str:
    lines = []
    names = list(all_results)
    for name in names:
        res = all_results[name]
        counts: dict[str, int] = {}
        for e in res.values():
            counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
        lines.append(f"{name:13s} tests {len(res):5d}  " + "  ".join(
            f"{k} {v}" for k, v in sorted(counts.items())))
    if "serverless" in all_results and len(names) > 1:
        ours = all_results["serverless"]
        for other in names:
            if other == "serverless":
                continue
            theirs = all_results[other]
            only = sorted(failed(ours) - failed(theirs))
            fixed = sorted(failed(theirs) - failed(ours))
            lines.append(f"\nfail on serverless, not on {other}: {len(only)}")
            lines += [f"  {t}: {ours[t]['message'][:200]}" for t in only]
            lines.append(f"fail on {other}, not on serverless: {len(fixed)}")
            lines += [f"  {t}: {theirs[t]['message'][:200]}" for t in fixed]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedulers", default="serverless,localcluster",
                        help="comma-separated: serverless, localcluster, sync")
    parser.add_argument("--modules", default=",".join(MODULES),
                        help="test files relative to the dask package")
    parser.add_argument("--out", default="benchmarks/out/dask_suite")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--reuse", action="store_true",
                        help="read earlier outcomes of a scheduler instead of running it")
    parser.add_argument("--resume", action="store_true",
                        help="run only the tests an earlier run did not record")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = [f"dask/{m}" for m in args.modules.split(",") if m]  # run from dask's parent
    extra = ["-k", args.keyword] if args.keyword else []
    all_results = {}
    for name in args.schedulers.split(","):
        saved = out / f"{name}.jsonl"
        if args.reuse and saved.exists():
            all_results[name] = {json.loads(line)["test"]: json.loads(line)
                                 for line in saved.read_text().splitlines()}
            continue
        all_results[name] = run(name, paths, extra, out, args.timeout, args.resume)
    text = summarize(all_results)
    (out / "summary.txt").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
