"""Fault injection: what breaks is reported, nothing hangs, nothing leaks."""

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy
import pytest
from helpers import ask_a_fork, gone, sequential_stream

from shmfuel import Prefetcher
from shmfuel.exceptions import (
    PrefetchTimeoutError,
    ProducerDiedError,
    RemoteTraceback,
    ShmfuelError,
)
from shmfuel.transformers import Mapping

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("ring_notify")]


def at_batch(n, action):
    def mapping(data):
        if int(data[0][0]) == 2 * n:
            action()
        return data
    return mapping


def raise_key_error():
    raise KeyError("no such example")


@pytest.mark.parametrize("workers", [1, 2])
def test_pipeline_exception_arrives_in_order_with_traceback(workers):
    stream = Mapping(sequential_stream(), at_batch(3, raise_key_error))
    with Prefetcher(stream, hwm=4, workers=workers) as prefetched:
        epoch = prefetched.get_epoch_iterator()
        got = [list(next(epoch)[0]) for _ in range(3)]
        assert got == [[0, 1], [2, 3], [4, 5]]
        with pytest.raises(KeyError, match="no such example") as info:
            next(epoch)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_key_error" in str(cause) and "KeyError" in str(cause)
        # Once broken, always broken: this iterator too, not just new ones.
        with pytest.raises(KeyError, match="no such example"):
            next(epoch)
        with pytest.raises(KeyError, match="no such example"):
            prefetched.get_epoch_iterator()


def test_unpicklable_exception_keeps_type_name_and_message():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("not picklable")

    def fail():
        raise Local("local trouble")
    stream = Mapping(sequential_stream(), at_batch(0, fail))
    with Prefetcher(stream) as prefetched:
        with pytest.raises(ShmfuelError, match=r"raised .*Local: local trouble"):
            list(prefetched.get_epoch_iterator())


def exit_3():
    sys.exit(3)


def test_sys_exit_in_the_pipeline_is_reported_not_raised_as_systemexit():
    # raised as SystemExit, it would end the training process silently
    stream = Mapping(sequential_stream(), at_batch(1, exit_3))
    with Prefetcher(stream, hwm=4) as prefetched:
        epoch = prefetched.get_epoch_iterator()
        assert list(next(epoch)[0]) == [0, 1]
        with pytest.raises(ShmfuelError, match=r"raised SystemExit: 3 in a producer; "
                           "it is reported here instead of ending the training "
                           "loop") as info:
            next(epoch)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "exit_3" in str(info.value.__cause__)
        with pytest.raises(ShmfuelError, match="SystemExit"):  # and stays broken
            next(epoch)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def exit_7():
    os._exit(7)


def segfault():
    ctypes.string_at(0)


@pytest.mark.parametrize("action,how", [
    (kill_self, "was killed by SIGKILL"),
    (exit_7, "exited with code 7"),
    (segfault, "was killed by SIGSEGV"),
])
def test_producer_death_is_reported_not_hung(action, how):
    stream = Mapping(sequential_stream(), at_batch(2, action))
    with Prefetcher(stream, hwm=2) as prefetched:
        pid = prefetched._pool.processes[0].pid
        with pytest.raises(ProducerDiedError, match=f"producer 0 \\(pid {pid}\\) {how}") as info:
            list(prefetched.get_epoch_iterator())
        assert info.value.pid == pid and info.value.worker == 0
        with pytest.raises(ProducerDiedError):
            prefetched.get_epoch_iterator()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_producer_killed_while_it_starts_is_reported_not_hung(start_method):
    # killed before it has read the stream from its segment
    with Prefetcher(sequential_stream(), workers=2, start_method=start_method) as prefetched:
        pid = prefetched._pool.processes[1].pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProducerDiedError,
                           match=f"producer 1 \\(pid {pid}\\) was killed by SIGKILL"):
            list(prefetched.get_epoch_iterator())


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_an_unforked_producer_s_errors_and_death_arrive_like_a_forked_one_s(start_method):
    stream = Mapping(sequential_stream(), at_batch(3, raise_key_error))
    with Prefetcher(stream, start_method=start_method) as prefetched:
        with pytest.raises(KeyError, match="no such example"):
            list(prefetched.get_epoch_iterator())
    stream = Mapping(sequential_stream(), at_batch(2, exit_7))
    with Prefetcher(stream, hwm=2, start_method=start_method) as prefetched:
        with pytest.raises(ProducerDiedError, match="exited with code 7"):
            list(prefetched.get_epoch_iterator())


