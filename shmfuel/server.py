"""Fuel's ``fuel.server`` path: :func:`start_server` (needs pyzmq)."""

from __future__ import annotations

from shmfuel.bridge.server import start_server

__all__ = ["start_server"]
