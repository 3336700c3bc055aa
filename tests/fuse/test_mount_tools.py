"""Everyday programs on a real mount, compared byte for byte."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import stat
import subprocess
import threading
import time

import pytest


def sh(*cmd, cwd=None, env=None) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r.stdout


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def make_tree(root):
    """A small source tree: nested dirs, text, binary, empty file, symlink."""
    (root / "src" / "pkg" / "sub").mkdir(parents=True)
    for i in range(20):
        (root / "src" / "pkg" / f"mod{i}.py").write_text(f"# module {i}\n" + "x = 1\n" * i * 50)
    (root / "src" / "pkg" / "sub" / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "src" / "empty").write_bytes(b"")
    (root / "src" / "README").write_text("hello\n")
    os.symlink("README", root / "src" / "link")
    os.chmod(root / "src" / "README", 0o600)
    return root / "src"


def test_cp_mv_rm_ls_find(mnt, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    sh("cp", src, mnt / "a.bin")
    assert digest(mnt / "a.bin") == digest(src)
    sh("mkdir", "-p", mnt / "d1" / "d2")
    sh("mv", mnt / "a.bin", mnt / "d1" / "d2" / "b.bin")
    assert not (mnt / "a.bin").exists()
    assert digest(mnt / "d1" / "d2" / "b.bin") == digest(src)
    listing = sh("ls", "-l", mnt / "d1" / "d2")
    assert "b.bin" in listing and str(len(data)) in listing
    found = sh("find", mnt, "-name", "*.bin")
    assert found.strip() == str(mnt / "d1" / "d2" / "b.bin")
    assert ".snapshots" not in sh("ls", "-a", mnt)
    sh("rm", "-r", mnt / "d1")
    assert sorted(os.listdir(mnt)) == []


def test_tar_and_rsync_roundtrip(mnt, tmp_path):
    src = make_tree(tmp_path / "orig")
    tarball = tmp_path / "t.tar"
    sh("tar", "cf", tarball, "-C", src.parent, "src")
    (mnt / "x").mkdir()
    sh("tar", "xf", tarball, "-C", mnt / "x")
    sh("diff", "-r", "--no-dereference", src, mnt / "x" / "src")
    sh("rsync", "-a", str(src) + "/", str(mnt / "r") + "/")
    sh("diff", "-r", "--no-dereference", src, mnt / "r")
    out = tmp_path / "back"
    sh("rsync", "-a", str(mnt / "r") + "/", str(out) + "/")
    sh("diff", "-r", "--no-dereference", src, out)
    # rsync -a preserves modes and times: a second run copies nothing
    again = sh("rsync", "-a", "--itemize-changes", str(src) + "/", str(mnt / "r") + "/")
    assert again.strip() == ""
    assert stat.S_IMODE(os.stat(mnt / "r" / "README").st_mode) == 0o600
    assert os.readlink(mnt / "r" / "link") == "README"


def test_attributes_links_xattrs_fifo(mnt):
    f = mnt / "f"
    f.write_text("content")
    sh("chmod", "640", f)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    sh("chown", "1234:5678", f)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    sh("touch", "-d", "2001-02-03 04:05:06 UTC", f)
    assert os.stat(f).st_mtime == pytest.approx(981173106)
    before = time.time()
    sh("touch", f)  # UTIME_NOW
    assert os.stat(f).st_mtime >= before - 1
    sh("ln", f, mnt / "hard")
    assert os.stat(f).st_nlink == 2 and os.stat(mnt / "hard").st_ino == os.stat(f).st_ino
    sh("ln", "-s", "f", mnt / "soft")
    assert os.readlink(mnt / "soft") == "f" and (mnt / "soft").read_text() == "content"
    sh("setfattr", "-n", "user.color", "-v", "blue", f)
    sh("setfattr", "-n", "user.big", "-v", "0x" + "ab" * 5000, f)
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.getxattr(f, "user.big") == bytes.fromhex("ab" * 5000)
    assert 'user.color="blue"' in sh("getfattr", "-d", f)
    assert sorted(os.listxattr(f)) == ["user.big", "user.color"]
    sh("setfattr", "-x", "user.color", f)
    with pytest.raises(OSError) as exc:
        os.getxattr(f, "user.color")
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(OSError) as exc:
        os.removexattr(f, "user.nothere")
    assert exc.value.errno == errno.ENODATA
    sh("mkfifo", mnt / "fifo")
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    got = []
    t = threading.Thread(target=lambda: got.append((mnt / "fifo").read_text()))
    t.start()
    with open(mnt / "fifo", "w") as w:
        w.write("through the pipe")
    t.join(10)
    assert got == ["through the pipe"]
    sh("rm", mnt / "hard")
    assert os.stat(f).st_nlink == 1


def test_rename_over_existing_and_statfs(mnt):
    (mnt / "new").write_bytes(b"new" * 1000)
    (mnt / "old").write_bytes(b"old")
    with open(mnt / "old", "rb") as held:
        os.rename(mnt / "new", mnt / "old")
        assert held.read() == b"old"  # the replaced file stays readable while open
    assert (mnt / "old").read_bytes() == b"new" * 1000
    assert not (mnt / "new").exists()
    sv = os.statvfs(mnt)
    assert sv.f_blocks == 200_000 and 0 < sv.f_bfree <= sv.f_blocks


def test_sqlite(mnt):
    db = sqlite3.connect(mnt / "test.db")
    db.execute("create table t (k integer primary key, v text)")
    with db:
        db.executemany("insert into t (v) values (?)", [(f"value {i}" * 10,) for i in range(5000)])
    with db:
        db.execute("delete from t where k % 3 = 0")
    db.close()
    db = sqlite3.connect(mnt / "test.db")
    assert db.execute("select count(*) from t").fetchone()[0] == 5000 - 5000 // 3
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    db.close()


def test_git(mnt):
    env = dict(os.environ, GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@example.com", HOME=str(mnt))
    repo = mnt / "repo"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo, env=env)
    for i in range(3):
        (repo / f"file{i}.txt").write_text(f"revision {i}\n" * 100)
        sh("git", "add", ".", cwd=repo, env=env)
        sh("git", "commit", "-q", "-m", f"commit {i}", cwd=repo, env=env)
    log = sh("git", "log", "--oneline", cwd=repo, env=env)
    assert len(log.splitlines()) == 3 and "commit 2" in log
    sh("git", "fsck", "--strict", cwd=repo, env=env)
    assert sh("git", "status", "--porcelain", cwd=repo, env=env).strip() == ""


def test_concurrent_writers(mnt):
    payloads = {i: os.urandom(2 * 1024 * 1024 + i) for i in range(8)}

    def writer(i):
        with open(mnt / f"w{i}", "wb") as f:
            for pos in range(0, len(payloads[i]), 65536):
                f.write(payloads[i][pos:pos + 65536])

    threads = [threading.Thread(target=writer, args=(i,)) for i in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, data in payloads.items():
        assert hashlib.sha256((mnt / f"w{i}").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_sparse_file_over_4gib(mnt):
    f = mnt / "sparse"
    sh("truncate", "-s", "5G", f)
    tail = os.urandom(4096)
    with open(f, "r+b") as fh:
        fh.seek(5 * 1024**3 - 4096)
        fh.write(tail)
        fh.seek(4 * 1024**3 + 12345)
        fh.write(b"middle")
    st = os.stat(f)
    assert st.st_size == 5 * 1024**3
    with open(f, "rb") as fh:
        fh.seek(5 * 1024**3 - 4096)
        assert fh.read() == tail
        fh.seek(4 * 1024**3 + 12340)
        assert fh.read(16) == b"\0" * 5 + b"middle" + b"\0" * 5
        fh.seek(1024**3)
        assert fh.read(1 << 20) == b"\0" * (1 << 20)
    assert os.statvfs(mnt).f_bfree > os.statvfs(mnt).f_blocks - 1000


def test_renameat2_flags(mnt):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # glibc >= 2.28 has renameat2
    at_fdcwd = -100

    def renameat2(a, b, flags):
        if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), flags) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    (mnt / "a").write_text("A")
    (mnt / "b").write_text("B")
    with pytest.raises(OSError) as exc:
        renameat2(mnt / "a", mnt / "b", 1)  # RENAME_NOREPLACE
    assert exc.value.errno == errno.EEXIST
    renameat2(mnt / "a", mnt / "b", 2)  # RENAME_EXCHANGE
    assert (mnt / "a").read_text() == "B" and (mnt / "b").read_text() == "A"
    renameat2(mnt / "a", mnt / "c", 1)
    assert (mnt / "c").read_text() == "B" and not (mnt / "a").exists()


def test_rewriting_a_file_truncates_it(cartridge_mount):
    """open(O_TRUNC) (what `>`, editors and write_bytes do) drops the old content."""
    mnt = cartridge_mount.start()
    path = mnt / "notes.txt"
    path.write_bytes(os.urandom(300_000))
    path.write_bytes(b"short")
    assert path.read_bytes() == b"short"
    with open(path, "r+b") as f:  # no O_TRUNC: the rest stays
        f.write(b"S")
    assert path.read_bytes() == b"Short"
    cartridge_mount.stop()
    mnt = cartridge_mount.start()
    assert (mnt / "notes.txt").read_bytes() == b"Short"
