#!/usr/bin/env python3
"""The same S3 workloads against `cartridge-s3-server` and `rclone serve s3` on a plain directory.

    .venv/bin/python benchmarks/s3_workloads.py [--size 1G] [--small 2000] [--list 10000]
                                                [--dir /tmp/s3bench] [--json FILE] [--warm-memory]

Both servers run on the same disk (under --dir), one after the other, with the same clients:

* large PUT/GET   boto3 `upload_file`/`download_file` of one --size object (multipart above
                  8 MiB when the server has it; else `put_object` streaming from the file), then
                  4 objects in parallel; `rclone copy` of the same file as the client, both ways
* small ops       --small × 4 KiB PUT, GET, HEAD with 8 threads (ops/s)
* listing         ListObjectsV2 (1000 per page) over --list keys; DeleteObjects of them all
* RSS             the server's peak VmRSS during the single large PUT and GET

--warm-memory writes and deletes a scratch file as large as the transfer before each large
step, for both servers alike (see `warm_memory`): on this VM it separates the server's
throughput from the cost of fresh page-cache pages on the client's side.

Prints figures, ratios cartridge/rclone and the targets of issue #5 (large ≥ 1.0, small ≥ 0.7,
listing and bulk delete ≥ 1.0 as speed ratios, RSS < 150 MiB). Exit status 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from procstat import PeakRSS

BIN = Path(sys.executable).parent
MiB = 1 << 20
AK, SK = "AKIDBENCHMARK", "benchmark-secret-key"
SMALL = 4096


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Target:
    """A running S3 server: `name`, `endpoint`, `proc` (stopped by `stop()`)."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None) -> None:
        self.name, self.port = name, port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"s3bench-{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env or os.environ)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start (see {self.log.name})") from None
                time.sleep(0.05)
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id=AK, aws_secret_access_key=SK,
                               config=Config(max_pool_connections=16, retries={"max_attempts": 2},
                                             s3={"addressing_style": "path"}))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start_cartridge(workdir: Path, size: int) -> Target:
    cart = workdir / "bench.cart"
    cart.unlink(missing_ok=True)
    blocks = (6 * size + (1 << 30)) // 4096  # 4 large objects alive at once, and margin
    port = free_port()
    env = dict(os.environ, CARTRIDGE_ACCESS_KEY=AK, CARTRIDGE_SECRET_KEY=SK)
    return Target("cartridge", [str(BIN / "cartridge-s3-server"), "--cartridge-path", str(cart),
                                "--blocks", str(blocks), "-P", str(port)], port, env)


def start_rclone(workdir: Path, size: int) -> Target:
    root = workdir / "plain"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    port = free_port()
    return Target("rclone", [str(BIN / "rclone"), "serve", "s3", str(root), "--addr",
                             f"127.0.0.1:{port}", "--auth-key", f"{AK},{SK}", "--config",
                             "/dev/null"], port)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def upload(target: Target, source: Path, key: str, multipart: bool) -> None:
    if multipart:
        target.s3.upload_file(str(source), "bench", key)
    else:
        with open(source, "rb") as body:
            target.s3.put_object(Bucket="bench", Key=key, Body=body)


def has_multipart(target: Target) -> bool:
    try:
        upload_id = target.s3.create_multipart_upload(Bucket="bench", Key="probe")["UploadId"]
    except ClientError:
        return False
    target.s3.abort_multipart_upload(Bucket="bench", Key="probe", UploadId=upload_id)
    return True


def rclone_client(target: Target, workdir: Path) -> list[str]:
    config = workdir / f"rclone-{target.name}.conf"
    config.write_text(f"[t]\ntype = s3\nprovider = Other\nendpoint = {target.endpoint}\n"
                      f"access_key_id = {AK}\nsecret_access_key = {SK}\nregion = us-east-1\n")
    return [str(BIN / "rclone"), "--config", str(config)]


