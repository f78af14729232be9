"""The Prefetcher: a data stream whose batches are made in other processes.

``Prefetcher(stream)`` starts producer processes that run ``stream`` and
write its batches into a ring of shared memory slots; iterating the
Prefetcher gives numpy arrays that are views of those slots. Module map:

* ``layout``     slot header and message codecs (pure)
* ``ring``       anonymous shared segments: create, map, pass
* ``control``    each producer's control page: ring messages and freed
                 slots in shared memory, and how each side sleeps
* ``sharding``   splitting requests between producers (pure)
* ``producer``   the producer process's loop
* ``consumer``   ordered delivery, view lifetimes, recycling
* ``_lifecycle`` start method, the shutdown protocol, exit hooks
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy

from shmfuel._checks import flag, seconds, whole
from shmfuel._refcounts import check_build
from shmfuel.exceptions import ClosedError, ShmfuelError
from shmfuel.prefetch._lifecycle import ProducerPool
from shmfuel.prefetch.consumer import Consumer
from shmfuel.prefetch.sharding import why_not_shardable
from shmfuel.streams import AbstractDataStream


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


class Prefetcher(AbstractDataStream):
    """Runs a data stream in producer processes; hands out shared memory.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The pipeline to run. It is pickled once with cloudpickle, so it may
        hold lambdas and classes defined in ``__main__``; each producer runs
        its own copy.
    hwm : int, optional
        Ring depth: how many batches the producers may be ahead of the
        consumer (split between the producers). Default 10.
    workers : int, optional
        Number of producer processes. With ``workers > 1`` each producer
        answers every ``workers``-th request of the iteration scheme, and
        the batches arrive exactly as with one producer, in the same order.
        This needs a *per-batch* pipeline: single-child transformers that
        make one item per child item, over a ``DataStream`` with an
        iteration scheme. Pipelines with ``Batch``, ``Cache``, ``Filter``,
        ``Unpack``, ``Window`` or ``Merge``, or without a scheme, hold state
        across requests and raise ``ValueError`` for ``workers > 1``.
    copy : bool, optional
        Hand out arrays that own their memory instead of views into the
        ring. Default False.
    timeout : float, optional
        Raise :class:`~shmfuel.exceptions.PrefetchTimeoutError` if a batch
        takes longer than this many seconds. By default, wait as long as the
        producers are alive (a producer's death is always noticed at once).
    start_method : str, optional
        ``'fork'``, ``'forkserver'`` or ``'spawn'``; by default fork when it
        is safe (Linux, one thread, no CUDA context), else forkserver.
    pin_memory : bool, optional
        Page-lock each slot once with ``cudaHostRegister`` so that
        ``torch.from_numpy(view).to('cuda', non_blocking=True)`` is a direct
        DMA. Needs torch with CUDA. A slot is recycled only after the CUDA
        work queued when its views were released has finished.
    seed : int, optional
        Make randomness in the pipeline reproducible: before each batch,
        ``random`` and numpy's global generator are seeded from ``seed``,
        the epoch and the batch's index in it, so a transformer that draws
        from them makes the same batches whatever the number of producers.
        Without a seed each producer seeds them once, differently, so no
        two producers repeat each other's random draws.
    worker_init_fn : callable, optional
        Called in each producer with its index (0 to ``workers - 1``)
        before its stream starts (after the seeding above), as PyTorch's
        DataLoader does: to lower the producers' CPU priority, pin them to
        CPUs, open per-producer resources. Pickled with the stream. An
        exception in it is raised here at the first batch, like one in the
        pipeline.

    View lifetime
    -------------
    Arrays of a batch are views of a slot and stay valid as long as any of
    them (or anything made from them: slices, ``torch.from_numpy``) is
    referenced; the slot is reused only after all are gone. Keep a batch
    past the next ones freely; if the caller holds so many that a producer
    would have no slot left, the next batch is delivered as a copy. Other
    sources (lists, strings, object arrays, scalars) are unpickled: they
    are owned objects, equal to and of the same type as what the stream
    made.

    Memory
    ------
    Each of the ``hwm`` slots holds one batch: a header (about 50 bytes
    plus 40 per source) and each source, rounded up to 64 bytes; a slot
    grows (by at least 25%) when a later batch is larger and never
    shrinks. Shared memory used is at most ``hwm * 1.25 * (largest batch +
    header)``, each slot rounded up to whole pages, plus the copies made
    for batches the caller hoards.

    Faults
    ------
    An exception in the pipeline is raised here, after the batches before
    it, with its type and message and the producer's traceback as
    ``__cause__``. A producer that dies raises
    :class:`~shmfuel.exceptions.ProducerDiedError` with its exit code or
    signal. Either error is raised again by every later call. Producers
    exit when the consumer dies, and shared memory has no name to leak.

    """

    def __init__(self, data_stream: Any, hwm: int = 10, workers: int = 1,
                 copy: bool = False, timeout: float | None = None,
                 start_method: str | None = None,
                 pin_memory: bool = False, seed: int | None = None,
                 worker_init_fn: Callable[[int], Any] | None = None) -> None:
        check_build("the Prefetcher")
        for name, value in (("hwm", hwm), ("workers", workers)):
            if not whole(value):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if hwm < workers:
            raise ValueError(f"hwm must be at least workers ({workers}) so "
                             f"that every producer has a slot, got {hwm}")
        timeout = seconds("timeout", timeout, optional=True)
        copy, pin_memory = flag("copy", copy), flag("pin_memory", pin_memory)
        if not isinstance(data_stream, AbstractDataStream):
            raise TypeError("Prefetcher wraps a data stream (an "
                            "AbstractDataStream), got "
                            f"{type(data_stream).__name__}")
        if workers > 1:
            reason = why_not_shardable(data_stream)
            if reason is not None:
                raise ValueError(
                    f"workers={workers} would change the batches of this "
                    f"stream: {reason}. Use workers=1, or batch in the "
                    "iteration scheme (DataStream(dataset, iteration_scheme="
                    "ShuffledScheme(...))) so each batch is one request")
        super().__init__(axis_labels=data_stream.axis_labels)
        self._sources = tuple(data_stream.sources)
        self._produces_examples = data_stream.produces_examples
        pinning = _cuda_pinning() if pin_memory else None
        slots = _split(hwm, workers)
        self.hwm = hwm
        self.workers = workers
        if seed is not None and not whole(seed):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError("worker_init_fn must be a function of the "
                            "producer's index (or None), got "
                            f"{type(worker_init_fn).__name__}")
        self._pool = ProducerPool(data_stream, workers, slots, start_method,
                                  seed, worker_init_fn)
        self._consumer = Consumer(self._pool, slots, copy, timeout, pinning)
        self._closed = False
        self._finalizer = weakref.finalize(self, self._consumer.release)

    @property
    def produces_examples(self) -> bool:
        return bool(self._produces_examples)

    @produces_examples.setter
    def produces_examples(self, value: bool) -> None:
        self._produces_examples = value

    @property
    def start_method(self) -> str:
        return self._pool.start_method

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Prefetcher is closed; make a new one")

    def get_epoch_iterator(self, as_dict: bool = False) -> Iterator[Any]:
        """A new epoch; what is left of the previous one is skipped."""
        self._check_open()
        as_dict = flag("as_dict", as_dict)
        # once the Prefetcher is closed, the iterator raises ClosedError
        # the iterator keeps this Prefetcher (and so its producers) alive
        batches = self._consumer.epoch_iterator(self._consumer.start_epoch(),
                                                prefetcher=self)
        if as_dict:
            return map(functools.partial(_as_dict, self._sources), batches)
        return batches

    def get_data(self, request: Any = None) -> Any:
        raise NotImplementedError("iterate a Prefetcher with "
                                  "get_epoch_iterator()")

    def next_epoch(self) -> None:
        """Nothing to do: each epoch iterator starts a new epoch."""
        self._check_open()

    def reset(self) -> None:
        """Nothing to do: each epoch iterator starts a new epoch."""
        self._check_open()

    def close(self) -> None:
        """Stop the producers. Idempotent; views handed out stay valid."""
        if not self._closed:
            self._closed = True
            self._consumer.fail(ClosedError(
                "this Prefetcher is closed; make a new one"))
        self._finalizer()

    def __enter__(self) -> Prefetcher:
        self._check_open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __getstate__(self) -> Any:
        raise TypeError("a Prefetcher owns processes and cannot be pickled; "
                        "pickle the stream it wraps instead")

    def stats(self) -> dict[str, Any]:
        """Counters of the ring so far.

        Keys: ``batches`` delivered, ``copied`` (delivered as copies),
        ``wait_s`` (``total``, ``p50``, ``p95``, ``max`` of the time
        ``next()`` waited for a producer; 0 when a batch was ready),
        ``producer_busy_s`` (time each producer spent making and writing
        batches, as of the last batch it announced; a producer adds it up
        every 32 batches, or every batch while they take over 20 us),
        ``ring`` (``slots``, ``ready``: delivered by producers but not yet
        taken, ``held``: taken and still referenced), and
        ``time_to_first_batch_s`` (from construction).
        """
        consumer = self._consumer
        consumer._collect()
        if consumer.broken is None and not self._closed:
            try:
                for channel in consumer.channels:
                    consumer._receive(channel)  # what was sent meanwhile
            except ShmfuelError:
                pass  # a dead producer: the next batch raises it
        # next() calls that found a batch ready waited 0 s
        waits = numpy.zeros(max(1, consumer.delivered, len(consumer.waits)))
        waits[:len(consumer.waits)] = consumer.waits
        return {
            "batches": consumer.delivered,
            "copied": consumer.copied,
            "wait_s": {"total": float(waits.sum()),
                       "p50": float(numpy.percentile(waits, 50)),
                       "p95": float(numpy.percentile(waits, 95)),
                       "max": float(waits.max())},
            "producer_busy_s": [
                (c.busy_ns if c.control is None else c.control.busy_ns()) / 1e9
                for c in consumer.channels],
            "ring": {"slots": self.hwm,
                     "ready": sum(sum(message[0] == 1 for message in c.inbox)
                                  for c in consumer.channels),
                     "held": sum(c.held for c in consumer.channels)},
            "time_to_first_batch_s": consumer.first_batch_s,
        }



def _as_dict(sources: tuple[str, ...], batch: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(sources, batch))


def _cuda_pinning() -> Any:
    from shmfuel.prefetch._pinning import CudaPinning
    return CudaPinning()


__all__ = ["Prefetcher"]
