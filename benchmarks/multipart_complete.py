"""Multipart uploads: how long CompleteMultipartUpload takes, and aws cli throughput vs rclone.

    .venv/bin/python benchmarks/multipart_complete.py [--size 1G] [--part 8M] [--dir DIR] [--skip-cli]

1. Uploads `--size` bytes of random data in `--part` parts with boto3 (4 parts at a time) to a
   `cartridge-s3-server` on a fresh cartridge, timing the part uploads and the
   CompleteMultipartUpload call separately. Completing links the parts' extents into the object
   in one transaction (no data copied): the target is complete < 5 % of the upload.
2. Uploads the same file with `aws s3 cp` (multipart above 8 MiB, 8 MiB parts, 10 threads) to
   our server and to `rclone serve s3` on a plain directory, in the same run, and prints MiB/s
   for both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cartridgefs.cli import _parse_size  # noqa: E402

BIN = Path(sys.executable).parent
AK, SK = "AKIDBENCHMARK", "benchmark-secret-key"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on port {port}")


def start_cartridge(workdir: Path, size: int) -> tuple[subprocess.Popen, str]:
    blocks = (3 * size + (512 * MiB)) // 4096  # two copies of the data, plus metadata
    port = free_port()
    env = dict(os.environ, CARTRIDGE_ACCESS_KEY=AK, CARTRIDGE_SECRET_KEY=SK)
    proc = subprocess.Popen([str(BIN / "cartridge-s3-server"), "--cartridge-path", str(workdir / "bench.cart"),
                             "--blocks", str(blocks), "-P", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_rclone(workdir: Path) -> tuple[subprocess.Popen, str]:
    root = workdir / "rclone-root"
    (root / "bench").mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "rclone"), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{AK},{SK}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_file(path: Path, size: int) -> None:
    """Incompressible content (a random 16 MiB block, repeated: no extent sees a repetition)."""
    block = os.urandom(16 * MiB)
    with path.open("wb") as f:
        for i in range(0, size, len(block)):
            f.write(block[: size - i])


def bench_complete(endpoint: str, path: Path, size: int, part: int) -> tuple[float, float]:
    """(seconds uploading the parts, seconds completing) for one boto3 multipart upload."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=AK,
                      aws_secret_access_key=SK, config=Config(max_pool_connections=8))
    s3.create_bucket(Bucket="bench")
    upload_id = s3.create_multipart_upload(Bucket="bench", Key="big")["UploadId"]
    count = -(-size // part)

    def send(number: int) -> dict:
        with path.open("rb") as f:
            f.seek((number - 1) * part)
            body = f.read(part)
        etag = s3.upload_part(Bucket="bench", Key="big", UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
        return {"PartNumber": number, "ETag": etag}

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(send, range(1, count + 1)))
    uploaded = time.perf_counter()
    result = s3.complete_multipart_upload(Bucket="bench", Key="big", UploadId=upload_id,
                                          MultipartUpload={"Parts": parts})
    completed = time.perf_counter()
    assert result["ETag"].endswith(f'-{count}"'), result["ETag"]
    assert s3.head_object(Bucket="bench", Key="big")["ContentLength"] == size
    return uploaded - start, completed - uploaded


def aws_cp(endpoint: str, path: Path, workdir: Path, key: str) -> float:
    """Seconds for `aws s3 cp` of `path` to s3://bench/`key` (multipart, default settings)."""
    config = workdir / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_CONFIG_FILE=str(config),
               AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"))
    start = time.perf_counter()
    subprocess.run([str(BIN / "aws"), "--endpoint-url", endpoint, "s3", "cp", "--only-show-errors", str(path),
                    f"s3://bench/{key}"], env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=_parse_size, default=1 << 30)
    p.add_argument("--part", type=_parse_size, default=8 * MiB)
    p.add_argument("--dir", help="where the cartridge, the file and rclone's directory go")
    p.add_argument("--skip-cli", action="store_true", help="only the completion benchmark")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mpu-bench-", dir=args.dir))
    try:
        source = workdir / "source.bin"
        make_file(source, args.size)
        size_mib = args.size / MiB
        proc, endpoint = start_cartridge(workdir, args.size)
        try:
            upload_s, complete_s = bench_complete(endpoint, source, args.size, args.part)
            print(f"boto3 multipart upload of {size_mib:.0f} MiB in {args.part // MiB} MiB parts: "
                  f"parts {upload_s:.2f} s ({size_mib / upload_s:.0f} MiB/s), "
                  f"complete {complete_s * 1000:.0f} ms, complete/upload = {complete_s / upload_s:.2%} "
                  f"(target < 5 %)")
            if args.skip_cli:
                return 0
            ours = aws_cp(endpoint, source, workdir, "cli.bin")
        finally:
            stop(proc)
        rproc, rendpoint = start_rclone(workdir)
        try:
            theirs = aws_cp(rendpoint, source, workdir, "cli.bin")
        finally:
            stop(rproc)
        print(f"aws s3 cp {size_mib:.0f} MiB: cartridge {size_mib / ours:.0f} MiB/s ({ours:.1f} s), "
              f"rclone serve s3 {size_mib / theirs:.0f} MiB/s ({theirs:.1f} s), "
              f"cartridge/rclone {theirs / ours:.2f}")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
