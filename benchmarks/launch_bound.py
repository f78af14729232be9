"""How steady is gpu_idle's eager (launch-bound) step on this machine?

gpu_idle.py's ResNet-18 step, run eagerly, is paced by the host's Python
and kernel launches, not by the GPU. With no feeder at all, this measures:

1. the GPU's own time per step (the GPU held back while the host queues
   the step) against the host's time to queue it (``gpu_ms_host_ms``);
2. the step's wall time in six blocks of ``--steps`` steps in a row
   (``drift``);
3. the same with gpu_idle's augmentation run in the loop's thread between
   steps, and just after (``augment_between``, ``after_augment_between``):
   the in-process feeder's effect on the step, without its data;
4. the same while K other processes run the augmentation flat out, each
   block with K > 0 after one with none (``loaded``; each process's wall
   and CPU ms per batch in ``load_ms_per_batch_wall_cpu``);
5. the same with the loop on one CPU and the K processes on the others,
   away from that CPU's hyperthread siblings (``pinned``).

    python benchmarks/launch_bound.py [--device cuda] [--steps 150]

Writes ``benchmarks/results/launch_bound_<device>.json``. ``--device cpu``
runs the model on the CPU, only to try the script (``--quick``: a few
steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import check_quiet, machine  # noqa: E402
from gpu_idle import BATCH, ModelStep, augment, make_dataset  # noqa: E402

# one background process: augment random batches until its time is up, then
# print its wall and CPU ms per batch
LOAD = """
import os, sys, time, numpy
sys.path.insert(0, HERE)
from gpu_idle import BATCH, augment, make_dataset
data = make_dataset(4)
rng = numpy.random.default_rng(os.getpid())
end = time.perf_counter() + float(sys.argv[1])
n, wall, cpu = 0, time.perf_counter(), time.process_time()
while time.perf_counter() < end:
    rows = numpy.sort(rng.permutation(4 * BATCH)[:BATCH])
    augment(data["images"][rows], data["labels"][rows], rng)
    n += 1
print((time.perf_counter() - wall) * 1000 / max(n, 1),
      (time.process_time() - cpu) * 1000 / max(n, 1))
""".replace("HERE", repr(HERE))


def siblings(cpu: int) -> set[int]:
    """``cpu`` and its hyperthread siblings."""
    found = {cpu}
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
            listed = f.read().strip()
    except OSError:
        return found
    for part in listed.split(","):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


class Bench:
    def __init__(self, device: str, steps: int, duration_s: float) -> None:
        self.steps, self.duration_s = steps, duration_s
        self.accelerator = ModelStep(device)
        self.data = make_dataset(10)
        self.batch = self.accelerator.to_device(augment(
            self.data["images"][:BATCH], self.data["labels"][:BATCH],
            numpy.random.default_rng(0)))
        for _ in range(min(20, steps)):
            self.accelerator.step(self.batch)
        self.accelerator.sync()

    def floor(self, between: Callable[[], Any] | None = None) -> dict[str, Any]:
        """``steps`` steps in a row on the batch in place: wall ms per step
        and the host's ms per step call (p50)."""
        calls = []
        self.accelerator.sync()
        started = time.perf_counter()
        for _ in range(self.steps):
            if between is not None:
                between()
            called = time.perf_counter()
            self.accelerator.step(self.batch)
            calls.append(time.perf_counter() - called)
        self.accelerator.sync()
        wall = time.perf_counter() - started
        return {"ms_per_step": 1000 * wall / self.steps,
                "call_p50": 1000 * float(numpy.median(calls))}

    def loaded(self, k: int, cpus: set[int] | None = None,
               main_cpus: set[int] | None = None) -> dict[str, Any]:
        """The floor while ``k`` processes augment flat out (on ``cpus``,
        the loop on ``main_cpus``)."""
        old = os.sched_getaffinity(0)
        processes = [subprocess.Popen(
            [sys.executable, "-c", LOAD, str(self.duration_s)], stdout=subprocess.PIPE,
            text=True, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
            for _ in range(k)]
        try:
            if main_cpus:
                os.sched_setaffinity(0, main_cpus)
            time.sleep(0.5 if k else 0)  # their imports and dataset first
            result = self.floor()
        finally:
            if main_cpus:
                os.sched_setaffinity(0, old)
            per_batch = []
            for process in processes:
                out, _ = process.communicate(timeout=self.duration_s + 30)
                per_batch.append([float(x) for x in out.split()])
        result["k"] = k
        result["load_ms_per_batch_wall_cpu"] = per_batch
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true",
                        help="a few steps, K up to 1: a smoke test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    check_quiet()
    if args.quick:
        args.steps = 1
    out = args.out or os.path.join(HERE, "results", f"launch_bound_{args.device}.json")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            parser.error("--device cuda needs a CUDA device; use --device cpu")
    cpus = sorted(os.sched_getaffinity(0))
    report: dict[str, Any] = {"machine": machine(), "cpus": os.cpu_count(),
                              "affinity": cpus}
    try:
        report["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True,
                                         timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        report["lscpu"] = repr(exc)
    report["siblings"] = {cpu: ",".join(map(str, sorted(siblings(cpu)))) for cpu in cpus}

    bench = Bench(args.device, args.steps, duration_s=0)
    if args.device == "cuda":
        report["gpu_ms_host_ms"] = bench.accelerator.gpu_and_host_ms(bench.batch, 5)
        print("GPU ms, host ms per step:", report["gpu_ms_host_ms"], file=sys.stderr)
    report["drift"] = [bench.floor() for _ in range(2 if args.quick else 6)]
    print("ms per step, blocks in a row:",
          [round(d["ms_per_step"], 2) for d in report["drift"]], file=sys.stderr)
    bench.duration_s = max(2.0, 1.5 * args.steps * report["drift"][0]["ms_per_step"] / 1000
                           + 1.0)
    rng = numpy.random.default_rng(0)
    images, labels = bench.data["images"][:BATCH], bench.data["labels"][:BATCH]
    report["augment_between"] = bench.floor(between=lambda: augment(images, labels, rng))
    report["after_augment_between"] = bench.floor()
    print("augmentation between steps, then none:", report["augment_between"],
          report["after_augment_between"], file=sys.stderr)

    report["loaded"] = []
    for k in [0, 1] if args.quick else [0, 2, 0, 4, 0, 8, 0, 14]:
        if k and k >= len(cpus):
            continue
        report["loaded"].append(bench.loaded(k))
        print(f"{k} busy processes:", report["loaded"][-1], file=sys.stderr)

    main_cpu = cpus[0]
    others = set(cpus) - siblings(main_cpu)
    report["pinned"] = []
    for k in ([] if not others else [0, 1] if args.quick
              else [0, min(8, len(others)), len(others)]):
        result = bench.loaded(k, cpus=others, main_cpus={main_cpu})
        result["main_cpu"], result["others"] = main_cpu, sorted(others)
        report["pinned"].append(result)
        print(f"{k} busy processes, loop on CPU {main_cpu} alone:", result, file=sys.stderr)
    report["drift_end"] = bench.floor()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
