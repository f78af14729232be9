"""pin_memory: the recycling logic with a stand-in for CUDA, and the errors."""

import importlib.util

import numpy
import pytest
from helpers import sequential_stream

import shmfuel.prefetch as prefetch
from shmfuel import Prefetcher
from shmfuel.transformers import Mapping

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("ring_notify")]


class FakeEvent:
    def __init__(self, polls_needed):
        self.polls_left = polls_needed

    def query(self):
        self.polls_left -= 1
        return self.polls_left <= 0


class FakePinning:
    """Events finish only after being polled a few times, like a GPU behind."""

    def __init__(self):
        self.registered = {}
        self.unregistered = 0
        self.waited = 0
        self.events = []

    def register(self, mapping):
        assert id(mapping) not in self.registered, "registered twice"
        self.registered[id(mapping)] = len(mapping)

    def unregister(self, mapping):
        self.unregistered += 1
        del self.registered[id(mapping)]

    def synchronize(self):
        self.synchronized = True

    def record(self):
        self.events.append(FakeEvent(polls_needed=5))
        return self.events[-1]

    def done(self, event):
        return event.query()

    def wait(self, event):
        self.waited += 1
        while not event.query():
            pass


def grow(data):
    n = int(data[0][0])
    return (numpy.full(1000 * (n + 1), n),)


def test_slots_wait_for_their_copies_and_the_ring_never_wedges(monkeypatch):
    fake = FakePinning()
    monkeypatch.setattr(prefetch, "_cuda_pinning", lambda: fake)
    stream = Mapping(sequential_stream(n=40, batch_size=1), grow)
    with Prefetcher(stream, hwm=3, pin_memory=True) as prefetched:
        for _ in range(2):
            for n, (x,) in enumerate(prefetched.get_epoch_iterator()):
                assert (x == n).all() and len(x) == 1000 * (n + 1)
            del x
        stats = prefetched.stats()
        assert fake.registered
    # closing un-pins every slot, after waiting for the device
    assert fake.registered == {} and fake.synchronized
    # every slot mapping was registered once, unregistered when it grew or
    # at close
    assert fake.unregistered > 3
    # each view delivery recorded an event when released, and its slot was
    # recycled only after the event completed
    assert stats["batches"] == 80
    assert len(fake.events) == 80 - stats["copied"] > 20
    # a producer whose slots all wait for the device is waited for: its
    # batches stay in page-locked slots rather than being copied out
    assert stats["copied"] == 0 and fake.waited > 0
    assert all(event.polls_left <= 0 for event in fake.events[:-3])


def test_pin_memory_without_cuda_names_the_fix():
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ImportError, match=r"pin_memory=True needs torch: pip install 'shmfuel\[torch\]'"):
            Prefetcher(sequential_stream(), pin_memory=True)
    else:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            Prefetcher(sequential_stream(), pin_memory=True)
