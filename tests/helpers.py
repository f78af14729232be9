"""Pipelines shared by the prefetcher tests."""

from __future__ import annotations

import os
import time

import numpy
import psutil

from shmfuel.datasets import IndexableDataset
from shmfuel.schemes import SequentialScheme, ShuffledScheme
from shmfuel.streams import DataStream


def shuffled_stream(n=60, batch_size=7, seed=5):
    dataset = IndexableDataset({
        "x": numpy.arange(n * 3, dtype="float32").reshape(n, 3),
        "name": [f"example-{i}" for i in range(n)],
    })
    return DataStream(dataset, iteration_scheme=ShuffledScheme(
        n, batch_size, rng=numpy.random.RandomState(seed)))


def sequential_stream(n=20, batch_size=2):
    dataset = IndexableDataset({"x": numpy.arange(n)})
    return DataStream(dataset, iteration_scheme=SequentialScheme(n, batch_size))


def as_lists(batches):
    return [tuple(v.tolist() if isinstance(v, numpy.ndarray) else v for v in b)
            for b in batches]


def gone(pids, patience=10.0):
    """Wait until none of ``pids`` runs (zombies count as gone)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def shared_mapping_of(address):
    """The /proc/self/maps line of the mapping holding ``address``."""
    with open(f"/proc/{os.getpid()}/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                return line
    return None


def _use_inherited(stream, epoch, writer):
    try:
        next(epoch)
        writer.send("no error")
    except Exception as exc:
        writer.send(f"{type(exc).__name__}: {exc}")
    stream.close()
    writer.close()


def ask_a_fork(stream, epoch):
    """Fork a child that tries ``epoch`` (of the parent's ``stream``: a
    Prefetcher or a client), then closes the stream; what it was told, and
    its pid."""
    import multiprocessing
    fork = multiprocessing.get_context("fork")
    reader, writer = fork.Pipe(duplex=False)
    child = fork.Process(target=_use_inherited, args=(stream, epoch, writer))
    child.start()
    writer.close()
    assert reader.poll(20), "the child said nothing"
    message = reader.recv()
    child.join(10)
    assert child.exitcode == 0
    return message, child.pid
