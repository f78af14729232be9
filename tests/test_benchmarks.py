"""Smoke runs of the benchmark scripts, so they keep working (no timing checks)."""

import json
import os
import re
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")


def run_quick(tmp_path, script, *args, timeout=100):
    """``script --quick *args``: its output, and the JSON it wrote."""
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), "--quick", *args,
         "--out", str(out)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(out.read_text())


@pytest.mark.timeout(120)
def test_seed_tutorial_quick(tmp_path):
    stdout, data = run_quick(tmp_path, "seed_tutorial.py")
    assert "prefetcher" in stdout and "bridge" in stdout
    assert set(data["results"]) == {"serial", "prefetcher", "bridge"}
    assert data["results"]["prefetcher"]["batches"] == 10


@pytest.mark.timeout(120)
def test_throughput_quick(tmp_path):
    _, data = run_quick(tmp_path, "throughput.py", "--sizes", "512 B", "1 MiB")
    assert data["read"] == "max"  # the default read of every byte
    names = set(data["results"]["1 MiB"])
    assert {"memcpy", "bare shm ring", "shmfuel Prefetcher w=1", "shmfuel Prefetcher w=2",
            "multiprocessing.Queue", "pyzmq PUSH/PULL tcp", "Fuel-style server tcp",
            "shmfuel bridge tcp"} <= names
    for result in data["results"]["512 B"].values():
        assert result["batches_per_s"]["median"] > 0
        assert len(result["rounds"]) == 1 and result["rounds"][0] > 0
        if sys.platform == "linux":  # the consumer's wait for a CPU, a share
            assert 0 <= result["consumer_cpu_wait"]["median"] < 1
    assert isinstance(data["warnings"], list)
    reference = data["results"]["512 B"][data["reference"]]
    assert reference["vs_reference"]["median"] == pytest.approx(1.0)
    # the 512-byte target is checked, for 1 and 2 producers; the 38.5 MB
    # ones were not run
    target, second = data["targets"]
    assert target["size"] == "512 B" and target["at_least"] == 250_000
    assert target["transport"] == data["reference"] == "shmfuel Prefetcher w=1"
    assert second["transport"] == "shmfuel Prefetcher w=2"
    assert second["value"]["median"] == (
        data["results"]["512 B"]["shmfuel Prefetcher w=2"]["batches_per_s"]["median"])
    assert target["value"]["median"] == reference["batches_per_s"]["median"]
    assert target["met"] == (target["rounds_met"] == 1) and target["rounds"] == 1
    assert target["bare shm ring"]["median"] == (
        data["results"]["512 B"]["bare shm ring"]["batches_per_s"]["median"])
    assert target["read"]["median"] == (
        data["results"]["512 B"]["read"]["batches_per_s"]["median"])


@pytest.mark.timeout(120)
def test_throughput_read_sum(tmp_path):
    stdout, data = run_quick(tmp_path, "throughput.py", "--sizes", "64 KiB",
                             "--only", "read", "Prefetcher w=1", "--read", "sum")
    assert data["read"] == "sum"  # the name of the read the consumer used
    assert set(data["results"]["64 KiB"]) == {"read", "memcpy + read",
                                              "shmfuel Prefetcher w=1"}
    assert "64 KiB batches" in stdout


