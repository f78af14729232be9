"""The ZeroMQ bridge, with servers in subprocesses on free loopback ports."""

import contextlib
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy
import psutil
import pytest
from helpers import as_lists, ask_a_fork, gone, shuffled_stream

zmq = pytest.importorskip("zmq")

from shmfuel.bridge.client import (  # noqa: E402
    BridgeTimeoutError,
    ServerDataStream,
    ServerError,
)
from shmfuel.bridge.wire import WireError  # noqa: E402
from shmfuel.exceptions import RemoteTraceback  # noqa: E402

pytestmark = pytest.mark.timeout(60)
TESTS = os.path.dirname(os.path.abspath(__file__))


def search_path():
    """PYTHONPATH for a subprocess: the tests' folder, then the caller's."""
    return os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)


class Server:
    """``python -m shmfuel serve`` in a subprocess; stops on exit."""

    def __init__(self, factory, *args):
        env = dict(os.environ, PYTHONPATH=search_path())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shmfuel", "serve", f"bridge_factories:{factory}",
             "--port", "0", *args],
            cwd=TESTS, env=env, stderr=subprocess.PIPE, text=True)
        self.log = []
        while True:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError("server died:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(r"serving \w+ on tcp://([\d.]+):(\d+)", line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()

    def client(self, sources=("x", "name"), **kwargs):
        kwargs.setdefault("timeout", 10)
        return ServerDataStream(sources, host="127.0.0.1", port=self.port, **kwargs)


def local_epochs(n):
    stream = shuffled_stream()
    return [as_lists(stream.get_epoch_iterator()) for _ in range(n)]


def test_two_exact_epochs_and_metadata():
    with Server("shuffled") as server:
        client = server.client(hwm=3)
        try:
            assert client.produces_examples is False
            assert [as_lists(client.get_epoch_iterator()) for _ in range(2)] == local_epochs(2)
            x = next(client.get_epoch_iterator(as_dict=True))["x"]
            assert isinstance(x, numpy.ndarray) and x.dtype == numpy.float32
        finally:
            client.close()


def test_abandoned_epoch_and_reconnect_lose_nothing():
    expected = local_epochs(4)
    with Server("shuffled") as server:
        first = server.client(hwm=2)
        epoch = first.get_epoch_iterator()
        assert as_lists([next(epoch), next(epoch)]) == expected[0][:2]
        assert as_lists(first.get_epoch_iterator()) == expected[1]
        next(first.get_epoch_iterator())
        first.close()
        # A new client gets complete epochs (the server's next ones).
        second = server.client(hwm=2)
        try:
            assert as_lists(second.get_epoch_iterator()) == expected[3]
        finally:
            second.close()


def test_binds_loopback_by_default():
    with Server("shuffled") as server:
        assert server.host == "127.0.0.1"
        listening = [c.laddr for c in psutil.Process(server.process.pid).net_connections()
                     if c.status == psutil.CONN_LISTEN]
        assert listening == [(server.host, server.port)]


@pytest.mark.parametrize("factory,error,message,where", [
    ("failing", KeyError, "example 4 is missing", "fails_at_third"),
    # a sys.exit() in the pipeline: an error for the client, not the end of
    # the server
    ("exiting", ServerError, "raised SystemExit: 3", "exits_at_third"),
])
def test_server_exception_reaches_the_client_and_the_server_keeps_serving(
        factory, error, message, where):
    with Server(factory) as server:
        client = server.client(sources=("x",))
        try:
            for _ in range(2):
                epoch = client.get_epoch_iterator()
                assert [list(x) for x, in (next(epoch), next(epoch))] == [[0, 1], [2, 3]]
                with pytest.raises(error, match=message) as info:
                    next(epoch)
                assert isinstance(info.value.__cause__, RemoteTraceback)
                assert where in str(info.value.__cause__)
                with pytest.raises(error):
                    next(epoch)
        finally:
            client.close()
        assert server.process.poll() is None  # still serving


def test_unsafe_values_are_refused_by_the_server():
    with Server("lambdas") as server:
        client = server.client(sources=("x", "thing"))
        try:
            with pytest.raises(ServerError, match="UnsafeValueError.*allow_pickle"):
                next(client.get_epoch_iterator())
        finally:
            client.close()


def test_no_server_is_a_timeout_naming_the_address():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ServerDataStream(("x",), host="127.0.0.1", port=port, timeout=0.5)
    with pytest.raises(BridgeTimeoutError, match=f"tcp://127.0.0.1:{port} within 0.5 s"):
        client.get_epoch_iterator()
    assert not client.connected


def test_server_killed_mid_epoch_is_an_error_not_a_hang():
    with Server("slow") as server:
        client = server.client(sources=("x",), timeout=2)
        try:
            epoch = client.get_epoch_iterator()
            next(epoch)
            server.process.kill()
            with pytest.raises(BridgeTimeoutError, match="no answer"):
                list(epoch)
            with pytest.raises(BridgeTimeoutError):
                client.get_epoch_iterator()
        finally:
            client.close()


def test_slow_batches_are_not_mistaken_for_a_dead_server():
    with Server("slow", "--heartbeat", "0.1") as server:
        client = server.client(sources=("x",), timeout=0.5, hwm=1)
        try:
            assert len(list(client.get_epoch_iterator())) == 2
        finally:
            client.close()


@contextlib.contextmanager
def python_process(code):
    """``python -c code`` in the tests' folder, its stdout piped; killed
    when the block ends."""
    process = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS, text=True,
                               env=dict(os.environ, PYTHONPATH=search_path()),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def raw_dealer(port, hello=False):
    """A bare DEALER socket connected to a server (and welcomed by it, with
    ``hello``), and its context."""
    from shmfuel.bridge import wire
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    if hello:
        dealer.send_multipart(wire.encode(wire.HELLO))
        assert dealer.poll(5000)
        assert b"welcome" in dealer.recv_multipart()[0]
    return context, dealer


def test_garbage_to_the_server_is_answered_and_ignored():
    with Server("shuffled") as server:
        context, dealer = raw_dealer(server.port)
        dealer.send_multipart([b"\x00garbage", b"more"])
        assert dealer.poll(5000)
        reply = dealer.recv_multipart()
        assert b"malformed message" in reply[0]
        dealer.close()
        context.term()
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(os.urandom(256))
        client = server.client()
        try:
            assert as_lists(client.get_epoch_iterator()) == local_epochs(1)[0]
        finally:
            client.close()


@pytest.mark.parametrize("fields", [{"credits": "many"}, {"credits": -3},
                                    {"credits": 2.5}, {"credits": True},
                                    {"epoch": "next", "credits": 1}, {"epoch": -1}])
def test_bad_field_values_are_answered_and_ignored(fields):
    from shmfuel.bridge import wire
    kind = wire.EPOCH if "epoch" in fields else wire.CREDIT
    with Server("shuffled") as server:
        context, dealer = raw_dealer(server.port, hello=True)
        try:
            for _ in range(2):  # the second one from the parsed-once cache
                dealer.send_multipart(wire.encode(kind, **fields))
                assert dealer.poll(5000)
                reply = dealer.recv_multipart()
                assert b"malformed message" in reply[0]
                assert b"non-negative" in reply[0]
        finally:
            dealer.close()
            context.term()
        client = server.client()
        try:
            assert as_lists(client.get_epoch_iterator()) == local_epochs(1)[0]
        finally:
            client.close()


def test_garbage_from_a_server_is_a_clear_error():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = ServerDataStream(("x",), host="127.0.0.1", port=port, timeout=5)
    try:
        import threading

        def reply():
            identity, *_ = router.recv_multipart()
            router.send_multipart([identity, b"not json at all"])
        thread = threading.Thread(target=reply)
        thread.start()
        with pytest.raises(WireError, match=f"malformed message from tcp://127.0.0.1:{port}"):
            client.get_epoch_iterator()
        thread.join(5)
    finally:
        client.close()
        router.close()
        context.term()


def test_a_vanished_client_does_not_wedge_the_server():
    script = textwrap.dedent("""
        from shmfuel.streams import ServerDataStream
        client = ServerDataStream(("x", "name"), host="127.0.0.1", port={port}, hwm=2)
        next(client.get_epoch_iterator())
        print("read one", flush=True)
        import time; time.sleep(60)
    """)
    with Server("shuffled") as server:
        crashed = subprocess.Popen([sys.executable, "-c", script.format(port=server.port)],
                                   stdout=subprocess.PIPE, text=True)
        assert crashed.stdout.readline() == "read one\n"
        crashed.kill()
        crashed.wait()
        crashed.stdout.close()
        client = server.client()
        try:
            epoch = as_lists(client.get_epoch_iterator())
            assert len(epoch) == 9
        finally:
            client.close()


def test_a_new_client_takes_over():
    with Server("shuffled") as server:
        first, second = server.client(hwm=1), server.client(hwm=1)
        try:
            epoch = first.get_epoch_iterator()
            next(epoch)
            assert len(list(second.get_epoch_iterator())) == 9
            with pytest.raises(ConnectionError, match="another client took over"):
                list(epoch)
        finally:
            first.close()
            second.close()


def test_sharded_servers_merge_into_the_same_epochs():
    with Server("shuffled", "--shard", "0/2") as a, Server("shuffled", "--shard", "1/2") as b:
        client = ServerDataStream(("x", "name"), servers=[f"127.0.0.1:{a.port}",
                                                          ("127.0.0.1", b.port)],
                                  hwm=2, timeout=10)
        try:
            assert [as_lists(client.get_epoch_iterator()) for _ in range(2)] == local_epochs(2)
        finally:
            client.close()
        swapped = ServerDataStream(("x", "name"), servers=[f"127.0.0.1:{b.port}",
                                                           f"127.0.0.1:{a.port}"], timeout=10)
        with pytest.raises(ValueError, match="serves share \\[1, 2\\], but it is server 0 of 2"):
            swapped.get_epoch_iterator()


def test_a_share_whose_pipeline_is_not_per_batch_is_an_error_not_mixed_up():
    # server 1 gets the odd requests, keeps none: its epoch ends with
    # requests taken and no batch made
    with Server("keep_even", "--shard", "0/2") as a, \
            Server("keep_even", "--shard", "1/2") as b:
        client = ServerDataStream(("x",), servers=[f"127.0.0.1:{a.port}",
                                                   f"127.0.0.1:{b.port}"], timeout=10)
        try:
            got = []
            with pytest.raises(ValueError, match="each batch must come from exactly "
                                                 "one request.*needs workers=1"):
                for x, in client.get_epoch_iterator():
                    got.append(x)
            assert got == [0]
        finally:
            client.close()


def test_a_forked_child_cannot_use_its_parent_s_client():
    with Server("shuffled") as server:
        client = server.client(hwm=2)
        try:
            epoch = client.get_epoch_iterator()
            got = [next(epoch)]
            message, child = ask_a_fork(client, epoch)
            got += list(epoch)
            again = as_lists(client.get_epoch_iterator())
        finally:
            client.close()
    assert message.startswith("ShmfuelError: this ServerDataStream was connected in "
                              f"process {os.getpid()}; process {child} is a fork")
    expected = local_epochs(2)
    assert as_lists(got) == expected[0] and again == expected[1]


def test_server_with_producer_workers():
    with Server("shuffled", "--workers", "2") as server:
        client = server.client()
        try:
            assert [as_lists(client.get_epoch_iterator()) for _ in range(2)] == local_epochs(2)
        finally:
            client.close()


def test_server_producers_run_the_worker_init_function():
    with Server("shuffled", "--workers", "2",
                "--worker-init", "bridge_factories:lower_priority") as server:
        client = server.client()
        try:
            assert as_lists(client.get_epoch_iterator()) == local_epochs(1)[0]
            server_process = psutil.Process(server.process.pid)
            producers = [child for child in server_process.children()
                         if "python" in child.name().lower()]
            assert len(producers) == 2
            assert {p.nice() for p in producers} == {server_process.nice() + 2}
        finally:
            client.close()


def test_curve_encryption():
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    import threading

    from shmfuel.server import start_server
    public, secret = zmq.curve_keypair()
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=start_server, args=(shuffled_stream(),), kwargs=dict(
        port=0, curve_keypair=(public, secret), ready=ready, stop=stop))
    thread.start()
    try:
        assert ready.wait(10)
        client = ServerDataStream(("x", "name"), host="127.0.0.1", port=ready.port,
                                  curve_server_key=public, timeout=10)
        assert as_lists(client.get_epoch_iterator()) == local_epochs(1)[0]
        client.close()
        plain = ServerDataStream(("x", "name"), host="127.0.0.1", port=ready.port, timeout=0.5)
        with pytest.raises(BridgeTimeoutError):
            plain.get_epoch_iterator()
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("kwargs,message", [
    ({"port": -1}, "port must be a number from 1 to 65535, or 0"),
    ({"port": 70000}, "port must be a number"),
    ({"port": "5557"}, "port must be a number"),
    ({"host": ""}, "host must be an interface to bind"),
    ({"workers": 0}, "workers must be an int of at least 1"),
    ({"hwm": 0}, "hwm must be an int of at least 1"),
    ({"worker_init_fn": print}, "worker_init_fn runs in producer processes, which "
     "the server starts only with workers > 1"),
])
def test_server_arguments_are_checked_before_it_binds(kwargs, message):
    from shmfuel.server import start_server
    with pytest.raises(ValueError, match=message):
        start_server(shuffled_stream(), **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"allow_pickle": "False"}, "allow_pickle must be True or False, got 'False'"),
    ({"heartbeat": "1"}, "heartbeat must be a number of seconds, got '1'"),
])
def test_server_flags_and_times_are_not_read_as_truthy(kwargs, message):
    from shmfuel.server import start_server
    with pytest.raises(TypeError, match=message):
        start_server(shuffled_stream(), **kwargs)