def warm_memory(workdir: Path, nbytes: int) -> None:
    """Write `nbytes` to a scratch file and delete it: the next step gets page-cache pages that
    were just in use. On a VM whose idle memory goes back to the host, a step that fills fresh
    pages (a download's file) otherwise pays for them. Whether it does depends on what the steps
    before freed: rclone serve's deletes free the objects' pages, and a cartridge now drops its
    freed blocks' pages too (docs/engine.md); before it did, the first download after the deletes
    ran at half speed from a cartridge without this warm-up."""
    scratch, chunk = workdir / "warm.tmp", bytes(16 * MiB)
    with open(scratch, "wb") as f:
        for _ in range(-(-nbytes // len(chunk))):
            f.write(chunk)
    scratch.unlink()


def run_workloads(target: Target, source: Path, size: int, small: int, listing: int,
                  workdir: Path, warm: bool = False) -> dict[str, float]:
    s3, mib = target.s3, size / MiB
    out: dict[str, float] = {}

    def timed_step(nbytes: int, fn) -> float:
        if warm:
            warm_memory(workdir, nbytes + nbytes // 10)
        return timed(fn)

    s3.create_bucket(Bucket="bench")
    multipart = has_multipart(target)
    out["multipart"] = float(multipart)
    dest = workdir / f"down-{target.name}.bin"
    with PeakRSS(target.proc.pid) as peak:
        out["large PUT MiB/s"] = mib / timed_step(size, lambda: upload(target, source, "big", multipart))
        out["large GET MiB/s"] = mib / timed_step(size, lambda: s3.download_file("bench", "big", str(dest)))
    out["peak RSS MiB"] = peak.peak / MiB
    assert dest.stat().st_size == size
    dest.unlink()
    with ThreadPoolExecutor(4) as pool:
        keys = [f"par-{i}" for i in range(4)]
        out["4× PUT MiB/s"] = 4 * mib / timed_step(
            4 * size, lambda: list(pool.map(lambda k: upload(target, source, k, multipart), keys)))
        paths = [workdir / f"{target.name}-{k}" for k in keys]
        out["4× GET MiB/s"] = 4 * mib / timed_step(4 * size, lambda: list(pool.map(
            lambda kp: s3.download_file("bench", kp[0], str(kp[1])), zip(keys, paths, strict=True))))
        for path in paths:
            path.unlink()
        s3.delete_objects(Bucket="bench", Delete={"Objects": [{"Key": k} for k in [*keys, "big"]]})
    rc = rclone_client(target, workdir)
    back = workdir / f"rclone-back-{target.name}"
    out["rclone copy up MiB/s"] = mib / timed_step(size, lambda: subprocess.run(
        [*rc, "copy", str(source), "t:bench/rc/"], check=True))
    out["rclone copy down MiB/s"] = mib / timed_step(size, lambda: subprocess.run(
        [*rc, "copy", "t:bench/rc/", str(back)], check=True))
    shutil.rmtree(back)
    s3.delete_object(Bucket="bench", Key=f"rc/{source.name}")
    # The downloads above left GiBs of dirty page cache on this disk: write it back now, or its
    # writeback runs under the next phase and taxes whichever server syncs (ours, per PUT).
    os.sync()

    payload = os.urandom(SMALL)
    names = [f"small/{i:06d}" for i in range(small)]
    with ThreadPoolExecutor(8) as pool:
        for label, op in (("PUT", lambda k: s3.put_object(Bucket="bench", Key=k, Body=payload)),
                          ("GET", lambda k: s3.get_object(Bucket="bench", Key=k)["Body"].read()),
                          ("HEAD", lambda k: s3.head_object(Bucket="bench", Key=k))):
            out[f"small {label} ops/s"] = small / timed(lambda op=op: list(pool.map(op, names)))
        extra = [f"list/{i // 100:03d}/{i:06d}" for i in range(max(0, listing - small))]
        list(pool.map(lambda k: s3.put_object(Bucket="bench", Key=k, Body=b"x"), extra))
    every: list[str] = []

    def list_all() -> None:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
            every.extend(obj["Key"] for obj in page.get("Contents", []))

    out["list s"] = timed(list_all)
    assert len(every) == len(names) + len(extra), (len(every), len(names) + len(extra))

    def delete_all() -> None:
        for i in range(0, len(every), 1000):
            s3.delete_objects(Bucket="bench", Delete={
                "Objects": [{"Key": k} for k in every[i:i + 1000]], "Quiet": True})

    out["bulk delete s"] = timed(delete_all)
    return out


# name -> (higher is better, target ratio cartridge/rclone as a speed ratio)
TARGETS = {
    "large PUT MiB/s": (True, 1.0), "large GET MiB/s": (True, 1.0),
    "4× PUT MiB/s": (True, 1.0), "4× GET MiB/s": (True, 1.0),
    "rclone copy up MiB/s": (True, 1.0), "rclone copy down MiB/s": (True, 1.0),
    "small PUT ops/s": (True, 0.7), "small GET ops/s": (True, 0.7), "small HEAD ops/s": (True, 0.7),
    "list s": (False, 1.0), "bulk delete s": (False, 1.0),
}


def report(results: dict[str, dict[str, float]]) -> None:
    cart, rcl = results["cartridge"], results["rclone"]
    print(f"\n{'workload':24} {'cartridge':>10} {'rclone':>10} {'speed ratio':>12}  target")
    for name, (higher, target) in TARGETS.items():
        ratio = cart[name] / rcl[name] if higher else rcl[name] / cart[name]
        verdict = "ok" if ratio >= target else "MISSED"
        print(f"{name:24} {cart[name]:10.1f} {rcl[name]:10.1f} {ratio:12.2f}  ≥ {target:.1f} {verdict}")
    peak = cart["peak RSS MiB"]
    print(f"{'peak RSS MiB':24} {peak:10.1f} {rcl['peak RSS MiB']:10.1f} {'':12}  < 150 "
          f"{'ok' if peak < 150 else 'MISSED'}")
    if not cart["multipart"]:
        print("cartridge has no multipart uploads: its large PUTs used put_object streaming")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1G")
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--list", type=int, default=10_000)
    p.add_argument("--dir", default="/tmp/s3bench")
    p.add_argument("--json")
    p.add_argument("--only", choices=["cartridge", "rclone"])
    p.add_argument("--warm-memory", action="store_true",
                   help="before each large transfer, write and delete a scratch file as large "
                        "(see warm_memory)")
    args = p.parse_args()
    size = parse_size(args.size)
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    need = 8 * size + (2 << 30) + (5 * size if args.warm_memory else 0)
    if shutil.disk_usage(workdir).free < need:
        print(f"{workdir}: needs {need >> 30} GiB free", file=sys.stderr)
        return 1
    source = workdir / "source.bin"
    if not source.exists() or source.stat().st_size != size:
        with open(source, "wb") as f:
            for _ in range(size // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
    print(f"source {size / MiB:.0f} MiB of random bytes, on {workdir}", flush=True)
    results: dict[str, dict[str, float]] = {}
    failed = False
    for name, start in (("cartridge", start_cartridge), ("rclone", start_rclone)):
        if args.only and name != args.only:
            continue
        target = start(workdir, size)
        try:
            results[name] = run_workloads(target, source, size, args.small, args.list, workdir,
                                          args.warm_memory)
            print(name, json.dumps({k: round(v, 2) for k, v in results[name].items()}), flush=True)
        except Exception as exc:  # report, and still run the other target
            print(f"{name}: FAILED: {exc!r} (log: {target.log.name})", file=sys.stderr)
            failed = True
        finally:
            target.stop()
            (workdir / "bench.cart").unlink(missing_ok=True)  # several GiB: not left behind
            shutil.rmtree(workdir / "plain", ignore_errors=True)
    if len(results) == 2:
        report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
