"""Producer -> consumer throughput of shmfuel and of what users would pick instead.

For batch sizes of 512 B, 64 KiB, 1 MiB and 38.5 MB (64x3x224x224 float32),
a trivial pipeline hands the same batch over and over to a consumer that
reads every byte (``batch.max()``, or ``batch.sum()`` with ``--read sum``),
through:

* ``memcpy``: one ``numpy.copyto`` of the batch in-process into each of
  ``hwm`` buffers in turn, not read: the physical limit for "one copy into
  the slot";
* ``read``: the consumer's read alone, of a batch already in memory: with a
  producer copying in parallel, no transport can beat the slower of these
  two (on a 2-core machine they also share the memory bandwidth);
* ``memcpy + read``: the copy, then the read, one after the other in one
  process (what a consumer that made its own batches would do);
* ``bare shm ring``: a producer process copying the batch into a ring of
  ``hwm`` shared-memory slots and bumping a counter, the consumer spinning
  on it: the least any shared-memory transport written in Python does per
  batch (the reference behind the 512-byte target);
* shmfuel's ``Prefetcher`` with 1 and 2 producers;
* ``multiprocessing.Queue`` (pickling through a pipe);
* raw pyzmq PUSH/PULL over tcp loopback, receiving without copies and
  sending without copies from 64 KiB (below that, pyzmq's copying send is
  the faster);
* a Fuel-style server: Fuel's data server's way of sending, in a process
  that runs the same pipeline and sends each batch down a PUSH socket as
  a JSON header frame and one copied frame per array; the consumer parses
  the header and receives the arrays without copies;
* shmfuel's bridge (``start_server`` / ``ServerDataStream``);
* ``torch.utils.data.DataLoader`` with 1 and 2 persistent workers, when
  torch is installed.

The consumer's read is ``max`` by default because numpy's float32 ``sum``
(pairwise, with few vector lanes) reads at 6.5-6.8 GB/s on a 2-core machine
where a copy runs at 6.7-7.8 GB/s and ``max`` at 12 GB/s: with ``sum``, the
consumer's arithmetic, not the transport, sets the large batches' ceiling.
Both read every byte, and every transport gets the same read.

Throughput is the steady state: from batch ``2 * hwm`` to batch ``count -
hwm`` (at most a quarter of the run each side), so that neither the ring's
first fill (new slots must be zeroed by the kernel: about 25 ms per 38.5 MB
slot here) nor its final drain counts; the JSON also has the rate from the
first batch to the last (``whole_run``). Median of ``--repeat`` runs; the
table gives batches/s, GB/s and the ratio to the Prefetcher with one
producer. The repeats run in rounds, every transport once per round, so
that a slow phase of a noisy machine does not fall on one transport only,
and each ratio is the median of the ratios within a round (the JSON keeps
every round's rate, ``rounds``). Each table also gives the share of the
run in which the consumer was ready to run but waited for a CPU (Linux);
where the in-process measures waited over 5%, another process is busy and
the run says so (``warnings`` in the JSON). A last table checks the
targets set for a 2-core machine (``TARGETS``), round by round, for one
and for two producers, next to the bare ring's and the read's values on
the same measure; the JSON has them as ``targets``.

    python benchmarks/throughput.py [--quick] [--repeat 3] [--read max|sum]
"""

from __future__ import annotations

import argparse
import array
import importlib.util
import itertools
import mmap
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import check_quiet, machine, run_queue_s, summary, table, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"512 B": 512, "64 KiB": 64 * 2**10, "1 MiB": 2**20,
         "38.5 MB": 64 * 3 * 224 * 224 * 4}
COUNTS = {"512 B": 40000, "64 KiB": 10000, "1 MiB": 2000, "38.5 MB": 100}
FORK = multiprocessing.get_context("fork")
HWM = 16  # queue depth of every transport (--hwm)
REFERENCE = "shmfuel Prefetcher w=1"  # the ratios' denominator
# the consumer's read of every byte of each batch (--read)
READS: dict[str, Callable[[numpy.ndarray], Any]] = {
    "max": numpy.ndarray.max, "sum": numpy.ndarray.sum}
READ = READS["max"]

_BATCHES: dict[int, numpy.ndarray] = {}


class Timing(NamedTuple):
    steady_s: float
    steady_batches: int
    whole_s: float
    whole_batches: int
    # the share of the run the consumer spent ready to run but waiting for
    # a CPU (None where Linux's schedstat is missing)
    cpu_wait: float | None = None


