#!/usr/bin/env bash
# One entry point for set-up and everyday commands on a fresh Debian/Ubuntu machine.
#   ./dev.sh run    install what is missing, create ./storage.cart if absent, mount it on ./mnt
#                   with its S3 endpoint on 127.0.0.1:9000 (foreground; Ctrl-C unmounts)
#   ./dev.sh test   install what is missing, run the test suite
#   ./dev.sh bench  run the benchmarks      ./dev.sh lint   ruff
set -euo pipefail
cd "$(dirname "$0")"
APT_PACKAGES="fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc attr rsync fio sqlite3 git"
VENV=.venv

need_apt() {
    for p in $APT_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || return 0
    done
    return 1
}

install() {
    if need_apt; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e '.[test]'
        touch "$VENV/.installed"
    fi
}

cmd="${1:-run}"; shift || true
case "$cmd" in
    install) install ;;
    run)
        install
        CART="${CARTRIDGE:-storage.cart}"
        MNT="${MOUNTPOINT:-mnt}"
        [ -f "$CART" ] || "$VENV/bin/cartridge" create "$CART" --blocks "${BLOCKS:-262144}"
        mkdir -p "$MNT"
        echo "mounting $CART on $MNT with S3 on http://${S3:-127.0.0.1:9000} (Ctrl-C unmounts)"
        exec "$VENV/bin/mount.cartridge" "$CART" "$MNT" -f -o "s3=${S3:-127.0.0.1:9000}" ;;
    test)
        install
        exec "$VENV/bin/pytest" -q "$@" ;;
    bench)
        install
        exec "$VENV/bin/pytest" -q -m bench -s "$@" ;;
    lint)
        install
        exec "$VENV/bin/ruff" check . ;;
    *) echo "usage: $0 {run|test|bench|lint|install}" >&2; exit 2 ;;
esac
