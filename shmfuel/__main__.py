"""Command line: ``python -m shmfuel serve package.module:factory``.

``factory`` is a callable that returns a data stream (or a data stream
itself); it is imported with the current directory on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from shmfuel.streams import AbstractDataStream


def _import(spec: str, name: str, what: str) -> Any:
    """What ``module:attribute`` names; ``name`` is the attribute's part of
    the expected form, ``what`` says what it should be."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"expected package.module:{name}, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(
            f"cannot import {module_name!r} (from {spec!r}): {exc}. Run from "
            "the directory that holds it, or add that directory to "
            "PYTHONPATH") from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SystemExit(
                f"{module_name} has no {attribute!r} (from {spec!r}): name {what}")
        target = getattr(target, part)
    return target


def load_stream(spec: str) -> AbstractDataStream:
    """The stream that ``module:attribute`` names (called if callable)."""
    target = _import(spec, "factory", "a data stream, or a function that returns one")
    stream = target() if callable(target) and not isinstance(
        target, AbstractDataStream) else target
    if not isinstance(stream, AbstractDataStream):
        raise SystemExit(f"{spec} gave a {type(stream).__name__}, not a data "
                         "stream")
    return stream


def load_function(spec: str) -> Any:
    """``--worker-init``: the function that ``module:function`` names."""
    target = _import(spec, "function", "a function of the producer's index")
    if not callable(target):
        raise SystemExit(f"{spec} is a {type(target).__name__}, not a function "
                         "of the producer's index")
    return target


def shard_spec(text: str) -> tuple[int, int]:
    """``--shard K/N``: share K of N servers, 0 <= K < N."""
    k, sep, n = text.partition("/")
    if sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n):
        return int(k), int(n)
    raise argparse.ArgumentTypeError(
        f"expected K/N with 0 <= K < N (this server's share of N), got {text!r}; "
        "for example 0/2 and 1/2 for two servers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shmfuel")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a data stream over TCP")
    serve.add_argument("factory", help="package.module:factory")
    serve.add_argument("--port", type=int, default=5557,
                       help="TCP port (0: any free port); default 5557")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to bind; default 127.0.0.1 (this "
                            "machine only); 0.0.0.0 for every interface")
    serve.add_argument("--workers", type=int, default=1,
                       help="producer processes (a Prefetcher) for the stream")
    serve.add_argument("--worker-init", default=None, metavar="MODULE:FUNCTION",
                       help="with --workers 2 or more: called in each producer "
                            "with its index before its stream starts")
    serve.add_argument("--hwm", type=int, default=10)
    serve.add_argument("--shard", type=shard_spec, default=None, metavar="K/N",
                       help="serve share K of N of the requests")
    serve.add_argument("--heartbeat", type=float, default=1.0,
                       help="seconds between heartbeats while a client waits")
    serve.add_argument("--allow-pickle", action="store_true",
                       help="send values without a safe encoding pickled "
                            "(trusted networks only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    from shmfuel.server import start_server
    stream = load_stream(args.factory)
    worker_init_fn = (load_function(args.worker_init)
                      if args.worker_init is not None else None)
    # Ctrl-C and SIGTERM make start_server return.
    start_server(stream, port=args.port, hwm=args.hwm, host=args.host,
                 workers=args.workers, shard=args.shard,
                 allow_pickle=args.allow_pickle, heartbeat=args.heartbeat,
                 worker_init_fn=worker_init_fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
