"""Read throughput of on-disk datasets, in-process and through the Prefetcher.

The same data (``--examples`` examples of 3x32x32 uint8 images plus int64
labels) is read in shuffled batches of ``--batch-size`` from:

* ``IndexableDataset`` over in-memory arrays (the reference);
* ``NpyDataset`` over memory-mapped ``.npy`` files;
* ``H5PYDataset`` out of memory (reading the file per request) and
  ``load_in_memory=True``;

each in-process and through a Prefetcher with 1 and 2 producers. The files
are written just before, so they sit in the page cache: this measures what
the dataset classes cost, not the disk. Median of ``--repeat`` epochs
(after one warm-up epoch), MB/s of example data delivered.

    python benchmarks/disk_datasets.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import check_quiet, machine, summary, table, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def make_files(directory: str, examples: int) -> dict[str, Any]:
    from shmfuel.converters import to_hdf5
    rng = numpy.random.RandomState(0)
    images = rng.randint(0, 256, size=(examples, 3, 32, 32)).astype(numpy.uint8)
    labels = rng.randint(0, 10, size=examples).astype(numpy.int64)
    numpy.save(os.path.join(directory, "images.npy"), images)
    numpy.save(os.path.join(directory, "labels.npy"), labels)
    h5 = to_hdf5(os.path.join(directory, "data.hdf5"),
                 {"train": {"images": images, "labels": labels}})
    return {"images": images, "labels": labels, "hdf5": h5,
            "npy": {"images": os.path.join(directory, "images.npy"),
                    "labels": os.path.join(directory, "labels.npy")}}


def datasets(files: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    from shmfuel.datasets import IndexableDataset, NpyDataset
    found: dict[str, Callable[[], Any]] = {
        "IndexableDataset (memory)": lambda: IndexableDataset(
            {"images": files["images"], "labels": files["labels"]}),
        "NpyDataset (memmap)": lambda: NpyDataset(files["npy"]),
    }
    try:
        import h5py  # noqa: F401

        from shmfuel.datasets import H5PYDataset
        found["H5PYDataset (file)"] = lambda: H5PYDataset(
            files["hdf5"], which_sets=("train",))
        found["H5PYDataset (in memory)"] = lambda: H5PYDataset(
            files["hdf5"], which_sets=("train",), load_in_memory=True)
    except ImportError:
        print("H5PYDataset skipped: pip install 'shmfuel[hdf5]'", file=sys.stderr)
    return found


def epoch_seconds(stream: Any) -> tuple[float, int]:
    started = time.perf_counter()
    nbytes = 0
    for images, labels in stream.get_epoch_iterator():
        nbytes += images.nbytes + labels.nbytes
    return time.perf_counter() - started, nbytes


def measure(make: Callable[[], Any], examples: int, batch_size: int,
            workers: int, repeat: int) -> dict[str, Any]:
    from shmfuel import Prefetcher
    from shmfuel.schemes import ShuffledScheme
    from shmfuel.streams import DataStream
    stream = DataStream(make(), iteration_scheme=ShuffledScheme(
        examples, batch_size, rng=numpy.random.RandomState(1)))
    if workers:
        stream = Prefetcher(stream, workers=workers, hwm=4 * workers)
    try:
        epoch_seconds(stream)  # warm-up
        runs = [epoch_seconds(stream) for _ in range(repeat)]
    finally:
        stream.close()
    return {"mb_per_s": summary([n / s / 1e6 for s, n in runs]),
            "batches_per_s": summary([-(-examples // batch_size) / s for s, _ in runs])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "disk_datasets.json"))
    args = parser.parse_args()
    check_quiet()
    if args.quick:
        args.examples, args.repeat = 2000, 1
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as directory:
        files = make_files(directory, args.examples)
        for name, make in datasets(files).items():
            results[name] = {}
            for workers, mode in ((0, "in-process"), (1, "Prefetcher w=1"),
                                  (2, "Prefetcher w=2")):
                results[name][mode] = measure(make, args.examples, args.batch_size,
                                              workers, args.repeat)
                print(f"{name:<26} {mode:<15} "
                      f"{results[name][mode]['mb_per_s']['median']:8.1f} MB/s",
                      file=sys.stderr)
    base = results["IndexableDataset (memory)"]["in-process"]["mb_per_s"]["median"]
    rows = []
    for name, modes in results.items():
        for mode, result in modes.items():
            rate = result["mb_per_s"]["median"]
            rows.append([name, mode, f"{rate:.1f}",
                         f"{result['batches_per_s']['median']:.0f}", f"{rate / base:.2f}x"])
    print(f"{args.examples} examples of 3x32x32 uint8 + label, shuffled batches of "
          f"{args.batch_size}, median of {args.repeat} epochs")
    print(table(["dataset", "read", "MB/s", "batches/s", "vs memory in-process"], rows))
    write_json(args.out, {"benchmark": "disk_datasets", "machine": machine(),
                          "examples": args.examples, "batch_size": args.batch_size,
                          "repeat": args.repeat, "results": results})


if __name__ == "__main__":
    main()