def test_client_arguments_and_pickling():
    with pytest.raises(TypeError, match="tuple of names"):
        ServerDataStream("features")
    with pytest.raises(ValueError, match="hwm must be at least 1"):
        ServerDataStream(("x",), hwm=0)
    with pytest.raises(ValueError, match="is not 'host:port'"):
        ServerDataStream(("x",), servers=["nohost"])
    for port in ("x", -1, 0, 70000, True, 5557.0):
        with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
            ServerDataStream(("x",), port=port)
    with pytest.raises(ValueError, match="port must be a number"):
        ServerDataStream(("x",), servers=[("127.0.0.1", "x")])
    with pytest.raises(ValueError, match="host must be a name or an address"):
        ServerDataStream(("x",), host="")
    with pytest.raises(ValueError, match="neither 'host:port' nor a"):
        ServerDataStream(("x",), servers=[5557])
    with pytest.raises(ValueError, match="servers is empty"):
        ServerDataStream(("x",), servers=[])
    with pytest.raises(ValueError, match="at least one source"):
        ServerDataStream(())
    with pytest.raises(TypeError, match="allow_pickle must be True or False, got 'False'"):
        ServerDataStream(("x",), allow_pickle="False")
    with pytest.raises(TypeError, match="copy must be True or False, got 1"):
        ServerDataStream(("x",), copy=1)
    with pytest.raises(TypeError, match="timeout must be a number of seconds, got '30'"):
        ServerDataStream(("x",), timeout="30")
    assert ServerDataStream(("x",), servers=[("::1", "5557"), "[::1]:5558"]
                            ).addresses == [("::1", 5557), ("::1", 5558)]
    assert ServerDataStream(("x",), port=numpy.int64(5559)).addresses == [
        ("localhost", 5559)]
    with Server("shuffled") as server:
        hasty = server.client(timeout=0.5)
        with pytest.raises(ValueError, match="not longer than the server's heartbeat"):
            hasty.get_epoch_iterator()
        wrong = server.client(sources=("x",))
        with pytest.raises(ValueError, match="has 2 sources .* but 1 names were given"):
            wrong.get_epoch_iterator()
        client = server.client()
        next(client.get_epoch_iterator())
        clone = pickle.loads(pickle.dumps(client))
        client.close()
        assert not clone.connected
        try:
            assert len(list(clone.get_epoch_iterator())) == 9
        finally:
            clone.close()


