"""Both sides fill the cartridge at once: refusals are clean and no space leaks.

An S3 client and a program on the mount write until the cartridge is full (S3 answers 507
InsufficientStorage, the mount ENOSPC), and go on trying a little. Everything acknowledged
before that reads back; after everything is deleted the free space is what it was before the
writing began (no block of a refused or half-written upload or file is lost), both sides can
write again, and the cartridge is fsck-clean (the fixture's stop checks it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest
from botocore.exceptions import ClientError

BUCKET = "full"
SIZE = 512 << 10
MAX_ITEMS = 400  # per writer; a 32 MiB cartridge holds ~60 of them
REFUSALS = 3  # further attempts after the first refusal


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_filling_from_both_sides_leaks_nothing(make_both) -> None:
    both = make_both(blocks=8192)  # 32 MiB
    s3, root = both.s3, both.mnt / BUCKET
    s3.create_bucket(Bucket=BUCKET)
    (root / "fuse").mkdir()
    baseline = both.free_blocks()

    acked: dict[str, str] = {}
    synced: dict[str, str] = {}
    written: list[str] = []  # every file the mount writer created, synced or not
    errors: list[str] = []

    def s3_writer() -> None:
        refused = 0
        for i in range(MAX_ITEMS):
            data = os.urandom(SIZE)
            try:
                s3.put_object(Bucket=BUCKET, Key=f"s3/o{i:03d}", Body=data)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "InsufficientStorage":
                    errors.append(f"S3: {exc!r}")
                    return
                refused += 1
                if refused > REFUSALS:
                    return
                continue
            acked[f"s3/o{i:03d}"] = sha(data)

    def fuse_writer() -> None:
        refused = 0
        for i in range(MAX_ITEMS):
            name = f"fuse/f{i:03d}"
            data = os.urandom(SIZE)
            written.append(name)
            try:
                fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    errors.append(f"mount: {exc!r}")
                    return
                refused += 1
                if refused > REFUSALS:
                    return
                continue
            synced[name] = sha(data)

    threads = [threading.Thread(target=s3_writer), threading.Thread(target=fuse_writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a writer hung"
    assert not errors, errors
    assert acked and synced, (len(acked), len(synced))
    assert len(acked) + len(synced) < 2 * MAX_ITEMS  # both sides did run out of space

    for key, digest in acked.items():
        assert sha(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == digest, key
    for name, digest in synced.items():
        assert sha((root / name).read_bytes()) == digest, name

    for name in written:
        (root / name).unlink(missing_ok=True)  # refused files may stay, with what was stored
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="s3/").get("Contents", [])]
    assert sorted(keys) == sorted(acked)
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})

    both.assert_space_back(baseline)

    data = os.urandom(SIZE)
    s3.put_object(Bucket=BUCKET, Key="after", Body=data)
    (root / "fuse" / "after").write_bytes(data)
    assert s3.get_object(Bucket=BUCKET, Key="after")["Body"].read() == data
    assert (root / "fuse" / "after").read_bytes() == data
