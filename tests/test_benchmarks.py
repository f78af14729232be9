"""Smoke runs of the benchmark scripts, so they keep working (no timing checks)."""

import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")


@pytest.mark.timeout(120)
def test_seed_tutorial_quick(tmp_path):
    out = tmp_path / "seed.json"
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "seed_tutorial.py"), "--quick",
         "--out", str(out)], capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr
    assert "prefetcher" in result.stdout and "bridge" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"serial", "prefetcher", "bridge"}
    assert data["results"]["prefetcher"]["batches"] == 10