def test_death_of_the_second_worker_names_it():
    stream = Mapping(sequential_stream(), at_batch(3, exit_7))
    with Prefetcher(stream, hwm=4, workers=2) as prefetched:
        with pytest.raises(ProducerDiedError, match="producer 1 .* exited with code 7") as info:
            list(prefetched.get_epoch_iterator())
        assert info.value.worker == 1 and info.value.exitcode == 7


def sleepy(data):
    time.sleep(2)
    return data


def test_timeout_names_the_wait():
    with Prefetcher(Mapping(sequential_stream(), sleepy), timeout=0.2) as prefetched:
        with pytest.raises(PrefetchTimeoutError, match=r"no batch from producer 0 .* within timeout=0\.2 s"):
            next(prefetched.get_epoch_iterator())


def test_stuck_producers_are_joined_within_one_grace_period_together():
    from shmfuel.prefetch._lifecycle import join_all

    class Stuck:  # a producer that never exits: join waits all it is given
        def __init__(self, clock):
            self.clock, self.given = clock, []

        def join(self, timeout):
            self.given.append(timeout)
            self.clock.now += timeout

    class Clock:
        now = 100.0

        def __call__(self):
            return self.now
    clock = Clock()
    stuck = [Stuck(clock) for _ in range(8)]
    join_all(stuck, 1.0, clock=clock)
    assert clock.now == pytest.approx(101.0)  # not 108
    assert stuck[0].given == [pytest.approx(1.0)]
    assert all(p.given == [0.0] for p in stuck[1:])


def test_shutdown_joins_its_producers_through_the_shared_grace_period(monkeypatch):
    from shmfuel.prefetch import _lifecycle
    calls, real = [], _lifecycle.join_all

    def recorded(processes, seconds, clock=time.monotonic):
        calls.append((len(processes), seconds))
        real(processes, seconds, clock)
    monkeypatch.setattr(_lifecycle, "join_all", recorded)
    with Prefetcher(sequential_stream(), workers=2) as prefetched:
        pids = [p.pid for p in prefetched._pool.processes]
        next(prefetched.get_epoch_iterator())
    # all producers at once; then the ones still alive (none: they stopped)
    assert calls == [(2, _lifecycle.GRACE_S), (0, _lifecycle.GRACE_S)]
    assert gone(pids)


def test_exception_in_with_body_stops_producers():
    with pytest.raises(ZeroDivisionError):
        with Prefetcher(sequential_stream(), workers=2) as prefetched:
            pids = [p.pid for p in prefetched._pool.processes]
            next(prefetched.get_epoch_iterator())
            1 / 0
    assert gone(pids)


def test_shared_memory_shortage_fails_with_the_fix(monkeypatch):
    from shmfuel.prefetch import ring

    real, consumer = ring.create_segment, os.getpid()

    def no_memory(size):  # in the producer (the consumer's control page works)
        if os.getpid() == consumer:
            return real(size)
        raise ring.SharedMemoryError(f"cannot reserve {size} bytes; lower hwm")
    monkeypatch.setattr(ring, "create_segment", no_memory)
    with Prefetcher(sequential_stream(), start_method="fork") as prefetched:
        with pytest.raises(ring.SharedMemoryError, match="cannot reserve .* lower hwm"):
            next(prefetched.get_epoch_iterator())


CONSUMER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from helpers import sequential_stream
    from shmfuel import Prefetcher
    from shmfuel.transformers import Mapping

    def slow(data):
        time.sleep(0.01)
        return data

    stream = Prefetcher(Mapping(sequential_stream(n=10000), slow), workers=2,
                        start_method={method!r})
    print(" ".join(str(p.pid) for p in stream._pool.processes), flush=True)
    epoch = stream.get_epoch_iterator()
    next(epoch)
    print("iterating", flush=True)
    {end}
""")


def run_consumer(end, method="fork"):
    script = CONSUMER.format(tests=os.path.dirname(__file__), end=end, method=method)
    # Unbuffered, so that readline() takes no more than one line and
    # communicate() gets the rest.
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=0)
    pids = [int(pid) for pid in process.stdout.readline().split()]
    assert process.stdout.readline() == b"iterating\n"
    return process, pids


def finish(process):
    out, err = process.communicate(timeout=20)
    return out.decode(), err.decode()


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_consumer_killed_leaves_no_producer(method):
    process, pids = run_consumer("for batch in epoch: pass", method)
    process.kill()
    finish(process)
    assert process.returncode == -signal.SIGKILL
    assert gone(pids)


def test_ctrl_c_in_consumer_stops_producers():
    process, pids = run_consumer("for batch in epoch: pass")
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = finish(process)
    assert "KeyboardInterrupt" in err
    assert process.returncode != 0
    assert gone(pids)


def test_exit_without_close_does_not_hang():
    process, pids = run_consumer("print('leaving', flush=True)")
    out, err = finish(process)
    assert out == "leaving\n", err
    assert process.returncode == 0, err
    assert gone(pids)


AT_EXIT = """
import atexit, sys
sys.path.insert(0, {tests!r})
from helpers import sequential_stream
held = {{}}
def late():  # registered first, so it runs after shmfuel's exit hook
    try:
        print(len(list(held["epoch"])), "batches")
    except Exception as exc:
        print(type(exc).__name__, exc)