def run_beside_a_spinner(tmp_path, script, *args):
    """``script --quick *args`` on one CPU that a spinning process shares
    with it (the benchmark gets about half of it): its output and JSON."""
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        out = tmp_path / "out.json"
        result = subprocess.run(
            [sys.executable, os.path.join(BENCHMARKS, script), "--quick", *args,
             "--out", str(out)], capture_output=True, text=True, timeout=100,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    finally:
        spinner.kill()
        spinner.wait()
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux")
@pytest.mark.timeout(120)
def test_throughput_warns_when_another_process_takes_the_cpu(tmp_path):
    result, data = run_beside_a_spinner(tmp_path, "throughput.py", "--sizes",
                                        "38.5 MB", "--only", "memcpy")
    assert data["results"]["38.5 MB"]["memcpy"]["consumer_cpu_wait"]["median"] > 0.05
    warning, = data["warnings"]
    # the spinner was already busy before the run began
    assert "warning: other processes kept" in result.stderr
    assert data["machine"]["others_busy_cpus"] > 0.5
    # --only memcpy runs "memcpy + read" too: either may have waited most
    assert re.match(r"at 38\.5 MB, 'memcpy( \+ read)?' waited for a CPU \d+% of "
                    "the time", warning)
    assert "another process is busy" in warning and warning in result.stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux")
@pytest.mark.timeout(120)
def test_gpu_idle_measures_the_loop_s_wait_for_a_cpu(tmp_path):
    _, data = run_beside_a_spinner(tmp_path, "gpu_idle.py", "--device", "cpu",
                                   "--only", "in-process")
    # the in-process loop augments its own batches on the CPU it shares
    assert data["results"]["in-process"]["loop_cpu_wait_pct"] > 5


def test_other_processes_busy_before_a_run_are_measured_and_warned_of(
        tmp_path, monkeypatch, capsys):
    sys.path.insert(0, BENCHMARKS)
    try:
        import _common
    finally:
        sys.path.remove(BENCHMARKS)
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 1000 0 0 0 0 0 0\ncpu0 ...\n")

    def sleep(seconds):  # meanwhile: 100 ticks busy of 200
        stat.write_text("cpu  150 0 150 1080 20 0 0 0 0 0\ncpu0 ...\n")
    monkeypatch.setattr(_common.time, "sleep", sleep)
    cpus = os.cpu_count()
    assert _common.others_busy(stat=str(stat)) == pytest.approx(0.5 * cpus)
    assert _common.others_busy(stat=str(tmp_path / "missing")) is None

    monkeypatch.setattr(_common, "_OTHERS_BUSY", [])
    monkeypatch.setattr(_common, "others_busy", lambda: 0.05)
    _common.check_quiet()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(_common, "others_busy", lambda: 0.5)
    _common.check_quiet()
    assert "other processes kept 0.50 CPUs busy" in capsys.readouterr().err
    assert _common.machine()["others_busy_cpus"] == 0.5


def test_consume_reads_every_batch_through_the_chosen_read(monkeypatch):
    throughput = _throughput_module()
    import numpy
    assert throughput.READS["sum"](numpy.arange(4.0)) == 6.0
    assert throughput.READS["max"](numpy.arange(4.0)) == 3.0
    seen = []
    monkeypatch.setattr(throughput, "READ", lambda batch: seen.append(batch[0]) or 0.0)
    timing = throughput.consume(iter([numpy.full(4, k) for k in range(8)]), 8)
    assert seen == list(range(8))
    # steady state: from batch 2 to 8 - 1 - 2 (a quarter of the run each side)
    assert timing.steady_batches == 3 and timing.whole_batches == 7


def test_busy_machine_names_the_worst_in_process_measure():
    throughput = _throughput_module()

    def waited(share):
        return {"consumer_cpu_wait": {"median": share}}
    results = {"512 B": {"memcpy": waited(0.01), "read": waited(0.30),
                         "shmfuel Prefetcher w=2": waited(0.60)},
               "1 MiB": {"memcpy": waited(0.02), "bare shm ring": waited(0.40)}}
    # the Prefetcher and the ring share the CPUs with their own producers:
    # only the in-process measures tell of another process
    warning, = throughput.busy_machine(results)
    assert warning.startswith("at 512 B, 'read' waited for a CPU 30% of the time")


def _throughput_module():
    sys.path.insert(0, BENCHMARKS)
    try:
        import throughput
    finally:
        sys.path.remove(BENCHMARKS)
    return throughput


def test_throughput_targets_are_checked_round_by_round():
    throughput = _throughput_module()

    def rounds(*rates):
        return {"rounds": list(rates)}
    results = {
        "512 B": {"shmfuel Prefetcher w=1": rounds(300_000, 200_000, 260_000),
                  "bare shm ring": rounds(500_000, 300_000, 400_000)},
        "38.5 MB": {"shmfuel Prefetcher w=1": rounds(9.0, 10.0, 6.0),
                    "memcpy": rounds(10.0, 12.5, 10.0),
                    "bare shm ring": rounds(10.0, 9.0, 5.0),
                    "read": rounds(8.0, 10.0, 9.0)},
    }
    fast, copy = throughput.check_targets(results)  # pyzmq was not run
    assert (fast["size"], fast["versus"], fast["measure"]) == ("512 B", None, "batches/s")
    assert fast["value"] == {"median": 260_000, "min": 200_000, "max": 300_000,
                             "runs": 3}
    assert fast["met"] and fast["rounds_met"] == 2
    assert fast["bare shm ring"]["median"] == 400_000
    # ratios within each round: 0.9, 0.8, 0.6 (the ratio of the medians
    # would be 0.9)
    assert (copy["size"], copy["measure"]) == ("38.5 MB", "ratio to memcpy")
    assert copy["value"]["median"] == pytest.approx(0.8)
    assert copy["value"]["min"] == pytest.approx(0.6)
    assert not copy["met"] and copy["rounds_met"] == 1
    assert copy["bare shm ring"]["median"] == pytest.approx(0.72)
    # the read alone: 0.8, 0.8, 0.9 of the copy, the ceiling of any transport
    assert copy["read"]["median"] == pytest.approx(0.8)
    assert "read" not in fast  # not run at 512 B
    results["512 B"]["shmfuel Prefetcher w=1"] = rounds(300_000, 200_000, 240_000)
    fast = throughput.check_targets(results)[0]
    assert not fast["met"] and fast["rounds_met"] == 1
    headers, rows = throughput.targets_table(throughput.check_targets(results))
    assert headers[0] == "target" and len(rows) == 2
    assert rows[0] == ["512 B: >= 250,000 batches/s", "1", "240,000 (200,000-300,000)",
                       "no (1 of 3 rounds)", "400,000", "-"]
    assert rows[1][:2] == ["38.5 MB: >= 0.9x memcpy", "1"]
    assert rows[1][4:] == ["0.72x", "0.80x"]
    # with two producers run, each target is checked for both, in turn
    results["38.5 MB"]["shmfuel Prefetcher w=2"] = rounds(10.0, 12.5, 9.5)
    one, two = throughput.check_targets(results)[1:]
    assert (one["transport"], two["transport"]) == ("shmfuel Prefetcher w=1",
                                                    "shmfuel Prefetcher w=2")
    assert not one["met"]
    assert two["met"] and two["rounds_met"] == 3  # 1.0, 1.0, 0.95
    assert two["value"]["median"] == pytest.approx(1.0)
    assert throughput.targets_table([two])[1][0][1:4] == [
        "2", "1.00x (0.95x-1.00x)", "yes (3 of 3 rounds)"]


@pytest.mark.timeout(120)
def test_disk_datasets_quick(tmp_path):
    pytest.importorskip("h5py")
    _, data = run_quick(tmp_path, "disk_datasets.py")
    assert set(data["results"]) == {"IndexableDataset (memory)", "NpyDataset (memmap)",
                                    "H5PYDataset (file)", "H5PYDataset (in memory)"}
    assert all(set(modes) == {"in-process", "Prefetcher w=1", "Prefetcher w=2"}
               for modes in data["results"].values())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("script,args,keys", [
    ("gpu_idle.py", ["--device", "cpu", "--idle-producers"],
     {"in-process", "shmfuel Prefetcher w=2", "shmfuel Prefetcher w=2 idle"}),
    ("scaling.py", [], None),
])
def test_quick_runs(tmp_path, script, args, keys):
    _, data = run_quick(tmp_path, script, *args, timeout=170)
    if keys:
        assert keys <= set(data["results"])
        for mode in data["results"].values():
            assert 0 < mode["utilisation_pct"] <= 100
    else:
        assert set(data["throughput"]) == {"1", "2"}
        target = data["target"]
        ratio = data["throughput"]["2"]["median"] / data["throughput"]["1"]["median"]
        assert target["ratio"] == pytest.approx(ratio) and target["at_least"] == 1.8
        assert target["met"] == (ratio >= 1.8)
        assert "fork" in data["time_to_first_batch_s"]
        start_up = data["start_up_with_dataset"]["results"]
        assert {"fork", "forkserver", "spawn"} <= set(start_up)
        for by_producers in start_up.values():
            assert set(by_producers) == {"1", "2"}
            for result in by_producers.values():
                assert result["time_to_first_batch_s"]["median"] > 0
                assert result["producer_uss_mb"]["median"] > 0


@pytest.mark.timeout(180)
def test_gpu_idle_model_code_runs_on_the_cpu(tmp_path):
    # --device cuda's model, batches and copies, on the CPU: what a GPU run
    # would do, minus the GPU
    pytest.importorskip("torch")
    _, data = run_quick(tmp_path, "gpu_idle.py", "--device", "torch-cpu",
                        "--only", "Prefetcher", timeout=170)
    assert data["device"] == "torch-cpu" and "bf16" in data["model"]
    assert set(data["results"]) == {"shmfuel Prefetcher w=2"}
    for mode in data["results"].values():
        assert mode["utilisation_pct"] > 0 and mode["wait_ms"]["max"] >= 0


@pytest.mark.timeout(180)
def test_gpu_idle_rounds_each_count_against_their_own_floors(tmp_path):
    _, data = run_quick(tmp_path, "gpu_idle.py", "--device", "cpu", "--only",
                        "Prefetcher", "--rounds", "3", timeout=170)
    floors = data["step_ms_floors"]
    assert data["rounds"] == 3 and len(floors) == 4
    assert data["step_ms"] == pytest.approx(min(floors))
    result = data["results"]["shmfuel Prefetcher w=2"]
    rounds = result["rounds_utilisation_pct"]
    assert len(rounds) == 3
    # the median round is the one reported
    assert result["utilisation_pct"] == sorted(rounds)[1]
    # each round against the faster of the floors around it
    k = rounds.index(result["utilisation_pct"])
    compute = min(floors[k], floors[k + 1]) * data["steps"] / 1000
    assert result["utilisation_pct"] == pytest.approx(100 * compute / result["wall_s"])
    # producers' CPU per batch, without their start-up
    assert 0 < result["producer_cpu_ms_per_batch"] < 1000
    # the loop's wait for a CPU, a share of its time (Linux)
    if sys.platform == "linux":
        assert 0 <= result["loop_cpu_wait_pct"] < 100


@pytest.mark.parametrize("args,message", [
    (["--graph"], "--graph needs --device cuda"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--quick", "--only", "Prefetcher w=8"], "no mode matches --only Prefetcher w=8 "
     "(with --workers 2)"),
])
def test_gpu_idle_refuses_bad_arguments(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gpu_idle.py"), "--device", "cpu",
         *args, "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.timeout(240)
def test_gpu_idle_graph_step_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    _, data = run_quick(tmp_path, "gpu_idle.py", "--device", "cuda", "--graph",
                        "--only", "Prefetcher", timeout=230)
    assert data["graph"] and "CUDA graph" in data["model"]
    assert 0 < data["gpu_step_ms"] <= data["step_ms"] * 1.5
    assert {"shmfuel Prefetcher w=2", "shmfuel Prefetcher w=2 pinned"} == set(data["results"])
    for mode in data["results"].values():
        assert 0 < mode["utilisation_pct"] <= 105


@pytest.mark.timeout(180)
def test_launch_bound_quick(tmp_path):
    pytest.importorskip("torch")
    _, data = run_quick(tmp_path, "launch_bound.py", "--device", "cpu", timeout=170)
    assert len(data["drift"]) == 2
    assert all(block["ms_per_step"] > 0 for block in data["drift"])
    assert [r["k"] for r in data["loaded"]] == [0, 1]
    # the busy process ran, and said how long each of its batches took
    (wall_ms, cpu_ms), = data["loaded"][1]["load_ms_per_batch_wall_cpu"]
    assert wall_ms > 0 and cpu_ms > 0
    for result in data["pinned"]:
        assert result["main_cpu"] not in result["others"]


@pytest.mark.timeout(60)
def test_report_renders_the_committed_results():
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "report.py")],
        capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "| mode | training s | whole process s | speed-up |" in result.stdout
    assert "| transport | 512 B | 64 KiB | 1 MiB | 38.5 MB |" in result.stdout
    assert "| shmfuel Prefetcher w=1 |" in result.stdout
    # the GPU run's table, with the host's time per step call
    assert "NVIDIA H100" in result.stdout
    assert "| shmfuel Prefetcher w=8 pinned | 105.4 |" in result.stdout
    assert "step call ms p50" in result.stdout
    # the CUDA graph run, with every round's range
    assert "| shmfuel Prefetcher w=8 | 95.1 (88.3-97.7) | 96.4 |" in result.stdout
    assert "median of 3 rounds, min-max" in result.stdout
    # the launch-bound step's noise, and the 16-CPU transport run
    assert "GPU ms per step: 3.39" in result.stdout
    assert "| shmfuel Prefetcher w=1 | 371,717 | 162 (6.23) |" in result.stdout
    assert "| shmfuel Prefetcher w=1 | 190,111 | 180 (6.94) |" in result.stdout  # H100
    # producers at idle priority, next to those at normal priority
    assert "| shmfuel Prefetcher w=8 idle | 94.9 (94.7-95.2) | 95.4 |" in result.stdout
    assert "| shmfuel Prefetcher w=8 | 81.0 (78.7-81.2) | 83.0 |" in result.stdout
    # the loop's wait for a CPU, where the run measured it
    assert "| loop waited for a CPU % |" in result.stdout
    assert "| 201 | 18.1 |" in result.stdout and "| 201 | 4.0 |" in result.stdout
    # the transport targets, worked out from the committed rounds
    assert "| 512 B: >= 250,000 batches/s | 1 | 350,466 (250,134-374,766) | yes (5 of " \
        "5 rounds) | 481,463 | 618,172 |" in result.stdout
    assert "| 38.5 MB: >= 0.9x memcpy | 2 | 1.06x (0.92x-1.11x) | yes (5 of 5 rounds) " \
        "| 0.96x | 1.80x |" in result.stdout  # run 2
    assert "| 512 B: >= 250,000 batches/s | 1 | 293,527 (190,994-388,619) | yes (3 of " \
        "5 rounds) | 482,175 | 465,661 |" in result.stdout  # with --read sum
    assert "| 38.5 MB: >= 0.9x memcpy | 1 | 0.94x (0.76x-1.01x) | yes (3 of 5 rounds) " \
        "| 1.00x | 1.03x |" in result.stdout  # the slow phase's run