def test_imports_work_without_pyzmq():
    script = textwrap.dedent("""
        import sys
        sys.modules["zmq"] = None
        import shmfuel.server
        from shmfuel.streams import ServerDataStream
        from shmfuel.datasets import IndexableDataset
        from shmfuel.streams import DataStream
        stream = DataStream(IndexableDataset({"x": [1]}))
        for call in (lambda: shmfuel.server.start_server(stream),
                     lambda: ServerDataStream(("x",)).get_epoch_iterator()):
            try:
                call()
            except ImportError as exc:
                print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.splitlines() == [
        "the shmfuel bridge needs zmq: pip install 'shmfuel[zmq]'"] * 2, out.stderr


SERVER_PY = '''
import time

from shmfuel.datasets import IndexableDataset
from shmfuel.schemes import ShuffledScheme
from shmfuel.server import start_server
from shmfuel.streams import DataStream
from shmfuel.transformers import Transformer


class Bottleneck(Transformer):
    def __init__(self, *args, **kwargs):
        self.slowdown = kwargs.pop('slowdown', 0)
        super(Bottleneck, self).__init__(*args, **kwargs)

    def get_data(self, request=None):
        if request is not None:
            raise ValueError
        time.sleep(self.slowdown)
        return next(self.child_epoch_iterator)


def create_data_stream(slowdown=0):
    dataset = IndexableDataset({'features': [[0] * 128] * 1000})
    iteration_scheme = ShuffledScheme(examples=1000, batch_size=100)
    data_stream = Bottleneck(
        data_stream=DataStream.default_stream(
            dataset=dataset, iteration_scheme=iteration_scheme),
        slowdown=slowdown)
    return data_stream


if __name__ == "__main__":
    start_server(create_data_stream(0.005))
'''

TRAIN_PY = '''
import argparse
import time
from contextlib import contextmanager

from shmfuel.streams import ServerDataStream

from server import create_data_stream


@contextmanager
def timer(name):
    start_time = time.time()
    yield
    stop_time = time.time()
    print('{} took {} seconds'.format(name, stop_time - start_time))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        '-p', '--parallel', action='store_true',
        help='run data preprocessing in a separate process')
    args = parser.parse_args()

    if args.parallel:
        data_stream = ServerDataStream(('features',))
    else:
        data_stream = create_data_stream(0.005)

    with timer('Training'):
        for i in range(5):
            for data in data_stream.get_epoch_iterator(): time.sleep(0.01)
'''


def test_the_seed_tutorial_files_end_to_end(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5557)) == 0:
            pytest.skip("port 5557, the seed's default, is in use")
    (tmp_path / "server.py").write_text(SERVER_PY)
    (tmp_path / "train.py").write_text(TRAIN_PY)
    server = subprocess.Popen([sys.executable, "server.py"], cwd=tmp_path,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        runs = {}
        for flags in (["-p"], [], ["-p"]):
            out = subprocess.run([sys.executable, "train.py", *flags], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            match = re.fullmatch(r"Training took ([\d.]+) seconds\n", out.stdout)
            assert match, out.stdout
            runs.setdefault(tuple(flags), []).append(float(match.group(1)))
        assert len(runs[("-p",)]) == 2
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(10)


def test_a_forgotten_client_is_closed_when_collected():
    import gc
    with Server("shuffled") as server:
        client = server.client()
        next(client.get_epoch_iterator())
        context = client._context
        del client
        gc.collect()
        assert context.closed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_server_stops_cleanly_on_signals_even_mid_epoch(signum):
    server = Server("shuffled")
    client = server.client(hwm=2)
    try:
        next(client.get_epoch_iterator())
        server.process.send_signal(signum)
        assert server.process.wait(10) == 0
        assert "server stopped" in server.process.stderr.read()
    finally:
        client.close()
        server.stop()


@pytest.mark.timeout(60)
def test_a_signal_stops_the_server_at_once_not_at_its_next_poll():
    # with a 60 s heartbeat the loop's poll waits 30 s: only the signal's
    # wake-up can end it within the 10 s allowed here
    server = Server("shuffled", "--heartbeat", "60")
    try:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        assert "server stopped" in server.process.stderr.read()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_signal_delivered_to_another_thread_stops_the_server_at_once():
    # The kernel may hand a process's signal to any thread that does not
    # block it (pyzmq's garbage thread, a user's thread); the serving loop,
    # polling for 30 s, must still wake at once. A thread sends the signal
    # to itself here.
    code = textwrap.dedent("""
        import signal, threading, time
        from bridge_factories import shuffled
        from shmfuel.server import start_server
        ready = threading.Event()
        def signal_this_thread():
            ready.wait(10)
            time.sleep(0.3)  # the loop is in its poll by now
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        threading.Thread(target=signal_this_thread, daemon=True).start()
        start_server(shuffled(), port=0, heartbeat=60, ready=ready)
        print("stopped", flush=True)
        """)
    with python_process(code) as server:
        assert server.wait(10) == 0
        assert server.stdout.read() == "stopped\n"


@pytest.mark.timeout(60)
def test_other_signals_with_handlers_neither_stop_nor_spin_the_server():
    # every signal with a Python handler wakes the loop (the wakeup fd);
    # the loop must take the wake-up and go back to waiting, not poll a
    # readable socket in a busy loop
    code = textwrap.dedent("""
        import os, signal, threading, time
        from bridge_factories import shuffled
        from shmfuel.server import start_server
        handled = []
        signal.signal(signal.SIGUSR1, lambda *_: handled.append(1))
        ready, stop = threading.Event(), threading.Event()
        def poke():
            ready.wait(10)
            os.kill(os.getpid(), signal.SIGUSR1)
            cpu = time.process_time()
            time.sleep(1.0)  # idle: no client
            print(len(handled), time.process_time() - cpu < 0.5, flush=True)
            stop.set()
        threading.Thread(target=poke, daemon=True).start()
        start_server(shuffled(), port=0, heartbeat=0.2, ready=ready, stop=stop)
        print("stopped", flush=True)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS, text=True,
                         env=dict(os.environ, PYTHONPATH=search_path()),
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1 True\nstopped\n"


@pytest.mark.parametrize("signum,workers", [(signal.SIGINT, "1"), (signal.SIGTERM, "1"),
                                            (signal.SIGTERM, "2")])
def test_a_signal_interrupts_a_batch_that_takes_minutes(signum, workers):
    with Server("stuck", "--heartbeat", "0.2", "--workers", workers) as server:
        producers = psutil.Process(server.process.pid).children(recursive=True)
        assert len(producers) == (0 if workers == "1" else 2)
        client = server.client(sources=("x",))
        try:
            client.get_epoch_iterator()  # the server starts on a 120 s batch
            # a heartbeat: the server is inside the stream's next()
            socket = client._connections[0].socket
            assert socket.poll(5000)
            assert b"heartbeat" in socket.recv_multipart()[0]
            server.process.send_signal(signum)
            assert server.process.wait(10) == 0
            assert "server stopped" in server.process.stderr.read()
            assert gone([p.pid for p in producers])
        finally:
            client.close()


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_a_client_waiting_for_a_batch():
    # a 30 s heartbeat: nothing reaches the client's socket meanwhile, so
    # only the signal itself can end its wait within the 10 s allowed
    code = ("from shmfuel.streams import ServerDataStream\n"
            "client = ServerDataStream(('x',), host='127.0.0.1', port={port}, timeout=60)\n"
            "try:\n"
            "    epoch = client.get_epoch_iterator()\n"
            "    print('waiting', flush=True)\n"
            "    next(epoch)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n"
            "finally:\n"
            "    client.close()\n")
    with Server("stuck", "--heartbeat", "30") as server:
        with python_process(code.format(port=server.port)) as trainer:
            assert trainer.stdout.readline() == "waiting\n"
            time.sleep(0.5)  # into its wait (an earlier signal is caught too)
            trainer.send_signal(signal.SIGINT)
            assert trainer.wait(10) == 0
            assert trainer.stdout.read() == "interrupted\n"


@pytest.mark.parametrize("bundle", [1, 3])  # batches per message
def test_credits_go_back_half_of_hwm_at_a_time(bundle):
    """A fake server counts the client's credit messages."""
    import threading

    from shmfuel.bridge import wire
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    credits, messages, batches = [], [], 40

    def serve():
        identity, frame = router.recv_multipart()
        assert wire.decode([frame], wire.CLIENT_TYPES)[0]["type"] == "hello"
        router.send_multipart([identity] + wire.encode(
            wire.WELCOME, sources=["x"], produces_examples=False,
            axis_labels=None, shard=None, allow_pickle=False, heartbeat=1.0))
        granted, sent = 0, 0
        while sent < batches or granted < batches:
            if granted > sent and sent < batches:
                n = min(bundle, granted - sent, batches - sent)
                frames = [wire.encode_batch(0, sent + i, (numpy.full(3, sent + i),))[0]
                          for i in range(n)]
                router.send_multipart([identity] + (
                    wire.bundle(frames) if n > 1 else frames))
                sent += n
                continue
            if not router.poll(5000):
                return
            header, _ = wire.decode(router.recv_multipart()[1:], wire.CLIENT_TYPES)
            messages.append(header["type"])
            if header["type"] in ("epoch", "credit"):
                credits.append(header["credits"])
                granted += header["credits"]
        router.send_multipart([identity] + wire.encode(wire.END, epoch=0))

    thread = threading.Thread(target=serve)
    thread.start()
    client = ServerDataStream(("x",), host="127.0.0.1", port=port, hwm=8, timeout=5)
    try:
        got = [int(x[0]) for x, in client.get_epoch_iterator()]
    finally:
        client.close()
        thread.join(10)
        router.close()
        context.term()
    assert got == list(range(batches))
    # 8 with the epoch request, then 4 at a time: 8 messages for 40 batches
    assert credits == [8] + [4] * 8


def test_a_stream_that_reuses_its_buffer_sends_every_batch_intact():
    with Server("reuses_its_buffer") as server:
        client = server.client(sources=("x",), hwm=8)
        try:
            for _ in range(3):
                epoch = [x.copy() for x, in client.get_epoch_iterator()]
                assert [float(x[0]) for x in epoch] == list(range(16))
                assert all((x == x[0]).all() for x in epoch)
        finally:
            client.close()


def test_a_fast_stream_s_batches_travel_bundled_and_arrive_in_order():
    from shmfuel.bridge import wire
    with Server("sequential") as server:
        context, dealer = raw_dealer(server.port, hello=True)
        try:
            dealer.send_multipart(wire.encode(wire.EPOCH, epoch=0, credits=20))
            decoder, got = wire.BatchDecoder(), []
            while len(got) < 40:
                assert dealer.poll(5000)
                frames = dealer.recv_multipart()
                batches = wire.unbundle(frames) or [frames]
                for batch in batches:
                    got.extend(decoder.batch(batch if isinstance(batch, list)
                                             else [batch])[2][0].tolist())
            assert got == list(range(40))
        finally:
            dealer.close()
            context.term()


@pytest.mark.parametrize("slow,messages", [
    ((), [2 + 8, 2 + 2]),  # identity and bundle head, 8 batches; then 2
    (range(10), [2] * 10),  # identity and batch
    ((3, 7), [2 + 3, 2, 2 + 3, 2, 2 + 2]),  # those before a slow one go first
])
def test_fast_batches_go_bundled_and_slow_ones_at_once(monkeypatch, slow, messages):
    """The serving loop's bursts, against a socket that records messages."""
    import threading

    from shmfuel.bridge import server as served
    from shmfuel.bridge import wire
    monkeypatch.setattr(served, "SLOW_S", 0.05)

    def make(i):
        if i in slow:
            time.sleep(0.1)
        return (numpy.full(2, i),)

    class Router:
        def __init__(self):
            self.messages, self.parts = [], []

        def send(self, part, flags, copy):
            self.parts.append(bytes(memoryview(getattr(part, "buffer", part)).cast("B")))
            if not flags & zmq.SNDMORE:
                self.messages.append(self.parts)
                self.parts = []

    class Stream:
        def get_epoch_iterator(self):
            return (make(i) for i in range(10))

    router = Router()
    server = served._Server(zmq, router, Stream(), {}, 1.0, wire.BatchEncoder(),
                            threading.Event())
    server.session, server.wanted, server.credits = served._Session(b"id"), 0, 10
    server.lock.acquire()  # as serve() holds it
    server.step()  # opens the epoch
    while server.can_produce():
        server.step()
    assert [len(m) for m in router.messages] == messages  # identity + frames
    decoder, got = wire.BatchDecoder(), []
    for _, *frames in router.messages:
        for batch in wire.unbundle(frames) or [frames[0]]:
            got.append(int(decoder.batch([batch])[2][0][0]))
    assert got == list(range(10)) and server.credits == 0


def test_a_free_threaded_python_is_refused_before_serving(monkeypatch):
    import sysconfig

    from shmfuel.exceptions import ShmfuelError
    from shmfuel.server import start_server
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: 1 if name == "Py_GIL_DISABLED" else real(name))
    with pytest.raises(ShmfuelError, match="the data server needs a CPython build with the GIL"):
        start_server(shuffled_stream(), port=0)
