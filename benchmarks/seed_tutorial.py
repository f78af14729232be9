"""The seed tutorial's pipeline, fed serially, by the Prefetcher and by the bridge.

The pipeline makes each batch in 5 ms, the training step takes 10 ms, five
epochs of ten batches: serially 0.75 s, ideally 0.50 s plus start-up. Each
mode runs in a fresh Python process (the bridge mode starts its server,
``python -m shmfuel serve``, from that process, so the server's start-up
counts too; Fuel's server was started by hand beforehand); the table gives the training time (the
seed's timer, started after the stream is built) and the whole-process time
(interpreter start, imports and start-up included), as medians over
``--repeat`` runs with min-max, and the speed-up over serial.

    python benchmarks/seed_tutorial.py            # table + JSON
    python benchmarks/seed_tutorial.py --quick    # one run, one epoch
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import check_quiet, machine, summary, table, write_json  # noqa: E402

MODES = ("serial", "prefetcher", "bridge")
HERE = os.path.dirname(os.path.abspath(__file__))


def create_data_stream(slowdown: float = 0.0):
    """The seed's stream: 1000 examples, batches of 100, ``slowdown`` each."""
    from shmfuel.datasets import IndexableDataset
    from shmfuel.schemes import ShuffledScheme
    from shmfuel.streams import DataStream
    from shmfuel.transformers import Transformer

    class Bottleneck(Transformer):
        def __init__(self, *args, **kwargs):
            self.slowdown = kwargs.pop("slowdown", 0)
            super().__init__(*args, **kwargs)

        def get_data(self, request=None):
            if request is not None:
                raise ValueError
            time.sleep(self.slowdown)
            return next(self.child_epoch_iterator)

    dataset = IndexableDataset({"features": [[0] * 128] * 1000})
    scheme = ShuffledScheme(examples=1000, batch_size=100)
    return Bottleneck(data_stream=DataStream.default_stream(
        dataset=dataset, iteration_scheme=scheme), slowdown=slowdown)


def served_stream():
    """What ``python -m shmfuel serve seed_tutorial:served_stream`` serves."""
    return create_data_stream(0.005)


def start_bridge_server():
    """The data server in a subprocess; returns it and its port."""
    import re
    server = subprocess.Popen(
        [sys.executable, "-m", "shmfuel", "serve", "seed_tutorial:served_stream",
         "--port", "0"], cwd=HERE, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        match = re.search(r"serving \w+ on tcp://[\d.]+:(\d+)", line)
        if match:
            return server, int(match.group(1))
    raise RuntimeError("the data server did not start")


def train(stream, epochs: int, step_s: float) -> int:
    batches = 0
    for _ in range(epochs):
        for _data in stream.get_epoch_iterator():
            time.sleep(step_s)
            batches += 1
    return batches


def child(mode: str, epochs: int) -> None:
    """One run, in this process; prints a JSON line."""
    from shmfuel import Prefetcher
    stream = create_data_stream(0.005)
    result = {"mode": mode}
    if mode == "serial":
        started = time.perf_counter()
        result["batches"] = train(stream, epochs, 0.01)
        result["training_s"] = time.perf_counter() - started
    elif mode == "bridge":
        from shmfuel.streams import ServerDataStream
        server, port = start_bridge_server()
        try:
            client = ServerDataStream(("features",), port=port, hwm=10)
            started = time.perf_counter()
            result["batches"] = train(client, epochs, 0.01)
            result["training_s"] = time.perf_counter() - started
            client.close()
        finally:
            server.terminate()
            server.wait(10)
            server.stderr.close()
    else:
        with Prefetcher(stream, hwm=10) as prefetched:
            started = time.perf_counter()
            result["batches"] = train(prefetched, epochs, 0.01)
            result["training_s"] = time.perf_counter() - started
            result["time_to_first_batch_s"] = prefetched.stats()["time_to_first_batch_s"]
            result["start_method"] = prefetched.start_method
    print(json.dumps(result))


def run(mode: str, epochs: int) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--epochs", str(epochs)],
                         capture_output=True, text=True, timeout=120, check=True)
    whole = time.perf_counter() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = whole
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run of one epoch")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "seed_tutorial.json"))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_quiet()
    if args.child:
        child(args.child, args.epochs)
        return
    if args.quick:
        args.repeat, args.epochs = 1, 1
    modes = [m for m in MODES if m in args.modes]
    if "bridge" in modes and importlib.util.find_spec("zmq") is None:
        print("bridge mode skipped: pip install 'shmfuel[zmq]'", file=sys.stderr)
        modes.remove("bridge")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:  # interleaved, so drift hits every mode alike
            runs[mode].append(run(mode, args.epochs))
    results = {}
    for mode in modes:
        results[mode] = {
            "training_s": summary([r["training_s"] for r in runs[mode]]),
            "process_s": summary([r["process_s"] for r in runs[mode]]),
            "batches": runs[mode][0]["batches"],
        }
        if mode == "prefetcher":
            results[mode]["time_to_first_batch_s"] = summary(
                [r["time_to_first_batch_s"] for r in runs[mode]])
            results[mode]["start_method"] = runs[mode][0]["start_method"]
    base = results["serial"]["training_s"]["median"]
    rows = []
    for mode in modes:
        t, p = results[mode]["training_s"], results[mode]["process_s"]
        rows.append([mode, f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})",
                     f"{p['median']:.3f} ({p['min']:.3f}-{p['max']:.3f})",
                     f"{base / t['median']:.2f}x"])
    ideal = 0.01 * 10 * args.epochs
    print(f"seed tutorial: {args.epochs} epochs x 10 batches, 5 ms to make, "
          f"10 ms to train; ideal training time {ideal:.2f} s; "
          f"median (min-max) of {args.repeat} runs")
    print(table(["mode", "training s", "whole process s", "speed-up"], rows))
    write_json(args.out, {"benchmark": "seed_tutorial", "machine": machine(),
                          "epochs": args.epochs, "repeat": args.repeat,
                          "results": results})


if __name__ == "__main__":
    main()
