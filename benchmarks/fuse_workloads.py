#!/usr/bin/env python3
"""The same file workloads on a mounted cartridge, a plain directory and an `rclone mount`.

    .venv/bin/python benchmarks/fuse_workloads.py [--size 1G] [--files 5000] [--dir /var/tmp/cartbench]

Workloads (in this order, on each target in turn, all in one run):

* seq write   `dd if=SOURCE of=T/seq.bin bs=1M conv=fsync` (SOURCE: pre-generated random bytes)
* seq read    drop caches, `dd if=T/seq.bin of=/dev/null bs=1M`
* files       N files of 4 KiB: create, stat, list, delete (caches dropped before stat and list)
* tar         `tar xf` of a pre-built tarball of ~4000 small/medium files
* rand read   fio 4 KiB random reads (psync, buffered) on a pre-written file, caches dropped first
* rand write  fio 4 KiB random writes on the same file (rclone without VFS cache: "unsupported")

`--targets` may add `null`: `nullfs.py`, a pyfuse3 filesystem that does nothing (the floor of any
pyfuse3 filesystem here); it runs the small-file and tar workloads only.

Every step runs in a child process with a timeout; mounts are always unmounted (the cartridge's
mount process is waited for, killed and the FUSE connection aborted if it hangs). Dropping caches
needs root; without it the reads may come from the page cache (a warning says so).

Prints a table (MiB/s, seconds, IOPS) with the ratios cartridge/plain and cartridge/rclone and
whether each figure meets the targets of issue #3; `--json FILE` also writes the figures.
Exit status: 0 when every step ran (targets are reported, not enforced), 1 when a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
MiB = 1024 * 1024

# (key, label, unit, higher is better)
METRICS = [
    ("seq_write", "seq write 1M (dd, fsync)", "MiB/s", True),
    ("seq_read", "seq read 1M (dd, cold)", "MiB/s", True),
    ("files_create", "files: create", "s", False),
    ("files_stat", "files: stat (cold)", "s", False),
    ("files_list", "files: list (cold)", "s", False),
    ("files_delete", "files: delete", "s", False),
    ("tar_extract", "tar xf", "s", False),
    ("rand_read", "rand read 4k (fio)", "IOPS", True),
    ("rand_write", "rand write 4k (fio)", "IOPS", True),
]
# Issue #3: minimum cartridge/plain ratio (throughput) or maximum (seconds).
PLAIN_TARGET = {"seq_write": 0.30, "seq_read": 0.30, "files_create": 5.0, "files_stat": 5.0,
                "files_list": 5.0, "files_delete": 5.0, "tar_extract": 5.0}


# What the null filesystem (nullfs.py: names and sizes, no contents) can run.
NULL_WORKLOADS = ("files_create", "files_stat", "files_list", "files_delete", "tar_extract")


class StepError(Exception):
    pass


class Unsupported(StepError):
    pass


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(float(text.rstrip("KMGT")) * mult)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list, timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """A command with a hard timeout (the whole process group is killed when it expires)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        raise StepError(f"timeout after {timeout:.0f} s: {' '.join(map(str, cmd))}") from None
    if check and proc.returncode != 0:
        raise StepError(f"{' '.join(map(str, cmd[:3]))}... exit {proc.returncode}: "
                        f"{(err or out).strip()[-400:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


_warned_drop = False


def drop_caches() -> None:
    global _warned_drop
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        if not _warned_drop:
            log(f"warning: cannot drop caches ({exc}); reads may be served from the page cache")
            _warned_drop = True


# --- inputs, generated once per --dir and reused ---


def make_source(path: Path, size: int) -> Path:
    if path.exists() and path.stat().st_size == size:
        return path
    log(f"generating {size // MiB} MiB of random data in {path}")
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def make_tarball(base: Path, nfiles: int) -> tuple[Path, int]:
    """A tarball of a synthetic tree: nfiles files (mostly small, some medium) in nested dirs."""
    tar = base / f"tree-{nfiles}.tar"
    if tar.exists():
        with tarfile.open(tar) as tf:
            return tar, sum(1 for m in tf if m.isfile())
    log(f"generating a source tree of {nfiles} files and {tar}")
    src = base / "tree-src"
    shutil.rmtree(src, ignore_errors=True)
    rng = random.Random(3)
    blob = os.urandom(1 * MiB)
    for i in range(nfiles):
        d = src / f"pkg{i % 40:02d}" / f"mod{(i // 40) % 25:02d}"
        if i % 40 == 0 or i < 40 * 25:
            d.mkdir(parents=True, exist_ok=True)
        r = rng.random()
        size = rng.randint(100, 4096) if r < 0.7 else rng.randint(4096, 65536) if r < 0.97 \
            else rng.randint(65536, 1 * MiB)
        off = rng.randint(0, len(blob) - size)
        (d / f"file{i:05d}.dat").write_bytes(blob[off:off + size])
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname="tree")
    shutil.rmtree(src)
    return tar, nfiles


