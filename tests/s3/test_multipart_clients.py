"""Multipart uploads with real clients (aws cli, rclone), across restarts, and through the mount."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from test_multipart import complete, multipart_etag, upload

BIN = Path(sys.executable).parent
MiB = 1 << 20


def run(args: list, env: dict | None = None) -> str:
    result = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def big_file(path: Path, size: int) -> Path:
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for i in range(size // MiB):
            f.write(block[i % 997:] + block[: i % 997])
    return path


def test_aws_cli_200mib(server, client_env, s3, tmp_path):
    """`aws s3 cp` uses multipart above 8 MiB for uploads and ranged GETs for downloads."""
    source = big_file(tmp_path / "big.bin", 200 * MiB)
    aws = [BIN / "aws", "--endpoint-url", server.endpoint]
    run(aws + ["s3", "mb", "s3://mpu-aws"], client_env)
    run(aws + ["s3", "cp", source, "s3://mpu-aws/big.bin"], client_env)
    assert re.fullmatch(r'"[0-9a-f]{32}-25"', s3.head_object(Bucket="mpu-aws", Key="big.bin")["ETag"])
    run(aws + ["s3", "cp", "s3://mpu-aws/big.bin", tmp_path / "back.bin"], client_env)
    assert sha256(tmp_path / "back.bin") == sha256(source)


def test_rclone_200mib(server, credentials, tmp_path):
    config = tmp_path / "rclone.conf"
    config.write_text(f"[cart]\ntype = s3\nprovider = Other\nendpoint = {server.endpoint}\n"
                      f"access_key_id = {credentials[0]}\nsecret_access_key = {credentials[1]}\n"
                      "region = us-east-1\n")
    rclone = [BIN / "rclone", "--config", config, "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"]
    src = tmp_path / "src"
    src.mkdir()
    big_file(src / "big.bin", 200 * MiB)
    run(rclone + ["mkdir", "cart:mpu-rclone"])
    run(rclone + ["copy", src, "cart:mpu-rclone/dir"])
    run(rclone + ["check", src, "cart:mpu-rclone/dir"])


def test_restart_during_upload_then_complete(own_server):
    parts = [os.urandom(5 * MiB), os.urandom(MiB)]
    first = own_server()
    s3 = first.client()
    s3.create_bucket(Bucket="restart")
    upload_id, done = upload(s3, "restart", "k", parts[:1])
    first.stop()
    second = own_server()
    s3 = second.client()
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="restart")["Uploads"]] == [upload_id]
    done.append({"PartNumber": 2, "ETag": s3.upload_part(Bucket="restart", Key="k", UploadId=upload_id,
                                                          PartNumber=2, Body=parts[1])["ETag"]})
    complete(s3, "restart", "k", upload_id, done)
    got = s3.get_object(Bucket="restart", Key="k")
    assert got["ETag"] == multipart_etag(parts) and got["Body"].read() == b"".join(parts)


def _info(cart: Path) -> tuple[int, str]:
    out = run([BIN / "cartridge", "info", cart])
    used = int(re.search(r"used:\s+(\d+) blocks", out)[1])
    return used, re.search(r"uploads:\s+(.*)", out)[1]


def test_abort_frees_space(own_server):
    """Abort through S3 and through `cartridge uploads abort`: the blocks come back; fsck agrees."""
    server = own_server()
    s3 = server.client()
    s3.create_bucket(Bucket="space")
    by_s3, _ = upload(s3, "space", "a", [os.urandom(6 * MiB), os.urandom(2 * MiB)])
    by_cli, _ = upload(s3, "space", "b", [os.urandom(4 * MiB)])
    server.stop()
    used_before, uploads = _info(server.cart)
    assert uploads.startswith("2 unfinished multipart uploads, 3 parts, 12.0 MiB")
    assert by_cli in run([BIN / "cartridge", "uploads", "list", server.cart])
    server = own_server()
    server.client().abort_multipart_upload(Bucket="space", Key="a", UploadId=by_s3)
    server.stop()
    used_after_s3, uploads = _info(server.cart)
    assert uploads.startswith("1 unfinished multipart uploads, 1 parts, 4.0 MiB")
    assert used_before - used_after_s3 >= 8 * MiB // 4096
    run([BIN / "cartridge", "uploads", "abort", server.cart, by_cli])
    used_after_cli, uploads = _info(server.cart)
    assert uploads.startswith("0 unfinished")
    assert used_after_s3 - used_after_cli >= 4 * MiB // 4096
    assert "FAIL" not in run([BIN / "cartridge", "fsck", server.cart])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_completed_object_through_the_mount(tmp_path, credentials):
    cart, mnt = tmp_path / "m.cart", tmp_path / "mnt"
    mnt.mkdir()
    run([BIN / "cartridge", "create", cart, "--blocks", "20000"])
    port = _free_port()
    env = dict(os.environ, CARTRIDGE_ACCESS_KEY=credentials[0], CARTRIDGE_SECRET_KEY=credentials[1])
    proc = subprocess.Popen([BIN / "mount.cartridge", cart, mnt, "-f", "-o", f"s3=127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(mnt)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1])
        for _ in range(100):  # the S3 endpoint starts beside the mount
            try:
                s3.create_bucket(Bucket="mounted")
                break
            except Exception:
                time.sleep(0.1)
        parts = [os.urandom(5 * MiB), os.urandom(123_457)]
        upload_id, done = upload(s3, "mounted", "sub/file.bin", parts)
        complete(s3, "mounted", "sub/file.bin", upload_id, done)
        assert (mnt / "mounted" / "sub" / "file.bin").read_bytes() == b"".join(parts)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, timeout=60)
        assert proc.wait(timeout=60) == 0
