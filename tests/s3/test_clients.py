"""Unmodified command-line clients: aws cli v1, s3cmd, rclone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(args: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(70_000), "sub/deeper/c": b"",
             "sp ace/d+e.txt": b"odd names", "a.b": b"dot"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_aws_cli(server, client_env, s3, tmp_path):
    aws = [str(BIN / "aws"), "--endpoint-url", server.endpoint]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    files = make_tree(src)
    run(aws + ["s3", "mb", "s3://aws-cli"], client_env)
    run(aws + ["s3", "cp", str(src / "a.txt"), "s3://aws-cli/single/a.txt"], client_env)
    run(aws + ["s3", "sync", str(src), "s3://aws-cli/tree"], client_env)
    listing = run(aws + ["s3", "ls", "--recursive", "s3://aws-cli/"], client_env).stdout
    assert "tree/sp ace/d+e.txt" in listing and "single/a.txt" in listing
    top = run(aws + ["s3", "ls", "s3://aws-cli/"], client_env).stdout
    assert "PRE single/" in top and "PRE tree/" in top
    # a second sync has nothing to do
    assert run(aws + ["s3", "sync", str(src), "s3://aws-cli/tree"], client_env).stdout.strip() == ""
    run(aws + ["s3", "sync", "s3://aws-cli/tree", str(dst)], client_env)
    assert read_tree(dst) == files
    head = json.loads(run(aws + ["s3api", "head-object", "--bucket", "aws-cli", "--key", "single/a.txt"],
                          client_env).stdout)
    assert head["ETag"] == f'"{hashlib.md5(b"alpha").hexdigest()}"' and head["ContentLength"] == 5
    run(aws + ["s3api", "put-object", "--bucket", "aws-cli", "--key", "api/obj", "--body",
               str(src / "a.b"), "--metadata", "k=v"], client_env)
    out = tmp_path / "out"
    got = json.loads(run(aws + ["s3api", "get-object", "--bucket", "aws-cli", "--key", "api/obj", str(out)],
                         client_env).stdout)
    assert out.read_bytes() == b"dot" and got["Metadata"]["k"] == "v"
    versions = json.loads(run(aws + ["s3api", "list-object-versions", "--bucket", "aws-cli"], client_env).stdout)
    assert len(versions["Versions"]) == len(files) + 2
    # aws cli v1 presigns with SigV2 by default ...
    url = run(aws + ["s3", "presign", "s3://aws-cli/single/a.txt"], client_env).stdout.strip()
    assert "Signature=" in url and "X-Amz-Signature" not in url
    assert urllib.request.urlopen(url).read() == b"alpha"
    # ... and SigV4 when configured so (~/.aws/config: s3 = signature_version = s3v4).
    Path(client_env["AWS_CONFIG_FILE"]).write_text(
        "[default]\nregion = us-east-1\ns3 =\n    signature_version = s3v4\n")
    url = run(aws + ["s3", "presign", "s3://aws-cli/single/a.txt", "--expires-in", "60"], client_env).stdout.strip()
    assert "X-Amz-Signature" in url
    assert urllib.request.urlopen(url).read() == b"alpha"
    url = run(aws + ["s3", "presign", "s3://aws-cli/single/a.txt", "--expires-in", "1"], client_env).stdout.strip()
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url)
    assert exc.value.code == 403
    run(aws + ["s3", "rm", "--recursive", "s3://aws-cli/"], client_env)
    assert s3.list_objects_v2(Bucket="aws-cli")["KeyCount"] == 0
    run(aws + ["s3", "rb", "s3://aws-cli"], client_env)


@pytest.fixture
def s3cmd(server, credentials, tmp_path):
    config = tmp_path / "s3cfg"
    host = f"127.0.0.1:{server.port}"
    config.write_text(
        "[default]\n"
        f"access_key = {credentials[0]}\nsecret_key = {credentials[1]}\n"
        f"host_base = {host}\nhost_bucket = {host}\n"
        "use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n"
    )
    return [str(BIN / "s3cmd"), "-c", str(config)]


def test_s3cmd(s3cmd, s3, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    files = make_tree(src)
    run(s3cmd + ["mb", "s3://s3cmd-bucket"])
    run(s3cmd + ["put", str(src / "a.txt"), "s3://s3cmd-bucket/one/a.txt"])
    run(s3cmd + ["get", "s3://s3cmd-bucket/one/a.txt", str(tmp_path / "got")])
    assert (tmp_path / "got").read_bytes() == b"alpha"
    run(s3cmd + ["sync", str(src) + "/", "s3://s3cmd-bucket/tree/"])
    listing = run(s3cmd + ["ls", "-r", "s3://s3cmd-bucket/"]).stdout
    assert "s3://s3cmd-bucket/tree/sub/b.bin" in listing
    run(s3cmd + ["sync", "s3://s3cmd-bucket/tree/", str(dst) + "/"])
    assert read_tree(dst) == files
    url = run(s3cmd + ["signurl", "s3://s3cmd-bucket/one/a.txt", "+60"]).stdout.strip()
    assert urllib.request.urlopen(url).read() == b"alpha"  # SigV2 query authentication
    run(s3cmd + ["del", "s3://s3cmd-bucket/one/a.txt"])
    run(s3cmd + ["del", "--recursive", "--force", "s3://s3cmd-bucket/tree/"])
    assert s3.list_objects_v2(Bucket="s3cmd-bucket")["KeyCount"] == 0
    run(s3cmd + ["rb", "s3://s3cmd-bucket"])


@pytest.fixture
def rclone(server, credentials, tmp_path):
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[cart]\ntype = s3\nprovider = Other\n"
        f"endpoint = {server.endpoint}\naccess_key_id = {credentials[0]}\n"
        f"secret_access_key = {credentials[1]}\nregion = us-east-1\n"
    )
    return [str(BIN / "rclone"), "--config", str(config)]


def test_rclone(rclone, s3, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    files = make_tree(src)
    old = time.time() - 86400 * 30
    os.utime(src / "a.txt", (old, old))
    big = src / "big.bin"
    chunk = os.urandom(1 << 20)
    with big.open("wb") as f:
        for i in range(100):
            f.write(chunk[i:] + chunk[:i])
    files["big.bin"] = big.read_bytes()
    run(rclone + ["mkdir", "cart:rclone-bucket"])
    run(rclone + ["copy", str(src), "cart:rclone-bucket/tree"])
    run(rclone + ["check", str(src), "cart:rclone-bucket/tree"])
    entries = json.loads(run(rclone + ["lsjson", "-R", "--hash", "cart:rclone-bucket/tree"]).stdout)
    by_path = {e["Path"]: e for e in entries if not e["IsDir"]}
    assert set(by_path) == set(files)
    assert by_path["big.bin"]["Size"] == 100 << 20
    assert by_path["big.bin"]["Hashes"]["md5"] == hashlib.md5(files["big.bin"]).hexdigest()
    # the mtime rclone sent is the object's mtime (and Last-Modified)
    assert abs(s3.head_object(Bucket="rclone-bucket", Key="tree/a.txt")["LastModified"].timestamp() - old) < 1
    # sync: change one file's mtime only (rclone updates it in place by a copy onto itself)
    newer = time.time() - 3600
    os.utime(src / "sub/b.bin", (newer, newer))
    (src / "a.b").unlink()
    del files["a.b"]
    run(rclone + ["sync", str(src), "cart:rclone-bucket/tree"])
    run(rclone + ["check", str(src), "cart:rclone-bucket/tree"])
    head = s3.head_object(Bucket="rclone-bucket", Key="tree/sub/b.bin")
    assert abs(float(head["Metadata"]["mtime"]) - newer) < 0.001
    run(rclone + ["copy", "cart:rclone-bucket/tree", str(dst)])
    assert read_tree(dst) == files
    run(rclone + ["purge", "cart:rclone-bucket"])
    assert "rclone-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