# --- targets ---


@dataclass
class Target:
    name: str
    root: Path = Path()
    proc: subprocess.Popen | None = None
    mountpoint: Path | None = None
    conn: int | None = None  # /sys/fs/fuse/connections/N
    logfile: Path | None = None
    results: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def _wait_mounted(mnt: Path, proc: subprocess.Popen, logfile: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            raise StepError(f"mount exited {proc.returncode}: {logfile.read_text()[-1000:]}")
        if time.monotonic() > deadline:
            raise StepError(f"{mnt} not mounted after {timeout:.0f} s")
        time.sleep(0.05)


def _start(target: Target, cmd: list, mnt: Path, logfile: Path, timeout: float) -> None:
    if os.path.ismount(mnt):
        run(["fusermount3", "-u", "-z", mnt], 30, check=False)
    mnt.mkdir(parents=True, exist_ok=True)
    target.logfile = logfile
    with open(logfile, "ab") as logf:
        target.proc = subprocess.Popen([str(c) for c in cmd], stdout=logf, stderr=subprocess.STDOUT,
                                       start_new_session=True)
    target.mountpoint = mnt
    _wait_mounted(mnt, target.proc, logfile, timeout)
    target.conn = os.minor(os.stat(mnt).st_dev)
    target.root = mnt


def stop(target: Target, timeout: float) -> None:
    """Unmount and wait for the serving process; escalate (lazy unmount, kill, abort) if needed."""
    mnt, proc = target.mountpoint, target.proc
    if mnt is None:
        return
    target.mountpoint = None
    for _ in range(20):
        if not os.path.ismount(mnt):
            break
        try:
            r = run(["fusermount3", "-u", mnt], 30, check=False)
        except StepError:
            break
        if r.returncode == 0:
            break
        time.sleep(0.25)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{target.name}: mount process did not exit in {timeout:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        if proc.returncode not in (0, None):
            target.errors.setdefault("unmount", f"mount process exited {proc.returncode}")
    if os.path.ismount(mnt):
        if target.conn is not None:
            with contextlib.suppress(OSError), \
                    open(f"/sys/fs/fuse/connections/{target.conn}/abort", "w") as f:
                f.write("1")
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)


def rclone_binary() -> str | None:
    cand = BIN / "rclone"
    return str(cand) if cand.exists() else shutil.which("rclone")


# --- workloads ---


def worker(phase: str, path: Path, nfiles: int) -> float:
    """Run in a child process: one phase of the small-file workload; returns seconds."""
    names = [f"f{i:05d}" for i in range(nfiles)]
    payload = os.urandom(4096)
    t0 = time.perf_counter()
    if phase == "create":
        path.mkdir()
        for n in names:
            fd = os.open(path / n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
    elif phase == "stat":
        for n in names:
            if os.stat(path / n).st_size != 4096:
                raise SystemExit(f"{n}: wrong size")
    elif phase == "list":
        with os.scandir(path) as it:
            count = sum(1 for e in it if e.is_file(follow_symlinks=False))
        if count != nfiles:
            raise SystemExit(f"listed {count} files, expected {nfiles}")
    elif phase == "delete":
        for n in names:
            os.unlink(path / n)
        path.rmdir()
    else:
        raise SystemExit(f"unknown phase {phase}")
    return time.perf_counter() - t0


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.base = Path(args.dir)
        self.size = parse_size(args.size)
        self.fio_size = min(parse_size(args.fio_size), self.size)
        self.timeout = args.timeout

    def step_timeout(self, nbytes: int = 0) -> float:
        # A floor, plus time at 5 MiB/s for the bytes moved (slow, but not hung).
        return self.timeout + nbytes / (5 * MiB)

    def prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.source = make_source(self.base / f"source-{self.size}.bin", self.size)
        self.tarball, self.tar_files = make_tarball(self.base, self.args.tar_files)
        self.tar_bytes = self.tarball.stat().st_size

    # targets

    def start_cartridge(self, t: Target) -> None:
        cart = self.base / "bench.cart"
        cart.unlink(missing_ok=True)
        need = 2 * (self.size + self.fio_size + self.tar_bytes) + self.args.files * 8192 + 256 * MiB
        run([BIN / "cartridge", "create", cart, "--blocks", need // 4096,
             "--compression", self.args.compression], 120)
        opts = "s3=off" + (f",{self.args.cartridge_options}" if self.args.cartridge_options else "")
        _start(t, [BIN / "mount.cartridge", cart, self.base / "mnt-cartridge", "-f", "-o", opts],
               self.base / "mnt-cartridge", self.base / "cartridge.log", 60)

    def start_plain(self, t: Target) -> None:
        t.root = self.base / "plain"
        shutil.rmtree(t.root, ignore_errors=True)
        t.root.mkdir()

    def start_rclone(self, t: Target) -> None:
        exe = rclone_binary()
        if exe is None:
            raise Unsupported("rclone not found")
        src = self.base / "rclone-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        mnt = self.base / "mnt-rclone"
        _start(t, [exe, "mount", src, mnt, "--vfs-cache-mode", "off", "--config", "/dev/null"],
               mnt, self.base / "rclone.log", 60)

    def start_null(self, t: Target) -> None:
        mnt = self.base / "mnt-null"
        _start(t, [sys.executable, Path(__file__).with_name("nullfs.py"), mnt], mnt,
               self.base / "null.log", 60)

    def cleanup(self, t: Target) -> None:
        stop(t, self.timeout + 60)
        leftover = {"cartridge": self.base / "bench.cart", "plain": self.base / "plain",
                    "rclone": self.base / "rclone-src"}.get(t.name)
        if leftover is None:
            return
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)

    # steps

    def seq_write(self, t: Target) -> float:
        with open(self.source, "rb") as f:  # source in the page cache, not measured
            while f.read(8 * MiB):
                pass
        out = t.root / "seq.bin"
        t0 = time.perf_counter()
        run(["dd", f"if={self.source}", f"of={out}", "bs=1M", "conv=fsync", "status=none"],
            self.step_timeout(self.size))
        return self.size / MiB / (time.perf_counter() - t0)

    def seq_read(self, t: Target) -> float:
        out = t.root / "seq.bin"
        if not out.exists() or out.stat().st_size != self.size:
            raise StepError("seq.bin missing (seq write failed)")
        drop_caches()
        t0 = time.perf_counter()
        run(["dd", f"if={out}", "of=/dev/null", "bs=1M", "status=none"], self.step_timeout(self.size))
        elapsed = time.perf_counter() - t0
        out.unlink()
        return self.size / MiB / elapsed

    def files(self, t: Target, phase: str) -> float:
        if phase in ("stat", "list"):
            drop_caches()
        r = run([sys.executable, __file__, "--worker", phase, "--path", t.root / "small",
                 "--files", self.args.files], self.step_timeout(self.args.files * 8192) * 2)
        return float(r.stdout.strip().splitlines()[-1])

    def tar_extract(self, t: Target) -> float:
        dest = t.root / "tarx"
        dest.mkdir()
        t0 = time.perf_counter()
        run(["tar", "xf", self.tarball, "-C", dest], self.step_timeout(self.tar_bytes) * 2)
        elapsed = time.perf_counter() - t0
        run(["rm", "-rf", dest], self.step_timeout(self.tar_bytes) * 2)
        return elapsed

    def _fio(self, t: Target, rw: str) -> float:
        path = t.root / "fio.bin"
        r = run(["fio", f"--name={rw}", f"--rw={rw}", "--bs=4k", f"--size={self.fio_size}",
                 f"--runtime={self.args.fio_runtime}", "--time_based", "--ioengine=psync",
                 "--direct=0", f"--filename={path}", "--output-format=json"],
                self.args.fio_runtime + self.step_timeout(self.fio_size), check=False)
        if r.returncode != 0:
            text = (r.stderr or r.stdout).strip()
            if t.name == "rclone" and rw == "randwrite":
                raise Unsupported(f"unsupported ({text.splitlines()[-1] if text else 'fio failed'})")
            raise StepError(f"fio {rw} exit {r.returncode}: {text[-400:]}")
        job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
        if job.get("error"):
            raise StepError(f"fio {rw}: error {job['error']}")
        return float(job["read" if rw == "randread" else "write"]["iops"])

    def rand_read(self, t: Target) -> float:
        path = t.root / "fio.bin"
        run(["dd", f"if={self.source}", f"of={path}", "bs=1M", f"count={self.fio_size // MiB}",
             "conv=fsync", "status=none"], self.step_timeout(self.fio_size))
        drop_caches()
        return self._fio(t, "randread")

    def rand_write(self, t: Target) -> float:
        try:
            return self._fio(t, "randwrite")
        finally:
            with contextlib.suppress(OSError):
                (t.root / "fio.bin").unlink()

    def run_target(self, t: Target) -> None:
        starter = {"cartridge": self.start_cartridge, "plain": self.start_plain,
                   "rclone": self.start_rclone, "null": self.start_null}[t.name]
        steps = [
            ("seq_write", self.seq_write), ("seq_read", self.seq_read),
            ("files_create", lambda t: self.files(t, "create")),
            ("files_stat", lambda t: self.files(t, "stat")),
            ("files_list", lambda t: self.files(t, "list")),
            ("files_delete", lambda t: self.files(t, "delete")),
            ("tar_extract", self.tar_extract),
            ("rand_read", self.rand_read), ("rand_write", self.rand_write),
        ]
        try:
            log(f"{t.name}: starting")
            try:
                starter(t)
            except StepError as exc:
                for key, _ in steps:
                    t.errors[key] = str(exc)
                log(f"{t.name}: cannot start: {exc}")
                return
            for key, fn in steps:
                if key not in self.args.only:
                    continue
                if t.name == "null" and key not in NULL_WORKLOADS:
                    t.errors[key] = "unsupported: the null filesystem keeps no file contents"
                    continue
                try:
                    value = fn(t)
                except Unsupported as exc:
                    t.errors[key] = str(exc)
                    log(f"{t.name}: {key}: {exc}")
                    continue
                except StepError as exc:
                    t.errors[key] = f"failed: {exc}"
                    log(f"{t.name}: {key} FAILED: {exc}")
                    if t.proc is not None and t.proc.poll() is not None:
                        log(f"{t.name}: mount process died; skipping the rest")
                        break
                    continue
                t.results[key] = value
                log(f"{t.name}: {key} = {value:.2f}")
        finally:
            self.cleanup(t)


# --- report ---


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def report(targets: dict[str, Target], only: list[str]) -> tuple[str, list[str]]:
    """The table, and the list of targets of issue #3 that are missed."""
    others = ["plain", "rclone", *(["null"] if "null" in targets else [])]
    header = ["workload", "unit", "cartridge", *others, *(f"cart/{o}" for o in others), "target"]
    rows = []
    missed = []
    for key, label, unit, higher in METRICS:
        if key not in only:
            continue
        vals = {}
        cells = []
        for name in ("cartridge", *others):
            t = targets.get(name)
            v = t.results.get(key) if t else None
            vals[name] = v
            if v is not None:
                cells.append(_fmt(v, unit))
            elif t is None:
                cells.append("n/a")
            else:
                err = t.errors.get(key, "-")
                cells.append("unsupported" if err.startswith("unsupported") else
                             "FAILED" if err.startswith("failed") else "-")
        c = vals["cartridge"]
        ratios = []
        for other in others:
            o = vals[other]
            ratios.append(f"{c / o:.2f}x" if c is not None and o else "-")
        notes = []
        if c is not None:
            p, r = vals["plain"], vals["rclone"]
            if key in PLAIN_TARGET and p:
                lim = PLAIN_TARGET[key]
                ok = c / p >= lim if higher else c / p <= lim
                notes.append(f"{'ok' if ok else 'MISS'} {'>=' if higher else '<='}{lim:g}x plain")
                if not ok:
                    missed.append(f"{key}: {c / p:.2f}x plain (target {'>=' if higher else '<='}{lim:g}x)")
            if r:
                ok = c >= r if higher else c <= r
                notes.append(f"{'ok' if ok else 'MISS'} vs rclone")
                if not ok:
                    missed.append(f"{key}: {c / r:.2f}x rclone (target: at least as good)")
        elif "cartridge" in targets:
            notes.append("no figure")
            missed.append(f"{key}: no cartridge figure")
        rows.append([label, unit, *cells, *ratios, ", ".join(notes)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i in (0, 1, len(header) - 1) else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = ["ratios: cartridge figure / other figure (for seconds lower is better)."]
    for t in targets.values():
        for key, err in t.errors.items():
            if not err.startswith("unsupported"):
                notes.append(f"{t.name} {key}: {err}")
    return "\n".join(lines + [""] + notes), missed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G", help="sequential file size (default 1G)")
    p.add_argument("--files", type=int, default=5000, help="number of 4 KiB files (default 5000)")
    p.add_argument("--tar-files", type=int, default=4000, help="files in the tarball (default 4000)")
    p.add_argument("--dir", default="/var/tmp/cartbench", help="work directory (on the disk to test)")
    p.add_argument("--fio-size", default="256M", help="fio file size (default 256M, at most --size)")
    p.add_argument("--fio-runtime", type=int, default=20, help="seconds per fio run (default 20)")
    p.add_argument("--timeout", type=float, default=120, help="base timeout of each step, s")
    p.add_argument("--targets", default="cartridge,plain,rclone",
                   help="comma list of cartridge, plain, rclone, null (a do-nothing pyfuse3 "
                        "filesystem: nullfs.py)")
    p.add_argument("--only", default=",".join(m[0] for m in METRICS),
                   help="comma list of workloads: " + ", ".join(m[0] for m in METRICS))
    p.add_argument("--compression", default="none", choices=["none", "zstd"])
    p.add_argument("--cartridge-options", default="", help="extra -o options for mount.cartridge")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(worker(args.worker, Path(args.path), args.files))
        return 0
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    names = [s.strip() for s in args.targets.split(",") if s.strip()]
    for n in names:
        if n not in ("cartridge", "plain", "rclone", "null"):
            p.error(f"unknown target {n}")
    for tool in ("dd", "tar", "fio", "fusermount3"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is required")
    bench = Bench(args)
    bench.prepare()
    targets = {n: Target(n) for n in names}
    try:
        for t in targets.values():
            bench.run_target(t)
    finally:
        for t in targets.values():
            stop(t, 30)
    table, missed = report(targets, args.only)
    print(f"\nsize {args.size}, {args.files} files, tarball of {bench.tar_files} files "
          f"({bench.tar_bytes / MiB:.0f} MiB), fio {args.fio_size} x {args.fio_runtime} s, "
          f"compression {args.compression}, dir {bench.base}\n")
    print(table)
    if missed:
        print("\nbelow target: " + "; ".join(missed))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {n: {"results": t.results, "errors": t.errors} for n, t in targets.items()}, indent=2))
    failed = any(not e.startswith("unsupported") for t in targets.values() for e in t.errors.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