def batch_of(nbytes: int) -> numpy.ndarray:
    """The batch of ``nbytes`` bytes, made once per process."""
    if nbytes not in _BATCHES:
        _BATCHES[nbytes] = numpy.ones(nbytes // 4, dtype=numpy.float32)
    return _BATCHES[nbytes]


def _constant_dataset_class() -> type:
    from shmfuel.datasets import Dataset

    class ConstantDataset(Dataset):
        """Answers every request with the same batch of ``nbytes``."""

        provides_sources = ("x",)

        def __init__(self, nbytes: int) -> None:
            super().__init__()
            self.nbytes = nbytes

        def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
            return (batch_of(self.nbytes),)
    return ConstantDataset


def trivial_stream(nbytes: int, count: int) -> Any:
    """A per-batch pipeline: ``count`` requests, each answered by the batch."""
    from shmfuel.schemes import ConstantScheme
    from shmfuel.streams import DataStream
    return DataStream(_constant_dataset_class()(nbytes),
                      iteration_scheme=ConstantScheme(1, times=count))


def consume(batches: Iterator[Any], count: int, read: bool = True) -> Timing:
    """Take (and read) ``count`` batches; when each one was done."""
    clock = time.perf_counter
    done = array.array("d")
    queued, began = run_queue_s(), clock()
    for _ in range(count):
        if read:
            float(READ(next(batches)))
        else:
            next(batches)
        done.append(clock())
    skip = min(2 * HWM, count // 4)
    tail = min(HWM, count // 4)
    last = count - 1 - tail
    now = run_queue_s()
    cpu_wait = (None if queued is None or now is None
                else (now - queued) / (done[-1] - began))
    return Timing(steady_s=done[last] - done[skip], steady_batches=last - skip,
                  whole_s=done[-1] - done[0], whole_batches=count - 1,
                  cpu_wait=cpu_wait)


# -- transports ---------------------------------------------------------------

def _ring_of_buffers(nbytes: int) -> list[numpy.ndarray]:
    """``hwm`` buffers used in turn, as the ring's slots are.

    One buffer used over and over would stay in the CPU's cache (this
    machine's L3 holds 300 MB) and measure the cache, not the memory that a
    ring of ``hwm`` large slots must go through.
    """
    buffers = [numpy.empty(nbytes // 4, numpy.float32) for _ in range(HWM)]
    for buffer in buffers:
        buffer.fill(1)
    return buffers


def run_memcpy(read: bool) -> Callable[[int, int], Timing]:
    def run(nbytes: int, count: int) -> Timing:
        source, targets = batch_of(nbytes), _ring_of_buffers(nbytes)

        def batches() -> Iterator[numpy.ndarray]:
            for target in itertools.cycle(targets):
                numpy.copyto(target, source)
                yield target
        return consume(batches(), count, read)
    return run


def run_read(nbytes: int, count: int) -> Timing:
    return consume(itertools.cycle(_ring_of_buffers(nbytes)), count)


def _ring_producer(shared: mmap.mmap, nbytes: int, count: int) -> None:
    words = memoryview(shared).cast("Q")  # [0] written, [8] read
    slots = _ring_slots(shared, nbytes)
    batch = batch_of(nbytes)
    for written in range(count):
        while written - words[8] >= HWM:
            pass
        slots[written % HWM][...] = batch
        words[0] = written + 1
    del words, slots


def _ring_slots(shared: mmap.mmap, nbytes: int) -> list[numpy.ndarray]:
    step = -(-nbytes // 4096) * 4096
    return [numpy.ndarray(nbytes // 4, numpy.float32, shared, 4096 + i * step)
            for i in range(HWM)]


def run_bare_ring(nbytes: int, count: int) -> Timing:
    """A ring of ``hwm`` shared-memory slots and two counters, both sides
    spinning: the least a shared-memory transport written in Python does
    per batch (no pipeline, no layout, no waiting without a core; correct
    only where stores become visible in order, as on x86)."""
    # an anonymous shared mapping, inherited by the forked producer: no
    # name to unlink, and unmapped once the last view of it is gone (closing
    # it explicitly would fail while the consumer's frames still hold views)
    step = -(-nbytes // 4096) * 4096
    shared = mmap.mmap(-1, 4096 + HWM * step)
    words, slots = memoryview(shared).cast("Q"), _ring_slots(shared, nbytes)
    producer = FORK.Process(target=_ring_producer, args=(shared, nbytes, count))
    producer.start()

    def batches(words: memoryview = words,
                slots: list[numpy.ndarray] = slots) -> Iterator[numpy.ndarray]:
        for read in itertools.count():
            while words[0] <= read:
                pass
            yield slots[read % HWM].view()
            words[8] = read + 1  # freed once the next batch is asked for
    try:
        return consume(batches(), count)
    finally:
        producer.join(10)


def run_prefetcher(workers: int) -> Callable[[int, int], Timing]:
    def run(nbytes: int, count: int) -> Timing:
        from shmfuel import Prefetcher
        with Prefetcher(trivial_stream(nbytes, count), hwm=HWM,
                        workers=workers) as stream:
            return consume((x for x, in stream.get_epoch_iterator()), count)
    return run


def _queue_producer(queue: Any, nbytes: int, count: int) -> None:
    batch = batch_of(nbytes)
    for _ in range(count):
        queue.put(batch)


def run_queue(nbytes: int, count: int) -> Timing:
    queue = FORK.Queue(HWM)
    producer = FORK.Process(target=_queue_producer, args=(queue, nbytes, count))
    producer.start()
    try:
        return consume((queue.get() for _ in range(count)), count)
    finally:
        producer.join(10)
        queue.close()
        queue.join_thread()


def _push(port: int, nbytes: int, count: int, fuel_style: bool) -> None:
    """Push ``count`` batches to ``port``: raw, or as Fuel's data server
    does (the stream runs in a loop that sends each batch as a JSON list of
    array headers, dtype, shape and order, then one copied frame per
    array)."""
    import json

    import zmq
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, HWM)
    push.connect(f"tcp://127.0.0.1:{port}")
    if fuel_style:
        for batch in trivial_stream(nbytes, count).get_epoch_iterator():
            values = [numpy.ascontiguousarray(value) for value in batch]
            headers = [{"descr": numpy.lib.format.dtype_to_descr(value.dtype),
                        "shape": value.shape, "fortran_order": False}
                       for value in values]
            push.send(json.dumps(headers).encode(), zmq.SNDMORE)
            for value in values[:-1]:
                push.send(value, zmq.SNDMORE)
            push.send(values[-1])
    else:
        batch = batch_of(nbytes)
        for _ in range(count):
            push.send(batch, copy=nbytes < 65536)
    # wait for the consumer's acknowledgement before closing (a closing
    # PUSH socket may drop its tail)
    push.close(linger=-1)
    context.term()


def run_pull(fuel_style: bool) -> Callable[[int, int], Timing]:
    def run(nbytes: int, count: int) -> Timing:
        import json

        import zmq
        context = zmq.Context()
        pull = context.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, HWM)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        producer = FORK.Process(target=_push,
                                args=(port, nbytes, count, fuel_style))
        producer.start()

        def raw() -> Iterator[numpy.ndarray]:
            while True:
                frame = pull.recv(copy=False)
                yield numpy.frombuffer(frame.buffer, numpy.float32)

        def fuel() -> Iterator[numpy.ndarray]:
            while True:
                values = []
                for header in json.loads(pull.recv()):
                    frame = pull.recv(copy=False)
                    value = numpy.frombuffer(frame.buffer, numpy.lib.format
                                             .descr_to_dtype(header["descr"]))
                    value = value.reshape(header["shape"])
                    values.append(value)
                yield values[0]
        try:
            return consume(fuel() if fuel_style else raw(), count)
        finally:
            producer.join(10)
            pull.close(0)
            context.term()
    return run


def _bridge_server(port: int, nbytes: int, count: int) -> None:
    from shmfuel.server import start_server
    start_server(trivial_stream(nbytes, count), port=port)  # until SIGTERM


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_bridge(nbytes: int, count: int) -> Timing:
    from shmfuel.streams import ServerDataStream
    port = _free_port()
    server = FORK.Process(target=_bridge_server, args=(port, nbytes, count))
    server.start()
    client = ServerDataStream(("x",), host="127.0.0.1", port=port, hwm=HWM)
    try:
        return consume((x for x, in client.get_epoch_iterator()), count)
    finally:
        client.close()
        server.terminate()
        server.join(10)


class _TorchBatches:
    def __init__(self, nbytes: int, count: int) -> None:
        self.nbytes, self.count = nbytes, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> numpy.ndarray:
        return batch_of(self.nbytes)


def run_dataloader(workers: int) -> Callable[[int, int], Timing]:
    def run(nbytes: int, count: int) -> Timing:
        from torch.utils.data import DataLoader
        loader = DataLoader(_TorchBatches(nbytes, count), batch_size=None,
                            num_workers=workers, persistent_workers=True,
                            multiprocessing_context="fork")
        try:
            return consume((t.numpy() for t in loader), count)
        finally:
            del loader
    return run


# -- targets ------------------------------------------------------------------

BARE = "bare shm ring"
READ_ALONE = "read"
PYZMQ = "pyzmq PUSH/PULL tcp"
# what the Prefetcher must reach on a 2-core machine: the batch size, the
# measure (None: batches/s; else the ratio to that transport within each
# round) and its least value; each is checked for each producer count run
TARGETS = [("512 B", None, 250_000.0),
           ("38.5 MB", "memcpy", 0.9),
           ("38.5 MB", PYZMQ, 4.0)]
PREFETCHERS = (REFERENCE, "shmfuel Prefetcher w=2")


def _measure(by_name: dict[str, Any], name: str, versus: str | None) -> list[float]:
    rounds = by_name[name]["rounds"]
    if versus is None:
        return list(rounds)
    return [a / b for a, b in zip(rounds, by_name[versus]["rounds"])]


def check_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target, for each Prefetcher (producer count) run with what it
    compares to: the value in every round, whether its median reaches the
    target, in how many rounds it did, and on the same measure the bare
    ring's value (what a transport that only hands batches over reached in
    the same rounds) and the read's alone (which no transport can beat:
    the consumer reads each batch)."""
    checks = []
    for size, versus, least in TARGETS:
        by_name = results.get(size, {})
        if versus is not None and versus not in by_name:
            continue
        for name in PREFETCHERS:
            if name not in by_name:
                continue
            values = _measure(by_name, name, versus)
            check = {"size": size, "transport": name, "versus": versus,
                     "measure": "batches/s" if versus is None
                     else f"ratio to {versus}", "at_least": least,
                     "value": summary(values),
                     "met": summary(values)["median"] >= least,
                     "rounds_met": sum(value >= least for value in values),
                     "rounds": len(values)}
            for bound in (BARE, READ_ALONE):
                if bound in by_name:
                    check[bound] = summary(_measure(by_name, bound, versus))
            checks.append(check)
    return checks


def targets_table(checks: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for ``table``: each target and Prefetcher, its
    median (min-max), whether and in how many rounds it reached the
    target, and the bare ring's and the read's medians on the same
    measure."""
    def show(value: float, ratio: bool, digits: int = 2) -> str:
        return f"{value:.{digits}f}x" if ratio else f"{value:,.0f}"
    rows = []
    for check in checks:
        ratio = check["versus"] is not None
        value = check["value"]
        what = check["versus"] if ratio else "batches/s"
        producers = check["transport"].rpartition("w=")[2]
        rows.append([f"{check['size']}: >= {show(check['at_least'], ratio, 1)} {what}",
                     producers, f"{show(value['median'], ratio)} ({show(value['min'], ratio)}"
                     f"-{show(value['max'], ratio)})",
                     f"{'yes' if check['met'] else 'no'} ({check['rounds_met']} of "
                     f"{check['rounds']} rounds)",
                     *(show(check[bound]["median"], ratio) if bound in check
                       else "-" for bound in (BARE, READ_ALONE))])
    return (["target", "producers", "Prefetcher median (min-max)", "met",
             f"{BARE}, same measure", "read alone, same measure"], rows)


# measured in-process: nothing of the benchmark's competes for the CPU
ALONE = ("memcpy", "read", "memcpy + read")
BUSY_SHARE = 0.05


def busy_machine(results: dict[str, dict[str, Any]]) -> list[str]:
    """A warning for each batch size whose in-process measures waited for a
    CPU over ``BUSY_SHARE`` of their runs (median): some other process was
    busy, and every rate at that size is lower and noisier for it."""
    warnings = []
    for label, by_name in results.items():
        waits = {name: by_name[name]["consumer_cpu_wait"]["median"]
                 for name in ALONE if "consumer_cpu_wait" in by_name.get(name, {})}
        worst = max(waits, key=waits.__getitem__, default=None)
        if worst is not None and waits[worst] > BUSY_SHARE:
            warnings.append(
                f"at {label}, '{worst}' waited for a CPU {100 * waits[worst]:.0f}% "
                "of the time with nothing else of this benchmark running: "
                "another process is busy on this machine (see top); stop it "
                "and run again")
    return warnings


def transports() -> dict[str, Callable[[int, int], Timing]]:
    found: dict[str, Callable[[int, int], Timing]] = {
        "memcpy": run_memcpy(read=False),
        "read": run_read,
        "memcpy + read": run_memcpy(read=True),
        BARE: run_bare_ring,
        REFERENCE: run_prefetcher(1),
        PREFETCHERS[1]: run_prefetcher(2),
        "multiprocessing.Queue": run_queue,
    }
    if importlib.util.find_spec("zmq") is not None:
        found[PYZMQ] = run_pull(fuel_style=False)
        found["Fuel-style server tcp"] = run_pull(fuel_style=True)
        found["shmfuel bridge tcp"] = run_bridge
    if importlib.util.find_spec("torch") is not None:
        found["torch DataLoader w=1"] = run_dataloader(1)
        found["torch DataLoader w=2"] = run_dataloader(2)
    return found


def main() -> None:
    global HWM, READ
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="one run with few batches: a smoke test")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only transports whose name contains one of these")
    parser.add_argument("--hwm", type=int, default=16,
                        help="queue depth of every transport (default 16)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "throughput.json"))
    parser.add_argument("--read", choices=list(READS), default="max",
                        help="how the consumer reads every byte of a batch "
                             "(default max: faster than a copy, unlike sum)")
    args = parser.parse_args()
    check_quiet()
    HWM, READ = args.hwm, READS[args.read]
    runs = transports()
    if args.only:
        runs = {name: run for name, run in runs.items()
                if any(word in name for word in args.only)}
    results: dict[str, dict[str, Any]] = {}
    for label in args.sizes:
        nbytes = SIZES[label]
        count = 20 if args.quick else COUNTS[label]
        results[label] = {}
        # rounds of every transport in turn: a phase of this machine's
        # varying speed then touches all of them, not one
        timed: dict[str, list[Timing]] = {name: [] for name in runs}
        for _ in range(1 if args.quick else args.repeat):
            for name, run in runs.items():
                timed[name].append(run(nbytes, count))
        reference = timed.get(REFERENCE)
        for name, timings in timed.items():
            rate = [t.steady_batches / t.steady_s for t in timings]
            whole = [t.whole_batches / t.whole_s for t in timings]
            results[label][name] = {
                "batches_per_s": summary(rate),
                "rounds": rate,  # batches/s of each round, in order
                # ratio to the reference's rate in the same round: steadier
                # than a ratio of medians when the machine changes speed
                "vs_reference": summary([
                    r * t.steady_s / t.steady_batches
                    for r, t in zip(rate, reference)]) if reference else None,
                "gb_per_s": summary([r * nbytes / 1e9 for r in rate]),
                "whole_run": {"batches_per_s": summary(whole),
                              "gb_per_s": summary([r * nbytes / 1e9 for r in whole])},
                "batches": count,
            }
            waits = [t.cpu_wait for t in timings if t.cpu_wait is not None]
            if waits:
                results[label][name]["consumer_cpu_wait"] = summary(waits)
            print(f"{label:>8}  {name:<24} {numpy.median(rate):>12,.0f} batches/s",
                  file=sys.stderr)
    for label, by_name in results.items():
        rows = []
        for name, result in by_name.items():
            rate = result["batches_per_s"]["median"]
            vs = result["vs_reference"]
            wait = result.get("consumer_cpu_wait")
            rows.append([name, f"{rate:,.0f}", f"{result['gb_per_s']['median']:.2f}",
                         f"{vs['median']:.2f}x" if vs else "-",
                         f"{result['whole_run']['gb_per_s']['median']:.2f}",
                         f"{100 * wait['median']:.1f}%" if wait else "-"])
        print(f"\n{label} batches (steady state, median of "
              f"{1 if args.quick else args.repeat}):")
        print(table(["transport", "batches/s", "GB/s", "vs Prefetcher w=1",
                     "GB/s whole run", "consumer waited for a CPU"], rows))
    warnings = busy_machine(results)
    for warning in warnings:
        print(f"\nwarning: {warning}")
    checks = check_targets(results)
    if checks:
        print("\nTargets on a 2-core machine (ratios within a round):")
        print(table(*targets_table(checks)))
    write_json(args.out, {"benchmark": "throughput", "machine": machine(), "hwm": HWM,
                          "reference": REFERENCE, "read": READ.__name__,
                          "repeat": 1 if args.quick else args.repeat,
                          "results": results, "targets": checks,
                          "warnings": warnings})


if __name__ == "__main__":
    main()
