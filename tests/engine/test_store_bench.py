"""Runs the throughput benchmark on a small size (only with `-m bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_throughput.py"


@pytest.mark.bench
def test_engine_throughput_small(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "16M", "--dir", str(tmp_path), "--verify"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("raw", "zstd", "aes"):
        assert any(line.startswith(name) and "MiB/s" in line for line in lines), proc.stdout
