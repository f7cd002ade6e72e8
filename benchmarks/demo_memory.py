"""Where the demo's resident memory goes: RSS sampled through one run, attributed to the progress bar that was open.

A sampler thread reads the process's current RSS (``/proc/self/statm``) every ``--interval`` seconds together
with the descriptions of the open tqdm bars, so each sample is tagged with the phase that was running (alignment,
vector training, fine-tuning, scoring, MMLU...). The summary gives each phase's peak and the RSS when it began;
the whole trace goes to ``--out`` for plotting.

    python benchmarks/demo_memory.py --out benchmarks/results-cpu-smollm2-demo-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e9


def open_bars() -> str:
    from tqdm import tqdm

    names = [str(getattr(bar, "desc", "") or "").strip(": ") for bar in list(getattr(tqdm, "_instances", ()))]
    return " / ".join(sorted(n for n in names if n)) or "(no bar)"


class Sampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((round(time.perf_counter() - self.t0, 2), round(current_rss_gb(), 3), open_bars()))
            self.stop.wait(self.interval)


def phases(samples: list[tuple[float, float, str]]) -> list[dict]:
    """Consecutive samples under the same bars form a phase; its peak and the RSS it started from."""
    out: list[dict] = []
    for t, rss, name in samples:
        if not out or out[-1]["phase"] != name:
            out.append({"phase": name, "start_s": t, "start_gb": rss, "peak_gb": rss, "seconds": 0.0})
        out[-1]["peak_gb"] = max(out[-1]["peak_gb"], rss)
        out[-1]["seconds"] = round(t - out[-1]["start_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--top", type=int, default=12, help="phases to print, highest peak first")
    parser.add_argument("--out", help="write the summary and the trace here (JSON)")
    args = parser.parse_args()
    from unlearnable import DemoConfig, run_demo

    sampler = Sampler(args.interval)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(DemoConfig(), Path(tmp) / "demo")
    sampler.stop.set()
    sampler.join()
    rows = phases(sampler.samples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    for row in sorted(rows, key=lambda r: -r["peak_gb"])[:args.top]:
        print(f"{row['peak_gb']:6.2f} GB peak (from {row['start_gb']:5.2f}, {row['seconds']:6.1f} s)  {row['phase']}")
    print(f"peak RSS of the run: {peak:.2f} GB")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                              "peak_rss_gb": peak, "phases": rows, "trace": sampler.samples},
                                             indent=1))


if __name__ == "__main__":
    main()
