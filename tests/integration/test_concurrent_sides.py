"""Both sides change the same names at once: every read is one whole version someone wrote.

S3 clients PUT and DELETE keys while programs on the mount replace the same files (a temporary
file renamed over the name, as editors and rsync do) and remove them; readers on both sides
check each answer against every version written under that name: a read never shows a torn or
mixed object, and an S3 ETag is the MD5 of the very bytes sent with it (computed for files
the mount wrote, never stale). Half-way a snapshot is taken (through the running process): it
holds whole versions too, and does not change while the writers go on. Afterwards both sides
list the same names with the same sizes; once the snapshot and everything else are deleted the
free space is what it was at the start; the cartridge is fsck-clean (the fixture's stop).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
from collections import defaultdict

import pytest
from botocore.exceptions import ClientError

BUCKET = "race"
NAMES = [f"k{i:02d}" for i in range(12)] + [f"d/k{i:02d}" for i in range(12)]
SECONDS = 8
MAX_OPS = 5000  # per worker (the time limit ends them first)


class Shared:
    """The versions written under each name (sha256), and what went wrong."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: dict[str, set[str]] = defaultdict(set)
        self.errors: list[str] = []
        self.reads = 0
        self.deadline = time.monotonic() + SECONDS

    def payload(self, rng: random.Random, name: str) -> bytes:
        """New bytes for `name`, recorded before they are written (a reader may see them at once)."""
        data = os.urandom(rng.choice([0, 10, 4096, 100_000, 300_000]))
        with self.lock:
            self.versions[name].add(hashlib.sha256(data).hexdigest())
        return data

    def check(self, name: str, body: bytes, where: str) -> str:
        """Record a read of `name` that no writer's version explains; return its sha256."""
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            self.reads += 1
            if digest not in self.versions[name]:
                self.errors.append(f"{where} read of {name}: {len(body)} bytes no writer wrote")
        return digest

    def running(self, count: int) -> bool:
        return count < MAX_OPS and time.monotonic() < self.deadline


def snapshot_files(shared: Shared, top) -> dict[str, str]:
    """name -> sha256 of every file under `top` (a bucket in a snapshot), each checked."""
    found = {}
    for path in top.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            name = str(path.relative_to(top))
            found[name] = shared.check(name, path.read_bytes(), "snapshot")
    return found


def worker(shared: Shared, seed: int, step) -> None:
    rng = random.Random(seed)
    count = 0
    try:
        while shared.running(count):
            step(rng, rng.choice(NAMES))
            count += 1
    except Exception as exc:  # a failure the rules do not allow
        with shared.lock:
            shared.errors.append(f"{step.__name__}: {exc!r}")


@pytest.mark.slow
def test_both_sides_at_once(make_both) -> None:
    both, shared = make_both(), Shared()
    s3, root = both.s3, both.mnt / BUCKET
    s3.create_bucket(Bucket=BUCKET)
    baseline = both.free_blocks()

    def s3_put(rng, name):
        s3.put_object(Bucket=BUCKET, Key=name, Body=shared.payload(rng, name))

    def s3_delete(rng, name):
        s3.delete_object(Bucket=BUCKET, Key=name)

    def s3_get(rng, name):
        try:
            answer = s3.get_object(Bucket=BUCKET, Key=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchKey":
                raise
            return
        body = answer["Body"].read()
        shared.check(name, body, "S3")
        if answer["ETag"].strip('"') != hashlib.md5(body).hexdigest():
            with shared.lock:
                shared.errors.append(f"S3 ETag of {name} is not the MD5 of the bytes sent")

    def fuse_replace(rng, name):
        path = root / name
        temp = path.parent / f".{path.name}.tmp{rng.randrange(1 << 30)}"
        data = shared.payload(rng, name)
        try:
            path.parent.mkdir(exist_ok=True)
            temp.write_bytes(data)
            os.rename(temp, path)
        except OSError as exc:
            # The parent went (S3 removed its last object, and the directory with it): the
            # write is refused as a local filesystem would refuse it.
            if exc.errno != errno.ENOENT:
                raise
            temp.unlink(missing_ok=True)

    def fuse_remove(rng, name):
        (root / name).unlink(missing_ok=True)

    def fuse_read(rng, name):
        try:
            body = (root / name).read_bytes()
        except FileNotFoundError:
            return
        shared.check(name, body, "FUSE")

    steps = [s3_put, s3_delete, s3_get, s3_get, fuse_replace, fuse_remove, fuse_read, fuse_read]
    threads = [threading.Thread(target=worker, args=(shared, seed, step))
               for seed, step in enumerate(steps)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS / 2)
    cli, cart = both.mount.cartridge_cli, both.mount.cart
    both.mount.run(cli, "snapshot", "create", cart, "mid")
    in_snapshot = snapshot_files(shared, both.mnt / ".snapshots" / "mid" / BUCKET)
    for thread in threads:
        thread.join(timeout=SECONDS + 60)
        assert not thread.is_alive(), "a worker hung"
    assert not shared.errors, shared.errors[:10]
    assert shared.reads > 50, shared.reads
    assert in_snapshot, "the snapshot caught no file"
    assert snapshot_files(shared, both.mnt / ".snapshots" / "mid" / BUCKET) == in_snapshot

    listed = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        listed |= {obj["Key"]: obj["Size"] for obj in page.get("Contents", [])}
    on_disk = {str(path.relative_to(root)): path.stat().st_size
               for path in root.rglob("*") if path.is_file()}
    assert listed == on_disk
    for name in listed:
        shared.check(name, s3.get_object(Bucket=BUCKET, Key=name)["Body"].read(), "final S3")
    assert not shared.errors, shared.errors[:10]

    both.mount.run(cli, "snapshot", "delete", cart, "mid")
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": name} for name in listed]})
    both.assert_space_back(baseline)
