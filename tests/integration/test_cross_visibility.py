"""What one side (S3, the FUSE mount) changes, the other sees at once: one process serves both."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cartridgefs.engine.store import Engine
from cartridgefs.fs.items import next_prefix

_names = itertools.count()


@pytest.fixture
def bucket(both) -> str:
    name = f"xvis-{next(_names)}"
    both.s3.create_bucket(Bucket=name)
    return name


def listed(both, bucket: str, **kwargs) -> dict[str, dict]:
    page = both.s3.list_objects_v2(Bucket=bucket, **kwargs)
    return {obj["Key"]: obj for obj in page.get("Contents", [])}


def rclone(both, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*both.rclone, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_s3_writes_show_in_the_mount(both, bucket):
    path = both.mnt / bucket / "docs" / "a b.txt"
    both.s3.put_object(Bucket=bucket, Key="docs/a b.txt", Body=b"first version")
    assert os.listdir(both.mnt / bucket / "docs") == ["a b.txt"]
    assert path.read_bytes() == b"first version"
    both.s3.delete_object(Bucket=bucket, Key="docs/a b.txt")
    assert not path.exists()
    assert not (both.mnt / bucket / "docs").exists()  # the implicit directory went with it


def test_s3_overwrite_shows_in_the_mount_at_once(both, bucket):
    path = both.mnt / bucket / "a.txt"
    both.s3.put_object(Bucket=bucket, Key="a.txt", Body=b"first version")
    assert path.read_bytes() == b"first version"
    for body in (b"second, longer version", b"3rd", b"4th"):  # kernel caches must not serve old bytes
        both.s3.put_object(Bucket=bucket, Key="a.txt", Body=body)
        assert path.stat().st_size == len(body)
        assert subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout == body


def test_mount_writes_show_over_s3(both, bucket):
    data = os.urandom(300_000)
    path = both.mnt / bucket / "sub" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    obj = listed(both, bucket)["sub/file.bin"]
    assert obj["Size"] == len(data)
    assert obj["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert abs(obj["LastModified"].timestamp() - path.stat().st_mtime) < 1
    assert both.s3.get_object(Bucket=bucket, Key="sub/file.bin")["Body"].read() == data
    with open(path, "r+b") as f:  # a change in place: a new ETag, not the remembered one
        f.write(b"changed")
    head = both.s3.head_object(Bucket=bucket, Key="sub/file.bin")
    assert head["ETag"] == f'"{hashlib.md5(b"changed" + data[7:]).hexdigest()}"'


def test_mount_truncating_rewrite_shows_over_s3(both, bucket):
    path = both.mnt / bucket / "rewritten"
    path.write_bytes(os.urandom(300_000))
    path.write_bytes(b"changed")  # open(O_WRONLY | O_TRUNC)
    head = both.s3.head_object(Bucket=bucket, Key="rewritten")
    assert head["ContentLength"] == 7
    assert head["ETag"] == f'"{hashlib.md5(b"changed").hexdigest()}"'


def test_renames_and_deletes_both_ways(both, bucket):
    root = both.mnt / bucket
    both.s3.put_object(Bucket=bucket, Key="from-s3", Body=b"s")
    (root / "from-fuse").write_bytes(b"f")
    os.rename(root / "from-s3", root / "renamed-in-mount")
    assert set(listed(both, bucket)) == {"from-fuse", "renamed-in-mount"}
    both.s3.copy_object(Bucket=bucket, Key="moved/over-s3", CopySource=f"{bucket}/from-fuse")
    both.s3.delete_object(Bucket=bucket, Key="from-fuse")
    assert sorted(os.listdir(root)) == ["moved", "renamed-in-mount"]
    assert (root / "moved" / "over-s3").read_bytes() == b"f"
    (root / "renamed-in-mount").unlink()
    both.s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "moved/over-s3"}]})
    assert listed(both, bucket) == {} and os.listdir(root) == []


def test_rclone_sync_and_check_against_mount_copies(both, bucket, tmp_path):
    src = tmp_path / "src"
    for rel, size in (("a.txt", 10), ("dir/b.bin", 70_000), ("dir/deep/c d.txt", 0)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(os.urandom(size))
    rclone(both, "sync", str(src), f"cart:{bucket}")
    rclone(both, "check", str(src), f"cart:{bucket}")  # sizes and MD5 hashes
    assert (both.mnt / bucket / "dir" / "b.bin").read_bytes() == (src / "dir" / "b.bin").read_bytes()
    # files copied in through the mount get their ETag computed: rclone check agrees too
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "copied.bin").write_bytes(os.urandom(123_456))
    shutil.copy(extra / "copied.bin", both.mnt / bucket / "copied.bin")
    rclone(both, "check", str(extra), f"cart:{bucket}", "--one-way")


def test_directories_both_ways(both, bucket):
    (both.mnt / bucket / "made-by-mkdir").mkdir()
    assert "made-by-mkdir/" in listed(both, bucket)
    both.s3.put_object(Bucket=bucket, Key="marker/", Body=b"")
    assert (both.mnt / bucket / "marker").is_dir()
    assert sorted(listed(both, bucket)) == ["made-by-mkdir/", "marker/"]
    with pytest.raises(ClientError):
        both.s3.put_object(Bucket=bucket, Key="marker", Body=b"a file over a directory")
    os.rmdir(both.mnt / bucket / "marker")
    assert sorted(listed(both, bucket)) == ["made-by-mkdir/"]


def test_a_directory_removed_over_s3_stays_open_and_is_freed_when_let_go(make_both):
    """An S3 DELETE of a `dir/` marker removes the empty directory at once; a process that has
    it open keeps a descriptor the kernel knows is of a removed directory, as after rmdir on a
    local filesystem. When the descriptor closes the kernel forgets the inode and the cartridge
    frees it: no orphan is left."""
    both = make_both()
    both.s3.create_bucket(Bucket="held")
    path = both.mnt / "held" / "d"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        both.s3.delete_object(Bucket="held", Key="d/")
        assert not path.exists() and "d/" not in listed(both, "held")
        st = os.fstat(fd)
        assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 0
        assert os.listdir(fd) == []
        with pytest.raises(FileNotFoundError):
            os.open("new", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
    finally:
        os.close(fd)
    both.free_blocks()  # an fsync: commits whatever the kernel's FORGET freed meanwhile
    both.mount.stop()  # unmounts; exit status 0 and a clean fsck
    engine = Engine.open(str(both.mount.cart), readonly=True)
    try:
        with engine.reader() as state:
            orphans = list(engine.items(state, "meta", b"orphan", next_prefix(b"orphan")))
    finally:
        engine.close()
    assert orphans == []


def test_fsck_is_clean_after_unmount(both):
    """Runs last in this module: the `both` fixture's teardown unmounts and runs fsck."""
    assert Path(both.mnt).is_mount()
