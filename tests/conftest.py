"""Fixtures every test gets: nothing may leak into /dev/shm or the process table."""

from __future__ import annotations

import os
import time

import psutil
import pytest

SHM = "/dev/shm"

# Long-lived helpers that multiprocessing starts once per session.
_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _shm_entries() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _our_children() -> list[psutil.Process]:
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not any(helper in cmdline for helper in _HELPERS):
            children.append(child)
    return children


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a /dev/shm entry or a child process behind."""
    before = _shm_entries()
    yield
    deadline = time.monotonic() + 5
    children = _our_children()
    while children and time.monotonic() < deadline:
        time.sleep(0.05)
        children = _our_children()
    leaked = _shm_entries() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = _shm_entries() - before
    for child in children:
        child.kill()
    assert not children, f"child processes left behind: {children}"
    assert not leaked, f"/dev/shm entries left behind: {sorted(leaked)}"


def _notify_modes() -> list[str]:
    from shmfuel.prefetch import control
    os.environ.pop(control.ENV, None)
    # the control pages need x86's store order; elsewhere only sockets
    return ["shared", "socket"] if control.mode() == "shared" else ["socket"]


@pytest.fixture(params=_notify_modes())
def ring_notify(request, monkeypatch):
    """Run a test with each way a ring announces batches (see ``control``)."""
    from shmfuel.prefetch import control
    monkeypatch.setenv(control.ENV, request.param)
    return request.param
