"""The README's tables, in markdown, from the JSON in ``benchmarks/results/``.

    python benchmarks/report.py [--results benchmarks/results]

Each table is printed under the command that measured it, so README's
numbers can be refreshed by pasting, and always match the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = ["512 B", "64 KiB", "1 MiB", "38.5 MB"]
TRANSPORTS = ["memcpy", "read", "memcpy + read", "bare shm ring",
              "shmfuel Prefetcher w=1", "shmfuel Prefetcher w=2",
              "multiprocessing.Queue", "pyzmq PUSH/PULL tcp",
              "Fuel-style server tcp", "shmfuel bridge tcp",
              "torch DataLoader w=1", "torch DataLoader w=2"]


def _load(results: str, name: str) -> dict[str, Any] | None:
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _spread(summary: dict[str, float], digits: int = 3) -> str:
    return (f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-"
            f"{summary['max']:.{digits}f})")


def seed_table(data: dict[str, Any]) -> list[str]:
    results = data["results"]
    serial = results["serial"]["training_s"]["median"]
    lines = [_row(["mode", "training s", "whole process s", "speed-up"]),
             _row(["---"] * 4)]
    for mode, label in (("serial", "serial"), ("prefetcher", "Prefetcher"),
                        ("bridge", "bridge")):
        result = results[mode]
        lines.append(_row([label, _spread(result["training_s"]),
                           _spread(result["process_s"]),
                           f"{serial / result['training_s']['median']:.2f}x"]))
    return lines


def gpu_idle_table(data: dict[str, Any]) -> list[str]:
    results = data["results"]
    # runs from before the host's step time was recorded lack that column
    calls = all("step_call_ms_p50" in r for r in results.values())
    # and those from before steady-state producer CPU was, that column
    per_batch = all("producer_cpu_ms_per_batch" in r for r in results.values())
    # and those from before the loop's wait for a CPU was, that one
    cpu_wait = all(r.get("loop_cpu_wait_pct") is not None for r in results.values())
    headers = ["feeder", "utilisation %" + (
        f" (median of {data['rounds']} rounds, min-max)" if data.get("rounds", 1) > 1
        else ""), "steady-state %", "wait per step ms p50 / p95 / max"]
    headers += ["step call ms p50"] if calls else []
    headers += ["first batch s", "producer CPU %"]
    headers += ["producer CPU ms per batch"] if per_batch else []
    headers += ["peak shared MB"]
    headers += ["loop waited for a CPU %"] if cpu_wait else []
    lines = [_row(headers), _row(["---"] * len(headers))]
    order = sorted(results, key=lambda name: (
        "in-process" not in name, "shmfuel" not in name, name))
    for name in order:
        r = results[name]
        wait = r["wait_ms"]
        rounds = r.get("rounds_utilisation_pct")
        cells = [name, f"{r['utilisation_pct']:.1f}" + (
            f" ({min(rounds):.1f}-{max(rounds):.1f})" if rounds else ""),
                 f"{r['steady_utilisation_pct']:.1f}"
                 if "steady_utilisation_pct" in r else "-",
                 f"{wait['p50']:.2f} / {wait['p95']:.2f} / {wait['max']:.1f}"]
        cells += [f"{r['step_call_ms_p50']:.2f}"] if calls else []
        cells += [f"{r['time_to_first_batch_s']:.3f}", f"{r['producer_cpu_pct']:.0f}"]
        if per_batch:
            value = r["producer_cpu_ms_per_batch"]
            cells += ["-" if value is None or "in-process" in name else f"{value:.1f}"]
        cells += [f"{r['peak_shared_mb']:.0f}"]
        cells += [f"{r['loop_cpu_wait_pct']:.1f}"] if cpu_wait else []
        lines.append(_row(cells))
    return lines


def throughput_table(data: dict[str, Any]) -> list[str]:
    sizes = sorted(data["results"], key=lambda size: SIZES.index(size)
                   if size in SIZES else len(SIZES))
    found = {name for by_name in data["results"].values() for name in by_name}
    names = sorted(found, key=lambda name: TRANSPORTS.index(name)
                   if name in TRANSPORTS else len(TRANSPORTS))
    lines = [_row(["transport"] + sizes), _row(["---"] * (len(sizes) + 1))]
    for name in names:
        cells = [name]
        for size in sizes:
            result = data["results"][size].get(name)
            if result is None:
                cells.append("-")
                continue
            rate = result["batches_per_s"]["median"]
            gb = result["gb_per_s"]["median"]
            cells.append(f"{rate:,.0f}" if size == "512 B"
                         else f"{rate:,.0f} ({gb:.2f})")
        lines.append(_row(cells))
    return lines


def targets_table(data: dict[str, Any]) -> list[str]:
    """The transport targets, worked out from every round's rates (so
    results written before the benchmark reported them get them too)."""
    from throughput import check_targets
    from throughput import targets_table as rows_of
    headers, rows = rows_of(check_targets(data["results"]))
    return [_row(headers), _row(["---"] * len(headers))] + [_row(row) for row in rows]


def scaling_lines(data: dict[str, Any]) -> list[str]:
    one = data["throughput"]["1"]["median"]
    two = data["throughput"]["2"]["median"]
    first = data["time_to_first_batch_s"]
    lines = [f"1 producer {one:.1f} batches/s, 2 producers {two:.1f} "
             f"({two / one:.2f}x); time to first batch: "
             + ", ".join(f"{method} {times[0]:.3f} s (then {times[1]:.3f} s)"
                         for method, times in first.items())]
    start_up = data.get("start_up_with_dataset")
    if start_up:
        lines += ["", _row(["start method", "producers", "first batch s",
                            "USS per producer MB"]), _row(["---"] * 4)]
        for method in sorted(start_up["results"], key=lambda m: m != "fork"):
            by_n = start_up["results"][method]
            lines.append(_row([
                method, " / ".join(by_n),
                " / ".join(f"{r['time_to_first_batch_s']['median']:.3f}"
                           for r in by_n.values()),
                " / ".join(f"{r['producer_uss_mb']['median']:.0f}"
                           for r in by_n.values())]))
    return lines


def disk_table(data: dict[str, Any]) -> list[str]:
    modes = ["in-process", "Prefetcher w=1", "Prefetcher w=2"]
    lines = [_row(["dataset", "in-process MB/s", "Prefetcher w=1",
                   "Prefetcher w=2"]), _row(["---"] * 4)]
    for dataset, by_mode in data["results"].items():
        lines.append(_row([dataset] + [
            f"{by_mode[m]['mb_per_s']['median']:.0f}" if m in by_mode else "-"
            for m in modes]))
    return lines


def launch_bound_lines(data: dict[str, Any]) -> list[str]:
    def ms(results: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['ms_per_step']:.2f}" for r in results)
    lines = []
    if "gpu_ms_host_ms" in data:
        lines.append("GPU ms per step: " + ", ".join(
            f"{gpu:.2f}" for gpu, _ in data["gpu_ms_host_ms"]) + "; host ms to queue it: "
            + ", ".join(f"{host:.2f}" for _, host in data["gpu_ms_host_ms"]))
    lines.append(f"ms per step, blocks in a row: {ms(data['drift'])}; "
                 f"last block: {data['drift_end']['ms_per_step']:.2f}")
    lines.append(f"augmentation between steps: {data['augment_between']['ms_per_step']:.2f} "
                 f"(step call {data['augment_between']['call_p50']:.2f}), then none: "
                 f"{data['after_augment_between']['ms_per_step']:.2f}")
    for key, label in (("loaded", "busy processes"),
                       ("pinned", "busy processes, the loop on a CPU of its own")):
        if data.get(key):
            lines.append(f"{label}: " + ", ".join(
                f"{r['k']}: {r['ms_per_step']:.2f}" for r in data[key]))
    return lines


REPORTS = [
    ("seed_tutorial.json", "python benchmarks/seed_tutorial.py", seed_table),
    ("gpu_idle_cpu.json", "python benchmarks/gpu_idle.py --device cpu --plot",
     gpu_idle_table),
    ("gpu_idle_cpu_idle.json", "python benchmarks/gpu_idle.py --device cpu "
     "--idle-producers --rounds 3 --plot --out "
     "benchmarks/results/gpu_idle_cpu_idle.json", gpu_idle_table),
    ("gpu_idle_cpu_loop_wait.json", "python benchmarks/gpu_idle.py --device cpu "
     "--idle-producers --only Prefetcher --rounds 3 --out "
     "benchmarks/results/gpu_idle_cpu_loop_wait.json", gpu_idle_table),
    ("gpu_idle_cuda.json", "python benchmarks/gpu_idle.py --device cuda --plot",
     gpu_idle_table),
    ("gpu_idle_cuda_graph.json", "python benchmarks/gpu_idle.py --device cuda --graph "
     "--rounds 3 --plot", gpu_idle_table),
    ("gpu_idle_cuda_graph_h200.json", "the same on an H200 machine", gpu_idle_table),
    ("throughput.json", "python benchmarks/throughput.py --repeat 5", throughput_table),
    ("throughput.json", "python benchmarks/throughput.py --repeat 5: its targets",
     targets_table),
    ("throughput_run1.json", "the same, 53 minutes earlier (--out "
     "benchmarks/results/throughput_run1.json): its targets", targets_table),
    ("throughput_run2.json", "the same, 12 minutes earlier (--out "
     "benchmarks/results/throughput_run2.json): its targets", targets_table),
    ("throughput_read_sum.json", "python benchmarks/throughput.py --repeat 5 --read sum "
     "--out benchmarks/results/throughput_read_sum.json: its targets", targets_table),
    ("throughput_slow_phase.json", "python benchmarks/throughput.py --repeat 5 --out "
     "benchmarks/results/throughput_slow_phase.json (a slow phase): its targets",
     targets_table),
    ("throughput_512B_hwm64.json", "python benchmarks/throughput.py --sizes "
     "'512 B' --hwm 64 --only memcpy read ring Prefetcher pyzmq "
     "--out benchmarks/results/throughput_512B_hwm64.json", throughput_table),
    ("throughput_producers.json", "python benchmarks/throughput.py --sizes '512 B' "
     "'64 KiB' '38.5 MB' --only 'bare shm' Prefetcher --repeat 5 --out "
     "benchmarks/results/throughput_producers.json (2 producers looking again "
     "a sched_yield apart)", throughput_table),
    ("throughput_gpu_machine.json", "python benchmarks/throughput.py --sizes '512 B' "
     "'38.5 MB' --only memcpy 'bare shm' Prefetcher pyzmq --repeat 5 "
     "(in benchmarks/gpu_check.sh)",
     throughput_table),
    ("throughput_gpu_machine_h100.json", "the same with 3 rounds, on the H100 machine, "
     "before the per-batch work was cut", throughput_table),
    ("launch_bound_cuda.json", "python benchmarks/launch_bound.py", launch_bound_lines),
    ("scaling.json", "python benchmarks/scaling.py", scaling_lines),
    ("disk_datasets.json", "python benchmarks/disk_datasets.py", disk_table),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    for name, command, render in REPORTS:
        data = _load(args.results, name)
        if data is None:
            continue
        machine = data.get("machine")
        if machine:
            extra = "".join(f", {data[key]}" for key in ("gpu", "torch") if key in data)
            print(f"<!-- {command}: {machine['date']}, {machine['cpus']} CPUs, "
                  f"Python {machine['python']}, numpy {machine['numpy']}{extra} -->")
        else:
            print(f"<!-- {command}: {data.get('cpus')} CPUs -->")
        print("\n".join(render(data)))
        print()


if __name__ == "__main__":
    main()
