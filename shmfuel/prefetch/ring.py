"""Shared memory segments of the ring: create, map, pass, and forget.

Every segment is anonymous from the moment it exists. On Linux it is a
``memfd`` (it has no name, is not under ``/dev/shm`` and is not limited by
a container's ``--shm-size``); elsewhere it is a POSIX shared memory object
whose name is unlinked right after it is opened. Either way the producer
that creates a segment passes its file descriptor to the consumer over
their socket (``SCM_RIGHTS``), both map it, and the kernel frees the memory
when the last mapping goes: no process, however it dies, can leak a
segment, and there is nothing for the resource tracker to track.

Pages are reserved when the segment is created (``posix_fallocate``), so a
shortage of memory fails there with :class:`SharedMemoryError` naming the
size, never with ``SIGBUS`` in the middle of an epoch, and are mapped with
``MAP_POPULATE`` so the first write into a slot does not page-fault.
"""

from __future__ import annotations

import array
import mmap
import os
import socket

from shmfuel.exceptions import SharedMemoryError

PAGE = mmap.PAGESIZE


def round_up(size: int, to: int = PAGE) -> int:
    return max(to, (size + to - 1) // to * to)


def grown_size(needed: int, current: int) -> int:
    """Capacity of a slot that must hold ``needed`` bytes.

    It grows by at least a quarter at a time, so slowly growing batches
    do not recreate the slot every time.
    """
    if needed <= current:
        return current
    return round_up(max(needed, current + current // 4))


def _fix_hint() -> str:
    if hasattr(os, "memfd_create"):
        return ("free memory, lower hwm or the batch size, or raise the "
                "container's memory limit")
    return ("free space in the shared memory file system, or lower hwm or "
            "the batch size (in Docker: docker run --shm-size=...)")


def create_segment(size: int, what: str = "a ring slot",
                   fix: str | None = None) -> int:
    """A file descriptor of a new anonymous shared segment of ``size`` bytes.

    Raises
    ------
    SharedMemoryError
        If the memory cannot be reserved.

    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("shmfuel-slot", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux fallback
        from multiprocessing import shared_memory
        shm = shared_memory.SharedMemory(create=True, size=size)
        fd = os.dup(shm._fd)  # type: ignore[attr-defined]
        shm.close()
        shm.unlink()
    try:
        os.ftruncate(fd, size)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.close(fd)
        raise SharedMemoryError(
            f"cannot reserve {size / 2**20:.1f} MiB of shared memory for "
            f"{what} ({exc.strerror}); {fix or _fix_hint()}") from exc
    return fd


def map_segment(fd: int, size: int) -> mmap.mmap:
    """Map a segment read-write and shared, pages populated."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)


def send_segment(sock: socket.socket, message: bytes, fd: int) -> None:
    """Send ``message`` with ``fd`` attached."""
    socket.send_fds(sock, [message], [fd])


_FD_SIZE = array.array("i").itemsize


def receive_nowait(sock: socket.socket, bufsize: int,
                   maxfds: int) -> tuple[bytes, list[int]] | None:
    """Received bytes and file descriptors, or None if nothing is there.

    ``socket.recv_fds`` ignores its ``flags`` before Python 3.12, so this
    calls ``recvmsg`` with ``MSG_DONTWAIT`` itself.
    """
    try:
        data, ancillary, _, _ = sock.recvmsg(
            bufsize, socket.CMSG_LEN(maxfds * _FD_SIZE), socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % _FD_SIZE])
    return data, list(fds)
