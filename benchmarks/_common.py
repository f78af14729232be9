"""Helpers shared by the benchmark scripts: machine description, output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from typing import Any


def machine() -> dict[str, Any]:
    import numpy
    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
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
