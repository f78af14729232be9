"""Does a CPU-bound pipeline scale with producers? And how fast do they start?

1. Throughput of a CPU-bound pipeline (numpy augmentation of about
   ``--augment-ms`` per batch: random crops, flips, per-channel
   normalisation and noise) through a Prefetcher with 1, 2, ... producers,
   the consumer only taking batches; the ratio to one producer. On a
   2-core machine the target for 2 producers is >= 1.8x; the run says
   whether it was met (``target`` in the JSON).
2. Time to the first batch for each start method (fork, forkserver,
   spawn), from constructing the Prefetcher, for a first and a second
   Prefetcher in the process (the forkserver starts once).
3. Start-up with an in-memory dataset (gpu_idle.py's 40 MB of uint8
   images and its augmentation): for each start method and
   ``--start-workers`` producers, the time to the first batch (of a
   Prefetcher that is not the process's first) and each producer's own
   memory (USS, median over producers), medians of ``--repeat``.

    python benchmarks/scaling.py [--workers 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from typing import Any

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import check_quiet, machine, summary, table, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, SIDE, CROP = 64, 72, 64
TARGET = 1.8  # 2 producers against 1, on a 2-core machine


class HeavyAugment:
    """Crop, flip, normalise and add noise, ``rounds`` times over."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.rng: numpy.random.Generator | None = None

    def __call__(self, batch: tuple[Any, ...]) -> tuple[numpy.ndarray, numpy.ndarray]:
        if self.rng is None:
            self.rng = numpy.random.default_rng(os.getpid())
        images, labels = batch
        mean = numpy.array([0.485, 0.456, 0.406], numpy.float32)[:, None, None]
        std = numpy.array([0.229, 0.224, 0.225], numpy.float32)[:, None, None]
        out = numpy.empty((len(images), 3, CROP, CROP), numpy.float32)
        for _ in range(self.rounds):
            for i, image in enumerate(images):
                top, left = self.rng.integers(0, SIDE - CROP + 1, 2)
                crop = image[:, top:top + CROP, left:left + CROP].astype(numpy.float32)
                if self.rng.random() < 0.5:
                    crop = crop[:, :, ::-1]
                out[i] = (crop / 255.0 - mean) / std
            out += self.rng.normal(0, 0.01, out.shape).astype(numpy.float32)
        return out, labels


def stream(batches: int, rounds: int) -> Any:
    from shmfuel.datasets import IndexableDataset
    from shmfuel.schemes import SequentialScheme
    from shmfuel.streams import DataStream
    from shmfuel.transformers import Mapping
    rng = numpy.random.RandomState(0)
    n = batches * BATCH
    data = {"images": rng.randint(0, 256, (n, 3, SIDE, SIDE), dtype=numpy.uint8),
            "labels": numpy.arange(n)}
    return Mapping(DataStream(IndexableDataset(data),
                              iteration_scheme=SequentialScheme(n, BATCH)),
                   HeavyAugment(rounds))


def calibrate(target_ms: float) -> int:
    """Rounds of augmentation that take about ``target_ms`` per batch."""
    sample = stream(1, 1)
    batch = next(sample.data_stream.get_epoch_iterator())
    augment = HeavyAugment(1)
    augment(batch)
    started = time.perf_counter()
    for _ in range(5):
        augment(batch)
    one = (time.perf_counter() - started) / 5 * 1000
    return max(1, round(target_ms / one))


def throughput(workers: int, batches: int, rounds: int, epochs: int) -> float:
    from shmfuel import Prefetcher
    with Prefetcher(stream(batches, rounds), workers=workers, hwm=4 * workers) as prefetched:
        for _ in prefetched.get_epoch_iterator():  # warm-up epoch
            pass
        started = time.perf_counter()
        for _ in range(epochs):
            for _ in prefetched.get_epoch_iterator():
                pass
        return batches * epochs / (time.perf_counter() - started)


def first_batch(method: str) -> list[float]:
    """Seconds to the first batch for a first and a second Prefetcher."""
    script = f"""
import sys, time
sys.path.insert(0, {HERE!r})
from scaling import stream
from shmfuel import Prefetcher
s = stream(2, 1)
for _ in range(2):
    started = time.perf_counter()
    with Prefetcher(s, start_method={method!r}) as p:
        next(p.get_epoch_iterator())
        print(time.perf_counter() - started)
"""
    import subprocess
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    return [float(x) for x in out.stdout.split()]


