"""Page-locking ring slots for direct host-to-device copies (CUDA).

Each slot mapping is registered once with ``cudaHostRegister`` when the
consumer maps it, so copying a view with ``non_blocking=True`` is a DMA
straight from the ring. Such a copy may still be running when the caller
drops its views, so a released slot is recycled only once a CUDA event
recorded at release time (after the copy was queued on the current stream)
has completed. The consumer polls these events while it waits for a batch,
so a training loop that queues work far ahead of the GPU cannot wedge the
ring with slots that nobody looks at again; when every slot of a producer
waits for the device, the consumer waits for the oldest event rather than
hand out an unpinned copy.
"""

from __future__ import annotations

from typing import Any

import numpy

from shmfuel._extras import require


class CudaPinning:
    """cudaHostRegister + events, through torch."""

    def __init__(self) -> None:
        torch = require("torch", "torch", "pin_memory=True")
        if not torch.cuda.is_available():
            raise RuntimeError(
                "pin_memory=True needs a CUDA device, but "
                "torch.cuda.is_available() is False; pass pin_memory=False")
        self.torch = torch
        self.cudart = torch.cuda.cudart()
        self.pointers: dict[int, int] = {}

    def register(self, mapping: Any) -> None:
        address = numpy.frombuffer(mapping, numpy.uint8).ctypes.data
        error = self.cudart.cudaHostRegister(address, len(mapping), 0)
        if int(error) != 0:
            raise RuntimeError(f"cudaHostRegister of a {len(mapping)}-byte "
                               f"ring slot failed with CUDA error {error}")
        self.pointers[id(mapping)] = address

    def unregister(self, mapping: Any) -> None:
        address = self.pointers.pop(id(mapping), None)
        if address is not None:
            self.cudart.cudaHostUnregister(address)

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def record(self) -> Any:
        event = self.torch.cuda.Event()
        event.record(self.torch.cuda.current_stream())
        return event

    def done(self, event: Any) -> bool:
        return bool(event.query())

    def wait(self, event: Any) -> None:
        event.synchronize()
