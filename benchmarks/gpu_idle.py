"""Is the accelerator waiting for data? Utilisation per way of feeding it.

A training loop takes batches of 256 random 64x64 crops (with random
horizontal flips, scaled to float32) of a uint8 in-memory image dataset and
runs a step on each. The step is either

* ``--device cpu``: a calibrated sleep of ``--step-ms`` (as MLPerf
  Storage/DLIO simulate accelerators), so the benchmark runs anywhere, or
* ``--device cuda``: a real model (torchvision's ResNet-18 if installed,
  else a small conv net) in bf16 autocast, batches copied with
  ``non_blocking=True``. Run eagerly, a small model like this one is
  launch-bound: the host's Python, not the GPU, sets its pace. With
  ``--graph`` the step is captured once as a CUDA graph and replayed, so
  that the GPU sets it (see ``GraphStep``).

The loop is fed in-process, by torch's DataLoader (2/4/8 workers, pinned
memory on CUDA), by shmfuel's Prefetcher (2/4/8 producers, with and without
``pin_memory`` on CUDA) and by the bridge (server with 2 producers); with
``--idle-producers`` the DataLoader, Prefetcher and bridge modes also run
with their worker processes at idle CPU priority (``worker_init_fn``). For
each mode: utilisation = pure compute time (the same steps with the data
already in place) / wall time, over all steps after the first batch and
in the steady state (after ``--warmup`` steps, which fill every feeder's
queues: a shmfuel ring's first fill also has the kernel zero its new
slots); the wait for data per step (p50/p95/max,
H2D copy included); the time a step call takes on the host (p50: a
launch-bound model's steps slow down when feeders compete for the CPU or
the GIL); time to the first batch; CPU used by producer
processes (% of one core, and ms per batch in the steady state, without
their start-up); peak shared memory (growth of the system's ``Shmem``);
the share of the loop's time it was ready to run but waited for a CPU
(Linux: more busy producers than free CPUs, or another process). With ``--rounds N`` every mode runs N times, in rounds, and the pure
compute time is measured before and after each round; a round counts
against the faster of its two (see ``summarise``). The JSON is written
after every round. ``--plot`` writes a PNG (needs matplotlib). On CUDA the
JSON also has the GPU's own time per step (``gpu_step_ms``).

    python benchmarks/gpu_idle.py --device cpu [--quick]
    python benchmarks/gpu_idle.py --device cuda [--graph --rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import check_quiet, machine, run_queue_s, table, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, CROP, SIDE = 256, 64, 72


# -- the pipeline ---------------------------------------------------------------

def make_dataset(batches: int, seed: int = 0) -> dict[str, numpy.ndarray]:
    rng = numpy.random.RandomState(seed)
    n = batches * BATCH
    return {"images": rng.randint(0, 256, size=(n, 3, SIDE, SIDE), dtype=numpy.uint8),
            "labels": rng.randint(0, 1000, size=n).astype(numpy.int64)}


def augment(images: numpy.ndarray, labels: numpy.ndarray,
            rng: numpy.random.Generator) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Random crop + flip per image, scaled to float32 in [0, 1]."""
    n = len(images)
    out = numpy.empty((n, 3, CROP, CROP), dtype=numpy.float32)
    tops = rng.integers(0, SIDE - CROP + 1, n)
    lefts = rng.integers(0, SIDE - CROP + 1, n)
    flips = rng.random(n) < 0.5
    for i in range(n):
        crop = images[i, :, tops[i]:tops[i] + CROP, lefts[i]:lefts[i] + CROP]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    out *= 1 / 255.0
    return out, labels


class Augment:
    """The augmentation as a shmfuel mapping, with a per-process generator."""

    def __init__(self) -> None:
        self.rng: numpy.random.Generator | None = None

    def __call__(self, batch: tuple[Any, ...]) -> tuple[numpy.ndarray, numpy.ndarray]:
        if self.rng is None:
            self.rng = numpy.random.default_rng(os.getpid())
        return augment(batch[0], batch[1], self.rng)


def shmfuel_stream(data: dict[str, numpy.ndarray]) -> Any:
    from shmfuel.datasets import IndexableDataset
    from shmfuel.schemes import ShuffledScheme
    from shmfuel.streams import DataStream
    from shmfuel.transformers import Mapping
    n = len(data["labels"])
    return Mapping(DataStream(IndexableDataset(data), iteration_scheme=ShuffledScheme(
        n, BATCH, rng=numpy.random.RandomState(1))), Augment())


