"""Mount and S3 in one process: what the kernel caches (negative entries) never hides a name S3
creates, and files written through direct I/O stay coherent and visible over S3 at once."""

from __future__ import annotations

import os


def test_a_missing_name_shows_once_s3_creates_it(both):
    both.s3.create_bucket(Bucket="neg")
    path = both.mnt / "neg" / "later.txt"
    nested = both.mnt / "neg" / "dir" / "sub" / "key"
    for _ in range(2):  # the second time the kernel answers from its negative entries
        assert not path.exists() and not nested.exists()
    both.s3.put_object(Bucket="neg", Key="later.txt", Body=b"created over S3")
    both.s3.put_object(Bucket="neg", Key="dir/sub/key", Body=b"nested")
    assert path.read_bytes() == b"created over S3"
    assert nested.read_bytes() == b"nested"
    assert sorted(os.listdir(both.mnt / "neg")) == ["dir", "later.txt"]
    both.s3.delete_object(Bucket="neg", Key="later.txt")
    assert not path.exists()
    both.s3.put_object(Bucket="neg", Key="later.txt", Body=b"again")
    assert path.read_bytes() == b"again"


def test_a_new_write_only_file_is_coherent_and_visible_over_s3(both):
    both.s3.create_bucket(Bucket="dio")
    path = both.mnt / "dio" / "growing.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # direct I/O
    try:
        os.write(fd, b"a" * 10_000)
        reader = os.open(path, os.O_RDONLY)  # through the page cache
        try:
            assert os.pread(reader, 20_000, 0) == b"a" * 10_000
            os.pwrite(fd, b"b" * 4096, 0)
            os.write(fd, b"tail")
            assert os.pread(reader, 20_000, 0) == b"b" * 4096 + b"a" * 5904 + b"tail"
        finally:
            os.close(reader)
        body = both.s3.get_object(Bucket="dio", Key="growing.bin")["Body"].read()
        assert body == b"b" * 4096 + b"a" * 5904 + b"tail"  # not closed yet: seen at once
        assert os.fstat(fd).st_size == 10_004
    finally:
        os.close(fd)
    assert path.stat().st_size == 10_004
