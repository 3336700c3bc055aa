"""`cartridge` command line: create, info, fsck, snapshot."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from . import control
from .engine import keys
from .engine.fsck import repair_free_map, run_fsck
from .engine.header import AclMode, SseMode, VersioningMode
from .engine.store import DEFAULT_CACHE, Engine
from .errors import Busy, CartridgeError, Exists, NotFound, PassphraseRequired
from .fs.filesystem import FileSystem
from .fs.fsck import FS_CHECKS
from .fs.multipart import UploadNotFound, UploadRecords, Uploads
from .logs import setup_logging


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _passphrase(args, encrypted: bool, creating: bool = False) -> bytes | None:
    if not encrypted:
        return None
    return keys.read_passphrase(
        getattr(args, "passphrase_file", None), prompt=sys.stdin.isatty(), confirm=creating
    )


def open_engine(args, readonly: bool = False, repair: bool = False) -> Engine:
    """Open the cartridge named by args.cartridge, asking for a passphrase when it is encrypted."""
    if not os.path.exists(args.cartridge):
        raise NotFound(
            f"{args.cartridge}: no such cartridge (create one with: cartridge create {args.cartridge} --blocks N)"
        )
    try:
        return Engine.open(args.cartridge, readonly=readonly, cache_bytes=args.cache_size, repair=repair)
    except PassphraseRequired:
        pass
    return Engine.open(
        args.cartridge, readonly=readonly, cache_bytes=args.cache_size, repair=repair,
        passphrase=_passphrase(args, True),
    )


def cmd_create(args) -> int:
    if os.path.exists(args.cartridge):
        raise Exists(f"{args.cartridge} already exists")
    passphrase = _passphrase(args, args.encrypt, creating=True)
    engine = Engine.create(
        args.cartridge,
        args.blocks,
        compression=args.compression == "zstd",
        passphrase=passphrase,
        cache_bytes=args.cache_size,
    )
    FileSystem(engine)  # an empty filesystem: the root directory
    engine.close()
    print(f"created {args.cartridge}: {args.blocks} blocks of 4096 bytes"
          f"{', encrypted' if passphrase else ''}, compression {args.compression}")
    return 0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _on_engine(args, readonly: bool, local: Callable[[Engine], object], command: str, *cargs) -> object:
    """Run `local` on the opened cartridge, or `command` in the process that has it mounted."""
    try:
        engine = open_engine(args, readonly=readonly)
    except Busy:
        return control.request(args.cartridge, command, *cargs)
    try:
        return local(engine)
    finally:
        engine.close()


def cmd_info(args) -> int:
    info = _on_engine(args, True, control.full_info, "info")
    bs = info["block_size"]
    fuses = info["fuses"]
    lines = [
        f"cartridge:    {args.cartridge} ({info['uuid']})",
        f"size:         {_fmt_bytes(info['size_bytes'])} ({info['blocks']} blocks of {bs} bytes)",
        f"used:         {info['used_blocks']} blocks ({_fmt_bytes(info['used_blocks'] * bs)})",
        f"free:         {info['free_blocks']} blocks ({_fmt_bytes(info['free_blocks'] * bs)})",
        f"data:         {_fmt_bytes(info['data_bytes'])} stored in {_fmt_bytes(info['data_stored_bytes'])}"
        f" (compression {info['compression']}, ratio {info['compression_ratio']:.2f})",
        f"encryption:   {'on (AES-256-GCM)' if info['encrypted'] else 'off'}",
        f"generation:   {info['generation']}",
        f"fuses:        s3_versioning_mode={VersioningMode(fuses['s3_versioning_mode']).name} "
        f"s3_acl_mode={AclMode(fuses['s3_acl_mode']).name} s3_sse_mode={SseMode(fuses['s3_sse_mode']).name}",
        f"snapshots:    {len(info['snapshots'])}",
    ]
    uploads = info["uploads"]
    lines.insert(-1, f"uploads:      {uploads['uploads']} unfinished multipart uploads, {uploads['parts']} parts, "
                     f"{_fmt_bytes(uploads['bytes'])} in {uploads['blocks']} blocks")
    for snap in info["snapshots"]:
        lines.append(f"  {snap['name']}  (generation {snap['gen']}, {_when(snap['created_ns'])} UTC)")
    if info["damaged"]:
        lines.append(f"DAMAGED:      {info['damaged']}")
    print("\n".join(lines))
    return 0


def cmd_fsck(args) -> int:
    engine = open_engine(args, readonly=not args.repair, repair=args.repair)
    try:
        results = run_fsck(engine, verify_data=not args.quick, extra=FS_CHECKS)
        bad = {name: problems for name, problems in results.items() if problems}
        for name, problems in results.items():
            print(f"{'FAIL' if problems else 'ok  '}  {name}")
            for p in problems[:50]:
                print(f"        {p}")
            if len(problems) > 50:
                print(f"        ... and {len(problems) - 50} more")
        if args.repair and bad:
            repair_free_map(engine)
            results = run_fsck(engine, verify_data=False, extra=FS_CHECKS)
            bad = {name: problems for name, problems in results.items() if problems}
            print("repaired the free map; remaining problems:" if bad else "repaired: all checks pass")
            for name, problems in bad.items():
                print(f"FAIL  {name}: {problems[:5]}")
        if args.repair and not bad and engine.needs_check:
            engine.clear_needs_check()
            print("cleared the needs-check mark: the cartridge opens writable again")
        elif engine.needs_check and not bad:
            print("the cartridge is marked as needing a check: run fsck --repair to clear the mark")
    finally:
        engine.close()
    return 1 if bad else 0


def cmd_snapshot(args) -> int:
    def local(engine: Engine) -> list[dict]:
        if args.action != "list":
            getattr(engine, f"snapshot_{args.action}")(args.name)
        return control.jsonable(engine.info())["snapshots"]

    cargs = () if args.action == "list" else (args.name,)
    snaps = _on_engine(args, args.action == "list", local, f"snapshot_{args.action}", *cargs)
    if args.action == "list":
        for snap in snaps:
            print(f"{snap['name']}\t{_when(snap['created_ns'])}\tgeneration {snap['gen']}")
    return 0


def cmd_uploads(args) -> int:
    """List unfinished multipart uploads, or abort one (or all) of them, freeing their blocks."""
    if args.action == "abort" and bool(args.upload_id) == bool(args.all):
        print("cartridge uploads abort: give an upload id or --all", file=sys.stderr)
        return 2
    engine = open_engine(args, readonly=args.action == "list")
    try:
        uploads = Uploads(FileSystem(engine)) if args.action == "abort" else UploadRecords(engine)
        with engine.reader() as state:
            found = [(u, uploads.parts_in(state, u.upload_id)) for u in uploads.uploads_in(state)]
        if args.action == "list":
            for upload, parts in found:
                size = sum(part.size for part in parts.values())
                print(f"{upload.upload_id}	{upload.bucket}/{upload.key.decode(errors='replace')}	"
                      f"{_when(upload.initiated_ns)}	{len(parts)} parts	{_fmt_bytes(size)}")
            return 0
        chosen = [u for u, _ in found if args.all or u.upload_id == args.upload_id]
        if not chosen:
            raise UploadNotFound(f"no upload {args.upload_id!r}")
        for upload in chosen:
            uploads.abort_sync(upload)
            print(f"aborted {upload.upload_id} ({upload.bucket}/{upload.key.decode(errors='replace')})")
    finally:
        engine.close()
    return 0


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_mount(args) -> int:
    from .mount_helper import run_mount

    return run_mount(args)


def cmd_serve(args) -> int:
    import trio

    from s3api.server import run

    engine = open_engine(args)
    trio.run(lambda: run(engine, args.host, args.port,
                         access_key=os.environ.get("CARTRIDGE_ACCESS_KEY"),
                         secret_key=os.environ.get("CARTRIDGE_SECRET_KEY")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cartridge", description="A whole filesystem in one file.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str, actions: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        if actions:
            p.add_argument("action", choices=actions)
        p.add_argument("cartridge", help="path of the .cart file")
        p.add_argument("--passphrase-file", help="read the passphrase from this file")
        p.add_argument("--cache-size", type=_parse_size, default=DEFAULT_CACHE, help="cache bound (e.g. 64M)")
        p.set_defaults(func=func)
        return p

    p = add("create", cmd_create, "create a new cartridge")
    p.add_argument("--blocks", type=int, required=True, help="number of 4096-byte blocks")
    p.add_argument("--compression", choices=("zstd", "none"), default="zstd")
    p.add_argument("--encrypt", action="store_true", help="encrypt everything (asks for a passphrase)")
    add("info", cmd_info, "show size, usage, fuses, unfinished uploads and snapshots")
    p = add("fsck", cmd_fsck, "check a cartridge; exit status 1 when anything is wrong")
    p.add_argument("--repair", action="store_true", help="rebuild the free map in a new generation")
    p.add_argument("--quick", action="store_true", help="do not read file data")
    p = add("uploads", cmd_uploads, "list or abort unfinished S3 multipart uploads",
            actions=("list", "abort"))
    p.add_argument("upload_id", nargs="?", help="the upload to abort")
    p.add_argument("--all", action="store_true", help="abort every unfinished upload")
    p = add("snapshot", cmd_snapshot, "create, list, delete or restore snapshots",
            actions=("create", "list", "delete", "restore"))
    p.add_argument("name", nargs="?")
    from .mount_helper import add_arguments

    p = sub.add_parser("mount", help="mount through FUSE (same as mount.cartridge; see docs/mount.md)")
    add_arguments(p)
    p.set_defaults(func=cmd_mount)
    p = add("serve", cmd_serve, "serve the cartridge as an S3 endpoint (see docs/s3-compatibility.md)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("create", "delete", "restore") and not args.name:
        print("cartridge snapshot: a snapshot name is required", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except CartridgeError as exc:
        print(f"cartridge {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