class TorchBatches:
    """torch map-style dataset whose items are whole augmented batches."""

    def __init__(self, data: dict[str, numpy.ndarray]) -> None:
        self.data = data
        self.order = numpy.random.RandomState(1).permutation(len(data["labels"]))
        self.augment = Augment()

    def __len__(self) -> int:
        return len(self.order) // BATCH

    def __getitem__(self, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        rows = numpy.sort(self.order[k * BATCH:(k + 1) * BATCH])
        return self.augment((self.data["images"][rows], self.data["labels"][rows]))


def forever(epochs: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    while True:
        yield from epochs()


# -- the accelerator ------------------------------------------------------------

class SleepStep:
    """A simulated accelerator: the step takes ``ms`` and frees the CPU."""

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000

    def to_device(self, batch: Any) -> Any:
        return batch

    def step(self, batch: Any) -> None:
        time.sleep(self.seconds)

    def sync(self) -> None:
        pass


class ModelStep:
    """A real model in bf16 autocast, on CUDA (or on the CPU, to check the
    script on a machine without a GPU)."""

    def __init__(self, device: str = "cuda") -> None:
        import torch
        self.torch = torch
        self.device = device
        if importlib.util.find_spec("torchvision") is not None:
            import torchvision
            model = torchvision.models.resnet18(num_classes=1000)
            self.name = "torchvision resnet18, bf16 autocast"
        else:
            self.name = "small conv net, bf16 autocast"
            model = torch.nn.Sequential(
                torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(128, 256, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                torch.nn.Linear(256, 1000))
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def to_device(self, batch: Any) -> Any:
        torch = self.torch
        images, labels = batch
        if isinstance(images, numpy.ndarray):
            images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        return (images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True))

    def step(self, batch: Any, cache: bool = True) -> None:
        torch = self.torch
        images, labels = batch
        with torch.autocast(self.device, dtype=torch.bfloat16, cache_enabled=cache):
            loss = torch.nn.functional.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def gpu_ms(self, batch: Any, repeat: int = 5) -> float:
        """The GPU's own time for one step (median of ``repeat``). Far
        under the step's time, the model is launch-bound: the host, not the
        GPU, sets the pace."""
        return float(numpy.median([gpu for gpu, _ in self.gpu_and_host_ms(batch, repeat)]))

    def gpu_and_host_ms(self, batch: Any, repeat: int) -> list[tuple[float, float]]:
        """``repeat`` times: the GPU's time for one step, and the host's
        time to queue it. The GPU is held back while the host queues the
        step, so that launching it does not count."""
        torch = self.torch
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(400_000_000)  # about 0.2 s: longer than queueing a step
            start.record()
            queued = time.perf_counter()
            self.step(batch)
            host = time.perf_counter() - queued
            end.record()
            torch.cuda.synchronize()
            times.append((start.elapsed_time(end), 1000 * host))
        return times


class GraphStep(ModelStep):
    """The same step, captured once as a CUDA graph and replayed (``--graph``).

    The host launches one graph per step instead of hundreds of kernels, so
    the GPU sets the pace, as it does for a model that is not launch-bound.
    A batch is copied on a side stream into one of two device buffers while
    the previous step runs; the step then waits for its buffer, copies it
    into the graph's input (on the device) and replays the graph. The
    current stream waits for each copy before the next batch is asked for,
    which is what pinned ring slots need (see shmfuel's pin_memory)."""

    def __init__(self, device: str = "cuda") -> None:
        super().__init__(device)
        torch = self.torch
        self.name += ", CUDA graph"

        def buffers() -> tuple[Any, Any]:
            return (torch.zeros((BATCH, 3, CROP, CROP), device=device),
                    torch.zeros(BATCH, dtype=torch.int64, device=device))
        self.inputs = buffers()
        self.staging = [buffers(), buffers()]
        self.copies = torch.cuda.Stream()
        self.staged = [torch.cuda.Event(), torch.cuda.Event()]
        self.free = [torch.cuda.Event(), torch.cuda.Event()]
        for event in self.free + self.staged:
            event.record()
        self.turn = 0
        side = torch.cuda.Stream()  # warm-up before capture, as torch asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                super().step(self.inputs, cache=False)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            super().step(self.inputs, cache=False)
        torch.cuda.synchronize()

    def to_device(self, batch: Any) -> int:
        torch = self.torch
        images, labels = batch
        if isinstance(images, numpy.ndarray):
            images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        turn, self.turn = self.turn, 1 - self.turn
        target = self.staging[turn]
        with torch.cuda.stream(self.copies):
            self.copies.wait_event(self.free[turn])
            target[0].copy_(images, non_blocking=True)
            target[1].copy_(labels, non_blocking=True)
            self.staged[turn].record(self.copies)
        return turn

    def step(self, batch: Any, cache: bool = True) -> None:
        stream = self.torch.cuda.current_stream()
        stream.wait_event(self.staged[batch])
        self.inputs[0].copy_(self.staging[batch][0], non_blocking=True)
        self.inputs[1].copy_(self.staging[batch][1], non_blocking=True)
        self.free[batch].record(stream)
        self.graph.replay()


# -- measurement ------------------------------------------------------------------

def shmem_bytes() -> int:
    """The system's Shmem (shared memory in use), from /proc/meminfo."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children_cpu() -> float:
    import psutil
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def run_mode(make: Callable[[], tuple[Iterator[Any], Callable[[], None]]],
             accelerator: Any, steps: int, warmup: int) -> dict[str, Any]:
    # sampled in the loop, not by a thread: a thread would make the
    # Prefetcher choose forkserver over fork
    base = peak = shmem_bytes()
    started = time.perf_counter()
    batches, close = make()
    waits, step_times = [], []
    first = None
    steady_started = None
    steady_cpu = 0.0
    try:
        for n in range(steps):
            if n == warmup:
                # a few ms, once: inside the all-steps wall time, before the
                # steady state's
                steady_cpu = children_cpu()
                steady_started = time.perf_counter()
            waited = time.perf_counter()
            batch = accelerator.to_device(next(batches))
            waits.append(time.perf_counter() - waited)
            if len(waits) % 10 == 1:  # reading /proc/meminfo costs ~50 us
                peak = max(peak, shmem_bytes())
            if first is None:
                first = time.perf_counter() - started
                loop_started = time.perf_counter()
                queued = run_queue_s()
            stepped = time.perf_counter()
            accelerator.step(batch)
            step_times.append(time.perf_counter() - stepped)
            del batch
        accelerator.sync()
        ended = time.perf_counter()
        wall = ended - loop_started
        steady = None if steady_started is None else ended - steady_started
        cpu = children_cpu()
        now = run_queue_s()
    finally:
        close()
    w = numpy.array(waits[1:]) * 1000
    return {"wall_s": wall, "steady_wall_s": steady, "wait_ms": {"p50": float(numpy.percentile(w, 50)),
                                        "p95": float(numpy.percentile(w, 95)),
                                        "max": float(w.max())},
            "step_call_ms_p50": 1000 * float(numpy.median(step_times)),
            "time_to_first_batch_s": first, "producer_cpu_pct": 100 * cpu / wall,
            # start-up (imports, unpickling the stream) left out
            "producer_cpu_ms_per_batch": (1000 * (cpu - steady_cpu) / (steps - warmup)
                                          if steady_started is not None else None),
            "peak_shared_mb": (peak - base) / 1e6,
            # the share of the loop's time it was ready to run but waited
            # for a CPU (producers, or another process, had them all)
            "loop_cpu_wait_pct": (None if queued is None or now is None
                                  else 100 * (now - queued) / wall)}


HELPERS = re.compile(r"multiprocessing\.(forkserver|resource_tracker) import main")


def settle(patience: float = 10.0) -> None:
    """Let the previous mode's processes exit, so they do not steal CPU."""
    import gc

    import psutil
    gc.collect()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        # multiprocessing's helpers (the forkserver, the resource tracker)
        # live as long as this process and are idle between modes
        children = [c for c in psutil.Process().children(recursive=True)
                    if not HELPERS.search(" ".join(c.cmdline()))]
        if not children:
            break
        time.sleep(0.05)
    time.sleep(0.2)


def pure_compute(accelerator: Any, data: dict[str, numpy.ndarray], steps: int) -> float:
    """Seconds for ``steps`` steps on one batch already in place (after a
    few untimed ones: allocator, kernel selection)."""
    batch = accelerator.to_device(augment(data["images"][:BATCH], data["labels"][:BATCH],
                                          numpy.random.default_rng(0)))
    for _ in range(min(20, steps)):
        accelerator.step(batch)
    accelerator.sync()
    started = time.perf_counter()
    for _ in range(steps):
        accelerator.step(batch)
    accelerator.sync()
    return time.perf_counter() - started


def idle_priority(worker: int) -> None:
    """A Prefetcher's ``worker_init_fn``: the producer runs only on a CPU
    that nothing else wants (Linux's SCHED_IDLE), so the training loop gets
    a CPU as soon as it wakes."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def modes(data: dict[str, numpy.ndarray], device: str, workers: list[int],
          include: list[str], idle: bool = False
          ) -> dict[str, Callable[[], tuple[Iterator[Any], Callable[[], None]]]]:
    found: dict[str, Callable[[], tuple[Iterator[Any], Callable[[], None]]]] = {}

    def in_process() -> tuple[Iterator[Any], Callable[[], None]]:
        stream = shmfuel_stream(data)
        return forever(stream.get_epoch_iterator), lambda: None
    found["in-process"] = in_process

    if importlib.util.find_spec("torch") is not None:
        def loader(n: int, idle: bool = False
                   ) -> Callable[[], tuple[Iterator[Any], Callable[[], None]]]:
            def make() -> tuple[Iterator[Any], Callable[[], None]]:
                from torch.utils.data import DataLoader
                dl = DataLoader(TorchBatches(data), batch_size=None, num_workers=n,
                                pin_memory=device == "cuda", persistent_workers=True,
                                shuffle=True,
                                worker_init_fn=idle_priority if idle else None)
                return forever(lambda: iter(dl)), lambda: dl._iterator._shutdown_workers() \
                    if getattr(dl, "_iterator", None) else None
            return make
        for n in workers:
            found[f"torch DataLoader w={n}"] = loader(n)
            if idle:
                found[f"torch DataLoader w={n} idle"] = loader(n, True)

    def prefetcher(n: int, pin: bool, idle: bool = False
                   ) -> Callable[[], tuple[Iterator[Any], Callable[[], None]]]:
        def make() -> tuple[Iterator[Any], Callable[[], None]]:
            from shmfuel import Prefetcher
            stream = Prefetcher(shmfuel_stream(data), workers=n, hwm=max(8, 2 * n),
                                pin_memory=pin,
                                worker_init_fn=idle_priority if idle else None)
            return forever(stream.get_epoch_iterator), stream.close
        return make
    for n in workers:
        found[f"shmfuel Prefetcher w={n}"] = prefetcher(n, False)
        if idle:
            found[f"shmfuel Prefetcher w={n} idle"] = prefetcher(n, False, True)
        if device == "cuda":
            found[f"shmfuel Prefetcher w={n} pinned"] = prefetcher(n, True)
            if idle:
                found[f"shmfuel Prefetcher w={n} pinned idle"] = prefetcher(n, True, True)

    if importlib.util.find_spec("zmq") is not None:
        def bridge(idle: bool = False) -> tuple[Iterator[Any], Callable[[], None]]:
            import multiprocessing
            import socket

            from shmfuel.streams import ServerDataStream
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            server = multiprocessing.get_context("fork").Process(
                target=_serve, args=(data, port, idle))
            server.start()
            client = ServerDataStream(("images", "labels"), host="127.0.0.1", port=port,
                                      hwm=8, timeout=60)

            def close() -> None:
                client.close()
                server.terminate()
                server.join(10)
            return forever(client.get_epoch_iterator), close
        found["shmfuel bridge (2 producers)"] = bridge
        if idle:
            found["shmfuel bridge (2 producers) idle"] = lambda: bridge(True)
    if include:
        found = {k: v for k, v in found.items() if any(word in k for word in include)}
    return found


def _serve(data: dict[str, numpy.ndarray], port: int, idle: bool = False) -> None:
    from shmfuel.server import start_server
    start_server(shmfuel_stream(data), port=port, workers=2,  # until SIGTERM
                 worker_init_fn=idle_priority if idle else None)


def plot(path: str, results: dict[str, Any], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)[::-1]
    values = [results[n]["utilisation_pct"] for n in names]
    steady = [results[n].get("steady_utilisation_pct", 0.0) for n in names]
    figure, axes = plt.subplots(figsize=(8, 0.6 * len(names) + 1.2))
    rows = numpy.arange(len(names))
    axes.barh(rows + 0.2, values, height=0.4, color="tab:blue",
              label="all steps")
    axes.barh(rows - 0.2, steady, height=0.4, color="tab:green",
              label="steady state")
    axes.set_yticks(rows, names)
    axes.legend(loc="lower right", fontsize=8)
    axes.axvline(95, color="tab:red", linestyle="--", linewidth=1)
    # over 100% (a mode faster than the floor) is drawn, not cut off
    axes.set_xlim(0, max([100.0] + [v + 5 for v in values + steady]))
    axes.set_xlabel("accelerator utilisation (%)")
    axes.set_title(textwrap.fill(title, 80), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "torch-cpu"], default="cpu",
                        help="cpu: simulated step; cuda: a real model on the GPU; "
                             "torch-cpu: the real-model code on the CPU (slow), to "
                             "check the script without a GPU")
    parser.add_argument("--step-ms", type=float, default=6.0,
                        help="simulated step time for --device cpu")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50,
                        help="steps left out of the steady-state utilisation "
                             "(the first fill of every feeder's queues)")
    parser.add_argument("--batches", type=int, default=10, help="batches per epoch")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="producer counts (default 2 4 8; 2 with --quick)")
    parser.add_argument("--only", nargs="+", default=[],
                        help="run only modes whose name contains one of these")
    parser.add_argument("--graph", action="store_true",
                        help="with --device cuda: capture the step as a CUDA graph, so "
                             "that the GPU and not kernel launches sets its pace")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every mode this many times, in rounds, with the "
                             "compute floor measured between rounds; the median "
                             "round is reported, and every round's utilisation")
    parser.add_argument("--idle-producers", action="store_true",
                        help="also run each DataLoader, Prefetcher and bridge mode with its "
                             "workers at idle CPU priority (SCHED_IDLE, through "
                             "worker_init_fn; Linux)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batches = 8, 2
    if args.workers is None:
        args.workers = [2] if args.quick else [2, 4, 8]
    if args.graph and args.device != "cuda":
        parser.error("--graph needs --device cuda (CUDA graphs)")
    if args.rounds < 1 or args.steps < 2:
        parser.error("--rounds must be at least 1 and --steps at least 2")
    if args.idle_producers and not hasattr(os, "SCHED_IDLE"):
        parser.error("--idle-producers needs Linux's SCHED_IDLE")
    warmup = min(args.warmup, args.steps // 2)
    name = f"gpu_idle_{args.device}{'_graph' if args.graph else ''}.json"
    out = args.out or os.path.join(HERE, "results", name)
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            parser.error("--device cuda needs a CUDA device; use --device cpu")
    data = make_dataset(args.batches)
    chosen = modes(data, args.device, args.workers, args.only, args.idle_producers)
    if not chosen:
        parser.error(f"no mode matches --only {' '.join(args.only)} (with --workers "
                     f"{' '.join(map(str, args.workers))})")
    check_quiet()
    if args.device == "cpu":
        accelerator: Any = SleepStep(args.step_ms)
    elif args.graph:
        accelerator = GraphStep()
    else:
        accelerator = ModelStep("cuda" if args.device == "cuda" else "cpu")
    floors = [pure_compute(accelerator, data, args.steps)]
    per_batch = []
    rng = numpy.random.default_rng(0)
    for k in range(min(5, args.batches)):
        started = time.perf_counter()
        augment(data["images"][k * BATCH:(k + 1) * BATCH],
                data["labels"][k * BATCH:(k + 1) * BATCH], rng)
        per_batch.append(time.perf_counter() - started)
    augment_ms = 1000 * float(numpy.median(per_batch))
    gpu_ms = None
    if args.device == "cuda":
        gpu_ms = accelerator.gpu_ms(accelerator.to_device(augment(
            data["images"][:BATCH], data["labels"][:BATCH], rng)))
        print(f"the GPU's own time per step {gpu_ms:.2f} ms", file=sys.stderr)
    print(f"step {1000 * floors[0] / args.steps:.2f} ms of compute, augmentation "
          f"{augment_ms:.2f} ms per batch on one core", file=sys.stderr)
    # every mode once per round, the compute floor measured before and after
    # each round (see ``summarise``)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for round_ in range(args.rounds):
        for name, make in chosen.items():
            settle()
            result = run_mode(make, accelerator, args.steps, warmup)
            runs[name].append(result)
            print(f"{name:<34} {1000 * result['wall_s'] / args.steps:6.2f} ms per step",
                  file=sys.stderr)
        settle()
        floors.append(pure_compute(accelerator, data, args.steps))
        print(f"step {1000 * floors[-1] / args.steps:.2f} ms of compute after round "
              f"{round_ + 1}", file=sys.stderr)
        # every round's results are written at once: a run cut short keeps them
        results = summarise(runs, floors, args.steps, warmup)
        payload = {"benchmark": "gpu_idle", "machine": machine(), "device": args.device,
                   "graph": args.graph, "rounds": round_ + 1,
                   "step_ms": 1000 * min(floors) / args.steps, "augment_ms": augment_ms,
                   "gpu_step_ms": gpu_ms,
                   "step_ms_before": 1000 * floors[0] / args.steps,
                   "step_ms_after": 1000 * floors[-1] / args.steps,
                   "step_ms_floors": [1000 * f / args.steps for f in floors],
                   "steps": args.steps, "warmup_steps": warmup, "batch": BATCH,
                   "results": results}
        if args.device != "cpu":
            payload["model"] = accelerator.name
        if args.device == "cuda":
            import torch
            payload["gpu"] = torch.cuda.get_device_name()
            payload["torch"] = torch.__version__
        write_json(out, payload)

    def spread(r: dict[str, Any]) -> str:
        values = r.get("rounds_utilisation_pct")
        return f" ({min(values):.0f}-{max(values):.0f})" if values else ""
    rows = [[name, f"{r['utilisation_pct']:.1f}{spread(r)}",
             f"{r.get('steady_utilisation_pct', float('nan')):.1f}",
             f"{r['wait_ms']['p50']:.2f} / {r['wait_ms']['p95']:.2f} / {r['wait_ms']['max']:.1f}",
             f"{r['step_call_ms_p50']:.2f}",
             f"{r['time_to_first_batch_s']:.3f}", f"{r['producer_cpu_pct']:.0f}",
             "-" if r["producer_cpu_ms_per_batch"] is None
             else f"{r['producer_cpu_ms_per_batch']:.1f}",
             f"{r['peak_shared_mb']:.0f}",
             "-" if r.get("loop_cpu_wait_pct") is None
             else f"{r['loop_cpu_wait_pct']:.1f}"] for name, r in results.items()]
    where = f"{payload['gpu']}, " if "gpu" in payload else ""
    title = (f"{where}{args.device}{' (CUDA graph)' if args.graph else ''}: step "
             f"{payload['step_ms']:.1f} ms"
             f"{f' ({gpu_ms:.1f} on the GPU)' if gpu_ms else ''}, augmentation "
             f"{augment_ms:.1f} ms/batch, batch {BATCH}, {args.steps} steps"
             f"{f', median of {args.rounds} rounds' if args.rounds > 1 else ''}")
    print(title)
    print(table(["mode", "utilisation %", "steady %", "wait ms p50/p95/max",
                 "step call ms p50", "first batch s", "producer CPU %",
                 "producer CPU ms/batch", "peak shm MB", "loop waited for a CPU %"],
                rows))
    if args.plot:
        plot(out.replace(".json", ".png"), results, title)


def summarise(runs: dict[str, list[dict[str, Any]]], floors: list[float], steps: int,
              warmup: int) -> dict[str, Any]:
    """Each mode's median round, and every round's utilisation. Round ``k``
    counts against the faster of the floors measured before and after it,
    so that a step whose speed drifts (CPU clocks, a launch-bound model)
    does not flatter it."""
    results: dict[str, Any] = {}
    for name, rounds in runs.items():
        for k, result in enumerate(rounds):
            compute = min(floors[k], floors[k + 1])
            result["utilisation_pct"] = 100 * compute / result["wall_s"]
            if result["steady_wall_s"]:
                result["steady_utilisation_pct"] = (
                    100 * compute * (steps - warmup) / steps / result["steady_wall_s"])
        ranked = sorted(rounds, key=lambda r: r["utilisation_pct"])
        results[name] = dict(ranked[(len(ranked) - 1) // 2])  # the (lower) median
        if len(rounds) > 1:
            results[name]["rounds_utilisation_pct"] = [r["utilisation_pct"] for r in rounds]
            results[name]["rounds_steady_utilisation_pct"] = [
                r.get("steady_utilisation_pct") for r in rounds]
    return results


if __name__ == "__main__":
    main()
