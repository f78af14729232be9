"""pin_memory on a real CUDA device; skipped where there is none (as in CI).

Each copy is queued behind a GPU sleep and its views are dropped at once, so
the host runs far ahead of the device: a slot handed back to its producer
before the copy that reads it has run would give that copy a later batch.
"""

import numpy
import pytest
from helpers import sequential_stream

from shmfuel import Prefetcher
from shmfuel.prefetch._pinning import CudaPinning
from shmfuel.transformers import Mapping

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("ring_notify"),
]

ELEMENTS = 1 << 20  # 4 MiB of float32 per batch
GPU_SLEEP_CYCLES = 5_000_000  # a few milliseconds per copy


def fill(data):
    return (numpy.full(ELEMENTS, int(data[0][0]), dtype=numpy.float32),)


def copies_behind_the_gpu(prefetched, epochs=2):
    """Batch numbers whose device copy does not hold that batch."""
    copies = []
    for _ in range(epochs):
        for n, (x,) in enumerate(prefetched.get_epoch_iterator()):
            host = torch.from_numpy(x)
            torch.cuda._sleep(GPU_SLEEP_CYCLES)
            copies.append((n, host.to("cuda", non_blocking=True)))
            del x, host
    torch.cuda.synchronize()
    assert len(copies) == 24 * epochs
    return [n for n, device in copies if not bool((device == n).all())]


def test_pinned_views_are_page_locked():
    stream = Mapping(sequential_stream(n=8, batch_size=1), fill)
    with Prefetcher(stream, hwm=4, pin_memory=True) as prefetched:
        pinned = [torch.from_numpy(x).is_pinned()
                  for (x,) in prefetched.get_epoch_iterator()]
    with Prefetcher(stream, hwm=4) as prefetched:
        unpinned = [torch.from_numpy(x).is_pinned()
                    for (x,) in prefetched.get_epoch_iterator()]
    assert pinned == [True] * 8 and unpinned == [False] * 8


def test_pinned_slots_are_recycled_only_after_their_copies_ran():
    stream = Mapping(sequential_stream(n=24, batch_size=1), fill)
    with Prefetcher(stream, hwm=4, pin_memory=True) as prefetched:
        assert copies_behind_the_gpu(prefetched) == []
        stats = prefetched.stats()
    # the ring recycled its 4 slots many times, every batch a pinned view
    assert stats["batches"] == 48 and stats["copied"] == 0


def test_the_check_sees_slots_recycled_before_their_copies(monkeypatch):
    # the same loop with the events ignored must deliver wrong batches,
    # or the test above could not fail
    monkeypatch.setattr(CudaPinning, "done", lambda self, event: True)
    stream = Mapping(sequential_stream(n=24, batch_size=1), fill)
    with Prefetcher(stream, hwm=4, pin_memory=True) as prefetched:
        assert copies_behind_the_gpu(prefetched) != []


def test_closing_waits_for_copies_still_reading_the_ring():
    stream = Mapping(sequential_stream(n=24, batch_size=1), fill)
    copies = []
    with Prefetcher(stream, hwm=4, pin_memory=True) as prefetched:
        for _, (x,) in zip(range(4), prefetched.get_epoch_iterator()):
            torch.cuda._sleep(4 * GPU_SLEEP_CYCLES)
            copies.append(torch.from_numpy(x).to("cuda", non_blocking=True))
            del x
    # the slots were unmapped at close, after the queued copies ran
    torch.cuda.synchronize()
    assert [int(c[0]) for c in copies] == [0, 1, 2, 3]
    assert all(bool((c == n).all()) for n, c in enumerate(copies))


def test_pinned_batches_feed_a_training_step():
    model = torch.nn.Linear(8, 1).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def features(data):
        rng = numpy.random.default_rng(int(data[0][0]))
        x = rng.standard_normal((64, 8)).astype(numpy.float32)
        return x, x.sum(axis=1, keepdims=True)

    stream = Mapping(sequential_stream(n=32, batch_size=1), features,
                     add_sources=("features", "targets"))
    losses = []
    with Prefetcher(stream, pin_memory=True) as prefetched:
        for _ in range(20):
            for _, x, y in prefetched.get_epoch_iterator():
                x = torch.from_numpy(x).to("cuda", non_blocking=True)
                y = torch.from_numpy(y).to("cuda", non_blocking=True)
                loss = torch.nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