atexit.register(late)
from shmfuel import Prefetcher
held["epoch"] = Prefetcher(sequential_stream(), hwm=2).get_epoch_iterator()
"""


def test_an_iterator_used_after_the_exit_hook_says_its_producers_stopped():
    script = AT_EXIT.format(tests=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("ClosedError the producers of this Prefetcher were "
                             "stopped (the interpreter is exiting, or it was "
                             "closed); make a new one\n"), result.stderr


UNGUARDED = """
import sys
sys.path.insert(0, {tests!r})
from helpers import sequential_stream
from shmfuel import Prefetcher
from shmfuel.exceptions import ProducerDiedError
try:  # no __main__ guard: each spawned producer runs this again, and fails
    with Prefetcher(sequential_stream(), start_method="spawn") as prefetched:
        list(prefetched.get_epoch_iterator())
except ProducerDiedError as exc:
    print(exc)
"""


@pytest.mark.timeout(90)
def test_a_producer_that_fails_to_start_under_spawn_names_the_main_guard(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(tests=os.path.dirname(__file__)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True,
                            text=True, timeout=80, cwd=tmp_path)
    assert "exited with code 1" in result.stdout, result.stderr
    assert "It exited before its first batch: with start_method='spawn'" in result.stdout
    assert "must be under 'if __name__ == \"__main__\":'" in result.stdout
    # multiprocessing's own error in the producer, which the hint points to
    assert "bootstrapping phase" in result.stderr


def test_producers_ignore_sigint_of_the_process_group():
    with Prefetcher(sequential_stream()) as prefetched:
        process = prefetched._pool.processes[0]
        next(prefetched.get_epoch_iterator())
        os.kill(process.pid, signal.SIGINT)
        time.sleep(0.2)
        assert process.is_alive()
        assert len(list(prefetched.get_epoch_iterator())) == 10


def test_views_are_numpy_arrays_after_faults():
    # A broken prefetcher still leaves earlier batches readable.
    stream = Mapping(sequential_stream(), at_batch(1, exit_7))
    with Prefetcher(stream) as prefetched:
        epoch = prefetched.get_epoch_iterator()
        first, = next(epoch)
        with pytest.raises(ProducerDiedError):
            next(epoch)
        assert isinstance(first, numpy.ndarray) and list(first) == [0, 1]


def test_a_forked_child_neither_takes_nor_stops_its_parent_s_batches():
    with Prefetcher(sequential_stream(), hwm=4) as prefetched:
        epoch = prefetched.get_epoch_iterator()
        got = [list(next(epoch)[0])]
        message, child = ask_a_fork(prefetched, epoch)
        got += [list(x) for x, in epoch]
        # and the next epoch still runs: the producers were not stopped
        again = [list(x) for x, in prefetched.get_epoch_iterator()]
    assert message.startswith("ShmfuelError: this Prefetcher belongs to process "
                              f"{os.getpid()}; process {child} is a fork of it")
    expected = [[i, i + 1] for i in range(0, 20, 2)]
    assert got == expected and again == expected


@pytest.mark.parametrize("psutil", ["psutil", "no psutil"])
def test_producers_tell_a_live_consumer_from_an_exited_one(monkeypatch, psutil):
    from shmfuel.prefetch.producer import _consumer_alive
    if psutil == "no psutil":
        monkeypatch.setitem(sys.modules, "psutil", None)  # import fails
    assert _consumer_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 20
        with open(f"/proc/{child.pid}/stat", "rb") as stat:
            while stat.read().rsplit(b") ", 1)[1][:1] != b"Z":  # not reaped
                assert time.monotonic() < deadline
                time.sleep(0.01)
                stat.seek(0)
        assert not _consumer_alive(child.pid)
    finally:
        child.wait()
    assert not _consumer_alive(child.pid)


def test_a_consumer_slow_to_start_keeps_its_producers_without_psutil(monkeypatch):
    # producers check that their consumer lives after POLL_S without a word
    # from it; an interpreter without psutil must not make that check fail
    monkeypatch.setitem(sys.modules, "psutil", None)
    with Prefetcher(sequential_stream(n=4, batch_size=1), hwm=1) as stream:
        time.sleep(1.2)
        assert [int(x[0]) for x, in stream.get_epoch_iterator()] == [0, 1, 2, 3]
