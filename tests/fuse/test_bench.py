"""The FUSE workload benchmark (benchmarks/fuse_workloads.py) end to end, at small sizes.

The full run is not part of the default suite: `pytest -m bench -s tests/fuse/test_bench.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuse_workloads.py"


@pytest.mark.bench
def test_fuse_workloads_small(tmp_path):
    out = tmp_path / "figures.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "16M", "--files", "200", "--tar-files", "200",
         "--fio-size", "8M", "--fio-runtime", "2", "--timeout", "60",
         "--dir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    figures = json.loads(out.read_text())
    cart = figures["cartridge"]
    assert not cart["errors"], cart["errors"]
    for key in ("seq_write", "seq_read", "files_create", "files_stat", "files_list",
                "files_delete", "tar_extract", "rand_read", "rand_write"):
        assert cart["results"][key] > 0, key
        assert key in figures["plain"]["results"], key
    assert "cart/plain" in r.stdout and "cart/rclone" in r.stdout
    # No mount may be left behind.
    for name in ("mnt-cartridge", "mnt-rclone"):
        mnt = tmp_path / "work" / name
        assert not mnt.exists() or not mnt.is_mount()


def test_null_target_runs_the_file_workloads(tmp_path):
    """`--targets null` (benchmarks/nullfs.py, the pyfuse3 floor) beside the cartridge: the
    small-file workloads get figures and a ratio column; the others are unsupported there."""
    out = tmp_path / "figures.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--files", "100", "--targets", "cartridge,null",
         "--only", "files_create,files_stat,files_list,files_delete,rand_read", "--size", "8M",
         "--tar-files", "10", "--fio-size", "4M", "--fio-runtime", "1", "--timeout", "60",
         "--dir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    figures = json.loads(out.read_text())
    for key in ("files_create", "files_stat", "files_list", "files_delete"):
        assert figures["null"]["results"][key] > 0, key
        assert figures["cartridge"]["results"][key] > 0, key
    assert figures["null"]["errors"]["rand_read"].startswith("unsupported")
    assert "cart/null" in r.stdout
    assert not (tmp_path / "work" / "mnt-null").is_mount()
