"""Wall time of the attacker's search with one worker and with two sharing a journal-file study.

Runs tests/scripts/search_worker.py (the tiny model, every trial queued, one thread per worker) once alone and
twice side by side, each in a fresh folder and cache, and prints the two wall times and their ratio; the goal is
<= 0.6x on a machine with a core per worker. Run it with the machine otherwise idle:

    python benchmarks/search_workers.py --out benchmarks/results-cpu-tiny-workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "tests" / "scripts" / "search_worker.py"


def timed(n_workers: int, root: Path, trials: int) -> float:
    """Seconds until ``n_workers`` workers on one storage and folder have all finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNLEARNABLE_CACHE": str(root / "cache")}
    args = [sys.executable, str(WORKER), "--out", str(root / "out"), "--storage", f"journal:{root / 'studies.log'}",
            "--trials", str(trials)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(n_workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker failed: {err[-1000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the timings here (JSON)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trials", type=int, default=8, help="trials per study (two studies: two threat models)")
    args = parser.parse_args()
    rows = []
    for r in range(args.repeats):
        for n in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                seconds = timed(n, Path(tmp), args.trials)
            rows.append({"workers": n, "repeat": r, "seconds": round(seconds, 2)})
            print(f"workers {n} repeat {r}: {seconds:.1f} s", flush=True)
    one = min(x["seconds"] for x in rows if x["workers"] == 1)
    two = min(x["seconds"] for x in rows if x["workers"] == 2)
    print(f"two workers / one worker (best of {args.repeats}): {two / one:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "trials": args.trials, "ratio_best": two / one, "cpus": os.cpu_count(),
                                              "platform": platform.platform(), "processor": platform.processor()},
                                             indent=1))


if __name__ == "__main__":
    main()
