"""Helpers shared by the benchmark scripts: machine description, output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

# CPUs' worth of time other processes used just before the run (check_quiet)
_OTHERS_BUSY: list[float] = []


def others_busy(seconds: float = 0.5, stat: str = "/proc/stat") -> float | None:
    """How many CPUs' worth of time every other process used while this one
    slept ``seconds``, from Linux's ``/proc/stat``; None elsewhere."""
    def busy_total() -> tuple[int, int]:
        with open(stat) as f:
            ticks = [int(t) for t in f.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    try:
        busy0, total0 = busy_total()
        time.sleep(seconds)
        busy1, total1 = busy_total()
    except (OSError, ValueError):
        return None
    if total1 == total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def check_quiet(most: float = 0.1) -> None:
    """Before a run: warn when other processes keep more than ``most`` of a
    CPU busy, since every rate measured then is lower and noisier (a stray
    process waking every 10 ms, at 12% of a CPU, cost the 512-byte ring up
    to 40%). The value goes into the JSON's ``machine``."""
    busy = others_busy()
    if busy is None:
        return
    _OTHERS_BUSY[:] = [busy]
    if busy > most:
        print(f"warning: other processes kept {busy:.2f} CPUs busy just before "
              "this run; stop them for numbers worth comparing (ps -eo "
              "pid,pcpu,args --sort=-pcpu)", file=sys.stderr)


def machine() -> dict[str, Any]:
    import numpy
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    if _OTHERS_BUSY:
        info["others_busy_cpus"] = round(_OTHERS_BUSY[0], 3)
    try:
        import psutil
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def run_queue_s() -> float | None:
    """The seconds this process has spent runnable but not running: its
    wait for a CPU, from Linux's ``/proc/self/schedstat``; None elsewhere.
    A loop alone with its producers on enough CPUs has next to none; where
    other processes are busy, it loses the CPU for milliseconds at a time,
    and every rate with it."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "runs": len(values)}


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
