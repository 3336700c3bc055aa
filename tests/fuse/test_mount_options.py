"""Mount option parsing and the kernel-cache invalidation hook (no mount needed)."""

from __future__ import annotations

import pytest

from cartridgefs.engine.store import Engine
from cartridgefs.errors import InvalidArgument
from cartridgefs.fs.filesystem import FileSystem
from cartridgefs.fuse.ops import SNAPDIR_INO, Operations
from cartridgefs.mount_helper import parse_options


def test_parse_options():
    o = parse_options(["rw,defaults,_netdev,noauto,user,nofail,x-systemd.automount",
                       "ro,allow_other,uid=1000,gid=100,umask=027,cache_size=64M,blocks=99,s3=off,nosuid"])
    assert o.readonly and o.allow_other
    assert (o.uid, o.gid, o.umask, o.cache_size, o.blocks, o.s3) == (1000, 100, 0o27, 64 << 20, 99, None)
    assert {"ro", "allow_other", "default_permissions", "nosuid", "fsname=cartridge"} <= o.fuse_options()
    assert parse_options([]).s3 == "127.0.0.1:9000"
    assert parse_options(["s3=0.0.0.0:9100"]).s3 == "0.0.0.0:9100"
    for bad in ("bogus", "uid=x", "s3=nohost", "s3=h:99999"):
        with pytest.raises(InvalidArgument):
            parse_options([bad])


async def test_snapshot_directory_is_found_by_lookup(tmp_path):
    # Kernel-cache invalidation for S3 changes is tested against a live mount in
    # tests/integration/test_cross_visibility.py.
    engine = Engine.create(str(tmp_path / "c.cart"), 1024)
    fs = FileSystem(engine)
    ops = Operations(fs)
    entry = await ops.lookup(1, b".snapshots", None)
    assert entry.st_ino == SNAPDIR_INO
    await fs.close()
