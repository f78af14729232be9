"""The Prefetcher, black-box: same data as serial, views in shared memory."""

import os
import pickle
import subprocess
import sys
import time

import numpy
import pytest
from helpers import as_lists, sequential_stream, shared_mapping_of, shuffled_stream

import shmfuel
from shmfuel import Prefetcher
from shmfuel.datasets import IndexableDataset, IterableDataset
from shmfuel.exceptions import ClosedError, ShmfuelError
from shmfuel.schemes import ConstantScheme, SequentialExampleScheme, SequentialScheme
from shmfuel.streams import DataStream
from shmfuel.transformers import Batch, Mapping, Transformer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("ring_notify")]


def serial_epochs(stream, epochs):
    return [as_lists(stream.get_epoch_iterator()) for _ in range(epochs)]


@pytest.mark.parametrize("workers", [1, 2])
def test_same_batches_as_serial_over_three_shuffled_epochs(workers):
    expected = serial_epochs(shuffled_stream(), 3)
    with Prefetcher(shuffled_stream(), hwm=4, workers=workers) as stream:
        got = [as_lists(stream.get_epoch_iterator()) for _ in range(3)]
    assert got == expected
    assert expected[0] != expected[1]


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_start_methods_and_closures(start_method):
    offset = 100

    class AddOffset(Mapping):
        pass
    stream = AddOffset(sequential_stream(), lambda data: (data[0] + offset,))
    with Prefetcher(stream, hwm=3, start_method=start_method) as prefetched:
        assert prefetched.start_method == start_method
        got = [list(x) for x, in prefetched.get_epoch_iterator()]
    assert got == [[100 + i, 101 + i] for i in range(0, 20, 2)]


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_worker_init_fn_runs_in_each_producer_before_its_batches(start_method):
    psutil = pytest.importorskip("psutil")
    niceness = os.nice(0)

    def lower_priority(worker):
        os.nice(3)
        os.environ["SHMFUEL_TEST_WORKER"] = str(worker)

    def tag(data):
        return (numpy.array([int(os.environ["SHMFUEL_TEST_WORKER"])]),)
    stream = Mapping(sequential_stream(), tag, add_sources=("worker",))
    with Prefetcher(stream, hwm=4, workers=2, start_method=start_method,
                    worker_init_fn=lower_priority) as prefetched:
        got = [(list(x), int(worker[0]))
               for x, worker in prefetched.get_epoch_iterator()]
        assert [psutil.Process(p.pid).nice() for p in prefetched._pool.processes] == [
            niceness + 3, niceness + 3]
    # batch i was made by producer i % 2, which ran the function first
    assert got == [([i, i + 1], i // 2 % 2) for i in range(0, 20, 2)]
    assert "SHMFUEL_TEST_WORKER" not in os.environ and os.nice(0) == niceness


def test_an_error_in_worker_init_fn_is_raised_at_the_first_batch():
    def no_device(worker):
        raise LookupError(f"no device for producer {worker}")
    with Prefetcher(sequential_stream(), worker_init_fn=no_device) as prefetched:
        for _ in range(2):  # and again by every later call
            with pytest.raises(LookupError, match="no device for producer 0") as info:
                next(prefetched.get_epoch_iterator())
            assert "in no_device" in str(info.value.__cause__)


PRELOAD_SCRIPT = """
import multiprocessing, sys
import psutil
from shmfuel import Prefetcher
from shmfuel.datasets import IterableDataset
from shmfuel.streams import DataStream
if __name__ == "__main__":
    if sys.argv[1] == "mine":
        multiprocessing.set_forkserver_preload(["__main__", "json"])
    stream = DataStream(IterableDataset({"x": [1, 2, 3]}))
    with Prefetcher(stream, start_method="forkserver") as prefetched:
        print([x for x, in prefetched.get_epoch_iterator()])
        for child in psutil.Process().children():
            if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                print(" ".join(child.cmdline()))
"""


@pytest.mark.parametrize("preload", ["default", "mine"])
def test_the_forkserver_preloads_the_producer_and_keeps_the_caller_s_list(
        tmp_path, preload):
    script = tmp_path / "preload.py"
    script.write_text(PRELOAD_SCRIPT)
    result = subprocess.run([sys.executable, str(script), preload],
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    data, server = result.stdout.splitlines()
    assert data == "[1, 2, 3]"
    # the forkserver's command line carries its preload list
    expected = ["__main__", "json"] if preload == "mine" else ["__main__"]
    assert repr([*expected, "shmfuel.prefetch.producer"]) in server


class KeepEven(Transformer):
    """Pulls as many items as it takes to find an even one: not per-batch,
    and not one of the transformers the Prefetcher knows to refuse."""

    def get_data(self, request=None):
        while True:
            data = next(self.child_epoch_iterator)
            if data[0] % 2 == 0:
                return data


class Twice(Transformer):
    """Makes two items of each child item: not per-batch either."""

    def get_epoch_iterator(self, **kwargs):
        self.pending = []
        return super().get_epoch_iterator(**kwargs)

    def get_data(self, request=None):
        if not self.pending:
            data = next(self.child_epoch_iterator)
            self.pending = [data, data]
        return self.pending.pop()


def examples(n):
    return DataStream(IndexableDataset({"x": list(range(n))}),
                      iteration_scheme=SequentialExampleScheme(n))


@pytest.mark.parametrize("transformer,serial,delivered", [
    # the second producer gets the odd requests, keeps none: its epoch
    # ends with requests taken and no batch made
    (KeepEven, [0, 2, 4, 6, 8, 10], [0]),
    # each producer's second batch would come from its first request:
    # refused before it is delivered, instead of interleaving wrongly
    (Twice, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10,
             11, 11], [0, 1]),
])
def test_a_pipeline_that_is_not_per_batch_is_refused_not_mixed_up(
        transformer, serial, delivered):
    stream = transformer(examples(12))
    assert [x for x, in stream.get_epoch_iterator()] == serial
    with Prefetcher(stream, workers=1) as one:
        assert [x for x, in one.get_epoch_iterator()] == serial
    with Prefetcher(stream, workers=2) as two:
        got = []
        with pytest.raises(ValueError, match="each batch must come from exactly "
                                             "one request.*needs workers=1"):
            for x, in two.get_epoch_iterator():
                got.append(x)
    assert got == delivered


def test_it_is_a_data_stream():
    labels = {"x": ("batch", "feature")}
    dataset = IndexableDataset({"x": numpy.zeros((4, 2)), "y": [1, 2, 3, 4]},
                               axis_labels=labels)
    stream = DataStream(dataset, iteration_scheme=SequentialScheme(4, 2))
    with Prefetcher(stream) as prefetched:
        assert isinstance(prefetched, shmfuel.streams.AbstractDataStream)
        assert prefetched.sources == ("x", "y")
        assert prefetched.produces_examples is False
        assert prefetched.axis_labels == labels
        first = next(prefetched.get_epoch_iterator(as_dict=True))
        assert set(first) == {"x", "y"} and first["y"] == [1, 2]
        epochs = prefetched.iterate_epochs()
        assert len(list(next(epochs))) == 2
        prefetched.reset()
        prefetched.next_epoch()
        assert len(list(next(epochs))) == 2
    assert shmfuel.Prefetcher is Prefetcher


def test_views_live_in_a_shared_mapping():
    with Prefetcher(shuffled_stream()) as stream:
        x, name = next(stream.get_epoch_iterator())
        assert isinstance(name, list)
        line = shared_mapping_of(x.ctypes.data)
        assert line is not None
        assert line.split()[1][3] == "s", line
        assert "memfd:shmfuel-slot" in line
        assert not x.flags.owndata
        del x, name


def test_copy_true_gives_owned_arrays():
    with Prefetcher(shuffled_stream(), copy=True) as stream:
        x, _ = next(stream.get_epoch_iterator())
        assert x.flags.owndata and shared_mapping_of(x.ctypes.data).split()[1][3] != "s"


def test_held_views_stay_intact_while_the_ring_moves_on():
    with Prefetcher(shuffled_stream(n=200, batch_size=5), hwm=3) as stream:
        epoch = stream.get_epoch_iterator()
        held, _ = next(epoch)
        snapshot = held.copy()
        rest = [x.copy() for x, _ in epoch]
        assert len(rest) == 39
        numpy.testing.assert_array_equal(held, snapshot)
        assert stream.stats()["ring"]["held"] == 1
        del held
        list(stream.get_epoch_iterator())
        assert stream.stats()["ring"]["held"] == 0


def test_hoarding_every_batch_does_not_deadlock():
    expected = serial_epochs(shuffled_stream(), 1)[0]
    with Prefetcher(shuffled_stream(), hwm=2) as stream:
        hoard = list(stream.get_epoch_iterator())
        assert as_lists(hoard) == expected
        assert stream.stats()["copied"] > 0


def grow(data):
    n = int(data[0][0])
    return (numpy.full((n + 1) * 1000, n, dtype="int64"),)


def test_growing_batches_are_never_truncated():
    with Prefetcher(Mapping(sequential_stream(n=30, batch_size=1), grow), hwm=2) as stream:
        for n, (x,) in enumerate(stream.get_epoch_iterator()):
            assert x.shape == ((n + 1) * 1000,)
            assert (x == n).all()


def changing_layout(data):
    # the same slot sees arrays of other shapes and dtypes, and lists
    i = int(data[0][0])
    kind = i % 4
    if kind == 0:
        return (numpy.full(3, i, dtype="int64"), numpy.full((2, 2), i, "float32"))
    if kind == 1:
        return (numpy.full(5, i, dtype="int16"), numpy.full((2, 2), i, "float32"))
    if kind == 2:
        return ([i] * 3, numpy.full((1, 2), i, "float64"))
    return (numpy.full(3, i, dtype="int64"), numpy.full((2, 2), i, "float32"))


def test_layouts_changing_from_batch_to_batch_arrive_intact():
    stream = Mapping(sequential_stream(n=40, batch_size=1), changing_layout,
                     add_sources=("a", "b"))
    expected = [changing_layout((numpy.array([i]),)) for i in range(40)]
    with Prefetcher(stream, hwm=3) as prefetched:
        for _ in range(2):
            got = list(prefetched.get_epoch_iterator())
            assert len(got) == 40
            for (_, a, b), (want_a, want_b) in zip(got, expected):
                assert type(a) is type(want_a) and type(b) is type(want_b)
                if isinstance(want_a, list):
                    assert a == want_a
                else:
                    assert a.dtype == want_a.dtype and a.tolist() == want_a.tolist()
                assert b.dtype == want_b.dtype and b.tolist() == want_b.tolist()


def byte_orders(data):
    # the same shape in every slot; the dtype alternates between two
    # that compare unequal and one that is equal to the first but another
    # object (with metadata)
    i = int(data[0][0])
    dtype = [numpy.dtype("<f4"), numpy.dtype(">f4"),
             numpy.dtype("<f4", metadata={"i": i})][i % 3]
    return ((numpy.arange(4) + i).astype(dtype),)


def test_a_batch_of_the_slots_shape_but_another_dtype_keeps_its_dtype():
    stream = Mapping(sequential_stream(n=30, batch_size=1), byte_orders)
    with Prefetcher(stream, hwm=2) as prefetched:
        got = [x for x, in prefetched.get_epoch_iterator()]
    assert len(got) == 30
    for i, x in enumerate(got):
        assert x.dtype.str == ("<f4", ">f4", "<f4")[i % 3]
        assert x.tolist() == [i, i + 1, i + 2, i + 3]


def mixed(data):
    i = int(data[0][0])
    return ([f"s{i}"] * (i % 3), numpy.array([[i], [i, i]], dtype=object),
            numpy.float32(i), {"i": i}, numpy.ma.masked_array([i, 0], mask=[0, 1]))


def test_non_array_sources_arrive_equal():
    stream = Mapping(sequential_stream(n=6, batch_size=1), mixed,
                     add_sources=("strs", "ragged", "scalar", "dict", "masked"))
    expected = list(stream.get_epoch_iterator())
    with Prefetcher(stream) as prefetched:
        got = list(prefetched.get_epoch_iterator())
    assert len(got) == 6
    for ours, theirs in zip(got, expected):
        assert ours[1] == theirs[1] and ours[3] == theirs[3] and ours[4] == theirs[4]
        assert type(ours[3]) is numpy.float32
        assert ours[2].dtype == object and ours[2].tolist() == theirs[2].tolist()
        assert isinstance(ours[5], numpy.ma.MaskedArray)
        assert ours[5].mask.tolist() == [False, True]


def slow_even(data):
    if int(data[0][0]) // 2 % 2 == 0:
        time.sleep(0.02)
    return data


def test_two_workers_keep_order_with_one_slower():
    stream = Mapping(sequential_stream(n=40, batch_size=2), slow_even)
    with Prefetcher(stream, hwm=4, workers=2) as prefetched:
        for _ in range(2):
            got = [list(x) for x, in prefetched.get_epoch_iterator()]
            assert got == [[i, i + 1] for i in range(0, 40, 2)]


def count_calls(path, sleep=0.0):
    def mapping(data):
        with open(path, "a") as f:
            f.write("x")
        time.sleep(sleep)
        return data
    return mapping


def test_back_pressure_producer_stays_within_hwm(tmp_path):
    log = tmp_path / "calls"
    stream = Mapping(sequential_stream(n=100, batch_size=1), count_calls(str(log)))
    with Prefetcher(stream, hwm=3) as prefetched:
        epoch = prefetched.get_epoch_iterator()
        next(epoch)
        time.sleep(0.5)
        # one batch taken, hwm in the ring, one made and waiting for a slot
        assert len(log.read_text()) <= 1 + 3 + 1
        for _ in range(10):
            next(epoch)
        deadline = time.monotonic() + 10
        while len(log.read_text()) < 11 + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert 11 + 3 <= len(log.read_text()) <= 11 + 3 + 1


def test_abandoned_epoch_is_skipped_and_the_next_is_complete():
    expected = serial_epochs(shuffled_stream(), 3)
    with Prefetcher(shuffled_stream(), hwm=3, workers=2) as stream:
        epoch = stream.get_epoch_iterator()
        assert as_lists([next(epoch), next(epoch)]) == expected[0][:2]
        assert as_lists(stream.get_epoch_iterator()) == expected[1]
        stream.get_epoch_iterator()  # abandoned before its first batch
        with pytest.raises(ShmfuelError, match="superseded"):
            next(epoch)
        assert stream.stats()["batches"] == 2 + len(expected[1])


def test_empty_epochs_do_not_spin():
    dataset = IndexableDataset({"x": numpy.zeros(0)})
    stream = DataStream(dataset, iteration_scheme=SequentialScheme(0, 2))
    with Prefetcher(stream) as prefetched:
        for _ in range(3):
            assert list(prefetched.get_epoch_iterator()) == []


def test_example_stream_without_scheme():
    stream = DataStream(IterableDataset({"x": [1, 2, 3]}))
    with Prefetcher(stream) as prefetched:
        assert prefetched.produces_examples
        assert list(prefetched.get_epoch_iterator()) == [(1,), (2,), (3,)]
        assert list(prefetched.get_epoch_iterator()) == [(1,), (2,), (3,)]


def test_close_is_idempotent_and_use_after_close_is_an_error():
    stream = Prefetcher(sequential_stream())
    epoch = stream.get_epoch_iterator()
    x, = next(epoch)
    pids = [p.pid for p in stream._pool.processes]
    stream.close()
    stream.close()
    assert list(x) == [0, 1]  # views outlive close
    with pytest.raises(ClosedError, match="closed"):
        stream.get_epoch_iterator()
    with pytest.raises(ClosedError):
        next(epoch)
    with pytest.raises(ClosedError):
        with stream:
            pass
    assert all(not os.path.exists(f"/proc/{pid}/status") or "zombie" in
               open(f"/proc/{pid}/status").read() for pid in pids)


def test_batches_as_dicts_keep_their_order_and_their_errors():
    with Prefetcher(sequential_stream(n=40, batch_size=2), hwm=4) as stream:
        for _ in range(2):
            got = [(sorted(b), b["x"].tolist())
                   for b in stream.get_epoch_iterator(as_dict=True)]
            assert got == [(["x"], [i, i + 1]) for i in range(0, 40, 2)]
    def boom(data):
        if data[0][0] == 6:
            raise KeyError("no such example")
        return data
    with Prefetcher(Mapping(sequential_stream(), boom), hwm=4) as stream:
        epoch = stream.get_epoch_iterator(as_dict=True)
        assert [next(epoch)["x"].tolist() for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]
        for _ in range(2):  # this iterator too, not just new ones
            with pytest.raises(KeyError, match="no such example"):
                next(epoch)


def test_an_epoch_iterator_ends_at_close_with_batches_ready():
    stream = Prefetcher(sequential_stream(n=100, batch_size=1), hwm=8)
    try:
        epoch = stream.get_epoch_iterator()
        # twice round the ring: the consumer knows every slot's layout
        taken = [int(next(epoch)[0][0]) for _ in range(16)]
        page = stream._consumer.channels[0].control
        inbox = stream._consumer.channels[0].inbox
        for _ in range(50):
            time.sleep(0.05)  # the producer fills the ring meanwhile
            # With a control page, go on until a batch is announced there
            # and none waits in the inbox (where a wait moves them): then
            # nothing but the closed check stops the next one.
            if page is None or (page.messages_waiting() and not inbox):
                break
            taken.append(int(next(epoch)[0][0]))
        else:
            pytest.fail("no batch announced on the page alone")
        assert taken == list(range(len(taken)))
    finally:
        stream.close()
    for _ in range(2):
        with pytest.raises(ClosedError):
            next(epoch)


def test_one_producer_gets_slots_back_once_under_half_a_ring_is_ready():
    with Prefetcher(sequential_stream(n=400, batch_size=1), hwm=8) as stream:
        consumer = stream._consumer
        channel, flush_at = consumer.channels[0], consumer.flush_at
        page = channel.control
        if page is None:
            pytest.skip("no control page: every batch takes the general path")
        from shmfuel.prefetch import control
        half_ring = 2 * flush_at

        def frees_written():
            return page.words[control.FREES_WRITTEN]

        epoch = stream.get_epoch_iterator()
        taken = [int(next(epoch)[0][0]) for _ in range(16)]  # layouts known
        # at a flush point, with more than half a ring ready on the page:
        # the batch comes, and the released slots stay with the consumer
        for _ in range(200):
            if (not channel.inbox and page.messages_waiting(half_ring)
                    and not consumer.position % flush_at):
                break
            time.sleep(0.01)
            taken.append(int(next(epoch)[0][0]))
        else:
            pytest.fail("the producer never got half a ring ahead")
        released, before = len(channel.viewed), frees_written()
        assert released  # dropped, so free to go back
        taken.append(int(next(epoch)[0][0]))
        assert frees_written() == before
        assert len(channel.viewed) == released + 1
        # the producer makes no batch without a slot: its lead runs out,
        # and then the released slots go back to it at the next flush point
        for _ in range(16):
            if (not consumer.position % flush_at
                    and not page.messages_waiting(half_ring)):
                break
            taken.append(int(next(epoch)[0][0]))
        else:
            pytest.fail("the producer stayed half a ring ahead without slots")
        before = frees_written()
        taken.append(int(next(epoch)[0][0]))
        assert frees_written() > before
        assert len(channel.viewed) == 1  # that batch: dropped, not yet looked at
        assert taken == list(range(len(taken)))


def test_stats():
    with Prefetcher(sequential_stream(), hwm=4) as stream:
        assert stream.stats()["time_to_first_batch_s"] is None
        list(stream.get_epoch_iterator())
        stats = stream.stats()
    assert stats["batches"] == 10
    assert stats["time_to_first_batch_s"] > 0
    wait = stats["wait_s"]
    assert 0 <= wait["p50"] <= wait["p95"] <= wait["max"] <= wait["total"]
    assert stats["ring"]["slots"] == 4 and stats["ring"]["held"] == 0
    assert stats["producer_busy_s"][0] > 0


def test_stats_count_batches_waiting_in_the_ring():
    with Prefetcher(sequential_stream(n=40, batch_size=2), hwm=6) as stream:
        epoch = stream.get_epoch_iterator()
        first = next(epoch)
        deadline = time.monotonic() + 10
        while stream.stats()["ring"]["ready"] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        ring = stream.stats()["ring"]
        assert ring == {"slots": 6, "ready": 5, "held": 1}
        del first
        assert stream.stats()["ring"]["held"] == 0
        assert [x.tolist() for x, in epoch][:2] == [[2, 3], [4, 5]]


@pytest.mark.parametrize("workers", [1, 2])
def test_stats_and_pauses_between_batches_lose_and_repeat_nothing(workers):
    # stats() moves announced batches off the control page; pauses fill the
    # ring; every batch must still come once, in order, and the epoch end
    # must stay an end
    n = 600
    with Prefetcher(sequential_stream(n=n, batch_size=1), hwm=8,
                    workers=workers) as stream:
        epoch = stream.get_epoch_iterator()
        got, kept = [], []
        for i, (x,) in enumerate(epoch):
            got.append(int(x[0]))
            if i % 7 == 3:
                assert stream.stats()["batches"] == i + 1
            if i % 50 == 10:
                time.sleep(0.02)
            if i % 13 == 0:
                kept.append(x)  # held views take slots out for a while
            if len(kept) > 3:
                kept.pop(0)
        assert got == list(range(n))
        assert [int(x[0]) for x in kept] == [x for x in range(0, n, 13)][-3:]
        with pytest.raises(StopIteration):
            next(epoch)
        with pytest.raises(StopIteration):
            next(epoch)
        assert stream.stats()["batches"] == n


def test_a_consumer_slower_than_its_producer_keeps_it_going():
    # batches taken straight off the control page: the producer must still
    # learn, before its message queue looks full, how far they were read
    n = 2000
    with Prefetcher(sequential_stream(n=n, batch_size=1), hwm=4,
                    timeout=10) as stream:
        got = []
        for x, in stream.get_epoch_iterator():
            got.append(int(x[0]))
            time.sleep(0.0002)  # the ring is full whenever we come back
        assert got == list(range(n))


def test_producer_busy_time_leaves_out_waiting_for_slots():
    with Prefetcher(sequential_stream(n=16, batch_size=2), hwm=2) as stream:
        for _ in stream.get_epoch_iterator():
            time.sleep(0.05)  # the producer waits for a slot all along
        busy = stream.stats()["producer_busy_s"][0]
    # 8 trivial batches took microseconds; the ~0.4 s of waiting is not busy
    assert 0 < busy < 0.2


def test_batches_are_announced_the_way_the_environment_says(ring_notify):
    with Prefetcher(sequential_stream(), workers=2) as stream:
        pages = [channel.control for channel in stream._consumer.channels]
        assert [page is not None for page in pages] == [ring_notify == "shared"] * 2
        assert len(list(stream.get_epoch_iterator())) == 10
        if ring_notify == "shared":  # every batch and both ends went through
            # (and perhaps batches of the next epoch, which the producers
            # may announce before the consumer has looked at both ends)
            assert 10 + 2 <= sum(page.messages_read for page in pages) <= 10 + 2 + 10


def test_flags_take_numpy_bools_and_nothing_else():
    with Prefetcher(sequential_stream(n=4, batch_size=2), copy=numpy.bool_(True)) as stream:
        with pytest.raises(TypeError, match="as_dict must be True or False, got 1"):
            stream.get_epoch_iterator(as_dict=1)
        # the refused call started no epoch: this one is whole
        batches = list(stream.get_epoch_iterator(as_dict=numpy.True_))
        assert [b["x"].tolist() for b in batches] == [[0, 1], [2, 3]]
        assert all(b["x"].base is None for b in batches)  # copies


def test_bad_arguments():
    with pytest.raises(TypeError, match="hwm must be an int"):
        Prefetcher(sequential_stream(), hwm=2.5)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        Prefetcher(sequential_stream(), workers=0)
    with pytest.raises(ValueError, match="hwm must be at least workers"):
        Prefetcher(sequential_stream(), hwm=1, workers=2)
    with pytest.raises(TypeError, match="wraps a data stream"):
        Prefetcher([1, 2, 3])
    with pytest.raises(ValueError, match="timeout must be positive"):
        Prefetcher(sequential_stream(), timeout=0)
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None, got '5'"):
        Prefetcher(sequential_stream(), timeout="5")
    for name in ("copy", "pin_memory"):  # not read as truthy
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
            Prefetcher(sequential_stream(), **{name: "no"})
    with pytest.raises(ValueError, match="start_method must be one of"):
        Prefetcher(sequential_stream(), start_method="thread")
    with pytest.raises(TypeError, match="worker_init_fn must be a function of the "
                       "producer's index .or None., got int"):
        Prefetcher(sequential_stream(), worker_init_fn=3)
    examples = DataStream(IndexableDataset({"x": [1, 2]}),
                          iteration_scheme=SequentialExampleScheme(2))
    with pytest.raises(ValueError, match="workers=2 would change the batches.*Batch"):
        Prefetcher(Batch(examples, ConstantScheme(1)), workers=2)


def test_unpicklable_stream_is_a_type_error():
    import threading
    stream = Mapping(sequential_stream(), lambda d: d)
    stream.lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be pickled for the producers"):
        Prefetcher(stream)
    lock = threading.Lock()
    with pytest.raises(TypeError, match="stream .or worker_init_fn. cannot be pickled"):
        Prefetcher(sequential_stream(), worker_init_fn=lambda worker: lock)


def test_prefetcher_itself_does_not_pickle():
    with Prefetcher(sequential_stream()) as stream:
        with pytest.raises(TypeError, match="pickle the stream it wraps"):
            pickle.dumps(stream)


def test_garbage_collected_prefetcher_stops_its_producers():
    import gc

    from helpers import gone
    prefetched = Prefetcher(sequential_stream(), workers=2)
    next(prefetched.get_epoch_iterator())
    pids = [p.pid for p in prefetched._pool.processes]
    del prefetched
    gc.collect()
    assert gone(pids)


@pytest.mark.parametrize("as_dict", [False, True])
def test_an_epoch_iterator_keeps_its_prefetcher_and_producers_alive(as_dict):
    import gc
    import weakref

    from helpers import gone
    expected = serial_epochs(sequential_stream(), 1)[0]
    # the one-liner, with nothing else holding the Prefetcher
    got = []
    for batch in Prefetcher(sequential_stream(), hwm=2,
                            workers=2).get_epoch_iterator(as_dict=as_dict):
        gc.collect()
        got.append(batch)
    got = ([(b["x"],) for b in got] if as_dict else got)
    assert as_lists(got) == expected
    prefetched = Prefetcher(sequential_stream(), hwm=2)
    alive, pids = weakref.ref(prefetched), [p.pid for p in prefetched._pool.processes]
    epoch = prefetched.get_epoch_iterator(as_dict=as_dict)
    del prefetched
    gc.collect()
    assert alive() is not None and not gone(pids, patience=0.2)
    assert len(list(epoch)) == len(expected)
    del epoch  # the last reference: now it stops
    gc.collect()
    assert alive() is None and gone(pids)


def test_producers_share_large_arrays_instead_of_unpickling_them():
    from shmfuel.prefetch import _payload
    big = numpy.arange(2**20, dtype="float64")  # 8 MiB
    stream = DataStream(IndexableDataset({"x": big}),
                        iteration_scheme=SequentialScheme(len(big), 2**18))
    payload = _payload.dumps(stream, inherit=True)
    assert len(payload.data) < 100_000 and list(payload.kept.values())[0] is big
    assert payload.buffers == []
    # not forked: the array goes out of band, into the shared segment
    payload = _payload.dumps(stream, inherit=False)
    assert len(payload.data) < 100_000 and payload.kept == {}
    assert [b.raw().nbytes for b in payload.buffers] == [big.nbytes]
    for start_method in ("fork", "spawn"):
        with Prefetcher(stream, start_method=start_method, workers=2) as prefetched:
            got = numpy.concatenate([x for x, in prefetched.get_epoch_iterator()])
        numpy.testing.assert_array_equal(got, big)
    assert not _payload._INHERITED


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_a_producer_writing_to_its_dataset_writes_to_its_own_copy(start_method):
    class Counting(IndexableDataset):
        """Adds 1 to its whole (shared) array after each request."""

        def get_data(self, state=None, request=None):
            (array,) = self.indexables
            value = array[request].copy()
            array += 1
            return (value,)
    dataset = Counting({"x": numpy.zeros(2**18)})  # 2 MiB: shared, not pickled
    stream = DataStream(dataset, iteration_scheme=SequentialScheme(8, 2))
    with Prefetcher(stream, workers=2, start_method=start_method) as prefetched:
        got = [x.tolist() for x, in prefetched.get_epoch_iterator()]
    # each producer counts its own requests, as forked copies would
    assert got == [[0, 0], [0, 0], [1, 1], [1, 1]]
    assert not dataset.indexables[0].any()  # the parent's array is untouched


def test_an_unforked_producer_does_not_hold_its_own_copy_of_the_dataset():
    import psutil
    big = numpy.ones((2**10, 2**14))  # 128 MiB
    stream = DataStream(IndexableDataset({"x": big}),
                        iteration_scheme=SequentialScheme(len(big), 4))
    with Prefetcher(stream, workers=2, start_method="forkserver") as prefetched:
        first = next(prefetched.get_epoch_iterator())
        assert first[0].shape == (4, 2**14) and (first[0] == 1).all()
        own = [psutil.Process(p.pid).memory_full_info().uss
               for p in prefetched._pool.processes]
        del first
    # an interpreter with numpy and shmfuel, not 128 MiB more
    assert max(own) < big.nbytes * 3 // 4


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_unforked_producers_get_the_stream_in_one_segment_not_as_arguments(
        start_method, monkeypatch):
    # start() writes a process's arguments down a pipe that the child reads
    # only after its imports: a large stream there made each start wait
    from shmfuel.prefetch import _lifecycle, layout
    sent, arguments = [], []
    real_send = _lifecycle.ring.send_segment

    def send_segment(sock, message, fd):
        sent.append(layout.MESSAGE.unpack(message)[0])
        real_send(sock, message, fd)
    process_class = _lifecycle.choose_context(start_method).Process
    real_start = process_class.start

    def start(process):
        arguments.append(process._args[0])
        real_start(process)
    monkeypatch.setattr(_lifecycle.ring, "send_segment", send_segment)
    monkeypatch.setattr(process_class, "start", start)
    big = numpy.arange(2**19, dtype="float64")  # 4 MiB
    stream = DataStream(IndexableDataset({"x": big}),
                        iteration_scheme=SequentialScheme(len(big), 2**17))
    with Prefetcher(stream, workers=2, start_method=start_method) as prefetched:
        got = numpy.concatenate([x for x, in prefetched.get_epoch_iterator()])
    numpy.testing.assert_array_equal(got, big)
    if start_method == "fork":  # arrays inherited: a small payload, no segment
        assert layout.MSG_STREAM not in sent
        assert all(len(payload) < 100_000 for payload in arguments)
    else:
        assert sent.count(layout.MSG_STREAM) == 2 and arguments == [None, None]


def test_no_shared_memory_for_the_stream_is_an_error_that_names_the_fix(monkeypatch):
    import errno

    from shmfuel.exceptions import SharedMemoryError

    def no_space(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(SharedMemoryError,
                       match="for the pickled data stream .*No space.*"
                             "start_method='fork'"):
        Prefetcher(sequential_stream(), workers=2, start_method="spawn")


def test_abandoning_an_epoch_stops_a_slow_producer_promptly(tmp_path):
    log = tmp_path / "calls"
    stream = Mapping(sequential_stream(n=200, batch_size=1), count_calls(str(log), 0.02))
    with Prefetcher(stream, hwm=64) as prefetched:
        epoch = prefetched.get_epoch_iterator()
        next(epoch)
        next(epoch)
        first, = next(prefetched.get_epoch_iterator())
        assert list(first) == [0]
        time.sleep(0.2)
        # the abandoned epoch was cut short: far fewer than its 200 batches
        assert len(log.read_text()) < 40


def noisy(data):
    import random
    return (data[0] + numpy.random.randint(1000), data[0] * 0 + random.randint(0, 999))


def test_seed_makes_random_transformers_reproducible_across_workers():
    def run(workers, seed):
        stream = Mapping(sequential_stream(n=16, batch_size=2), noisy, add_sources=("a", "b"))
        with Prefetcher(stream, workers=workers, hwm=4, seed=seed) as prefetched:
            return [as_lists(prefetched.get_epoch_iterator()) for _ in range(2)]
    one, two = run(1, seed=7), run(2, seed=7)
    assert one == two
    assert one[0] != one[1]
    assert run(1, seed=8) != one
    with pytest.raises(TypeError, match="seed must be an int"):
        Prefetcher(sequential_stream(), seed="7")


def test_producers_do_not_repeat_each_others_random_draws():
    numpy.random.seed(0)  # a seeded parent: forked producers inherit its state
    stream = Mapping(sequential_stream(n=16, batch_size=2), noisy, add_sources=("a", "b"))
    with Prefetcher(stream, workers=2, hwm=4) as prefetched:
        batches = as_lists(prefetched.get_epoch_iterator())
    noise = [numpy.subtract(b[1], b[0]).tolist() for b in batches]
    assert noise[0::2] != noise[1::2]


@pytest.mark.parametrize("workers,hwm,seed", [(1, 2, 0), (1, 16, 1), (2, 4, 2), (2, 9, 3)])
def test_random_abandons_keep_every_epoch_exact(workers, hwm, seed):
    rng = numpy.random.RandomState(seed)
    epochs = 8
    expected = serial_epochs(shuffled_stream(n=50, batch_size=3), epochs)
    with Prefetcher(shuffled_stream(n=50, batch_size=3), hwm=hwm, workers=workers) as stream:
        for e in range(epochs):
            take = rng.randint(0, len(expected[e]) + 2)
            epoch = stream.get_epoch_iterator()
            got = as_lists(b for _, b in zip(range(take), epoch))
            assert got == expected[e][:take]


def uneven(data):
    # batches of very different sizes, so slots keep growing (new segments)
    x = data[0]
    return (numpy.repeat(x, 1 + int(x.sum()) % 7 * 700, axis=0), data[1])


@pytest.mark.parametrize("workers,hwm,seed", [(1, 2, 4), (2, 4, 5)])
def test_random_abandons_of_growing_batches_keep_every_epoch_exact(workers, hwm, seed):
    # a batch announced for a slot whose new segment is still on its way
    # over the socket, skipped by an abandoned epoch or delivered
    def stream():
        return Mapping(shuffled_stream(n=50, batch_size=3), uneven)
    rng = numpy.random.RandomState(seed)
    epochs = 8
    expected = serial_epochs(stream(), epochs)
    with Prefetcher(stream(), hwm=hwm, workers=workers) as prefetched:
        for e in range(epochs):
            take = rng.randint(0, len(expected[e]) + 2)
            epoch = prefetched.get_epoch_iterator()
            got = as_lists(b for _, b in zip(range(take), epoch))
            assert got == expected[e][:take]
        assert prefetched.stats()["batches"] > 0


def test_a_free_threaded_python_is_refused_with_the_fix(monkeypatch):
    import sysconfig
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: 1 if name == "Py_GIL_DISABLED" else real(name))
    with pytest.raises(ShmfuelError, match=r"the Prefetcher needs a CPython build with the "
                                           r"GIL.*standard CPython \(python3.13\)"):
        Prefetcher(sequential_stream())