def start_up(method: str, workers: list[int], repeat: int, batches: int) -> dict[str, Any]:
    """Seconds to the first batch and producer USS (MB) per producer count."""
    script = f"""
import json, sys, time
sys.path.insert(0, {HERE!r})
import psutil
from gpu_idle import make_dataset, shmfuel_stream
from shmfuel import Prefetcher
data = make_dataset({batches})
with Prefetcher(shmfuel_stream(data), start_method={method!r}) as p:
    next(p.get_epoch_iterator())  # the forkserver, if any, starts here
for _ in range({repeat}):
    for n in {workers!r}:
        started = time.perf_counter()
        with Prefetcher(shmfuel_stream(data), workers=n, hwm=max(8, 2 * n),
                        start_method={method!r}) as p:
            next(p.get_epoch_iterator())
            first = time.perf_counter() - started
            uss = sorted(psutil.Process(q.pid).memory_full_info().uss
                         for q in p._pool.processes)
        print(json.dumps([n, first, uss[len(uss) // 2] / 1e6]))
"""
    import json
    import subprocess
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, check=True)
    found: dict[int, dict[str, list[float]]] = {}
    for line in out.stdout.splitlines():
        n, first, uss = json.loads(line)
        found.setdefault(n, {"first": [], "uss": []})
        found[n]["first"].append(first)
        found[n]["uss"].append(uss)
    return {str(n): {"time_to_first_batch_s": summary(v["first"]),
                     "producer_uss_mb": summary(v["uss"])} for n, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--augment-ms", type=float, default=10.0)
    parser.add_argument("--batches", type=int, default=40, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start-workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "scaling.json"))
    args = parser.parse_args()
    check_quiet()
    dataset_batches = 10  # gpu_idle.py's default: 40 MB
    if args.quick:
        args.batches, args.epochs, args.repeat, args.augment_ms = 6, 1, 1, 2.0
        args.start_workers, dataset_batches = [1, 2], 2
    rounds = calibrate(args.augment_ms)
    rates: dict[int, Any] = {}
    for workers in args.workers:
        runs = [throughput(workers, args.batches, rounds, args.epochs)
                for _ in range(args.repeat)]
        rates[workers] = summary(runs)
        print(f"workers={workers}: {rates[workers]['median']:.1f} batches/s", file=sys.stderr)
    base = rates[args.workers[0]]["median"]
    rows = [[str(w), f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f})",
             f"{r['median'] / base:.2f}x"] for w, r in rates.items()]
    print(f"CPU-bound pipeline, ~{args.augment_ms:.0f} ms of augmentation per batch of "
          f"{BATCH}, {os.cpu_count()} cores, median (min-max) of {args.repeat}")
    print(table(["producers", "batches/s", f"vs {args.workers[0]}"], rows))
    target = None
    if 1 in rates and 2 in rates:
        ratio = rates[2]["median"] / rates[1]["median"]
        target = {"at_least": TARGET, "ratio": ratio, "met": ratio >= TARGET}
        print(f"target on a 2-core machine: 2 producers >= {TARGET}x 1 producer: "
              f"{ratio:.2f}x, {'met' if target['met'] else 'not met'}")
    starts = {}
    for method in multiprocessing.get_all_start_methods():
        starts[method] = first_batch(method)
    print("\ntime to first batch (s), from constructing the Prefetcher:")
    print(table(["start method", "first Prefetcher", "second Prefetcher"],
                [[m, f"{t[0]:.3f}", f"{t[1]:.3f}"] for m, t in starts.items()]))
    with_data = {method: start_up(method, args.start_workers, args.repeat, dataset_batches)
                 for method in multiprocessing.get_all_start_methods()}
    print(f"\nstart-up with a {dataset_batches * 256 * 3 * 72 * 72 / 1e6:.0f} MB "
          f"in-memory dataset, median (min-max) of {args.repeat}:")
    print(table(["start method", "producers", "first batch s", "USS per producer MB"],
                [[method, n, f"{r['time_to_first_batch_s']['median']:.3f} "
                  f"({r['time_to_first_batch_s']['min']:.3f}-"
                  f"{r['time_to_first_batch_s']['max']:.3f})",
                  f"{r['producer_uss_mb']['median']:.0f}"]
                 for method, by_n in with_data.items() for n, r in by_n.items()]))
    write_json(args.out, {"benchmark": "scaling", "machine": machine(),
                          "augment_ms": args.augment_ms, "batch": BATCH,
                          "throughput": {str(w): r for w, r in rates.items()},
                          "target": target,
                          "time_to_first_batch_s": starts,
                          "start_up_with_dataset": {
                              "dataset_mb": dataset_batches * 256 * 3 * 72 * 72 / 1e6,
                              "results": with_data}})


if __name__ == "__main__":
    main()
