#!/bin/sh
# The main job: real distro userlands running as isolated processes on this host's kernel.
# Alpine from ../shared/images when present (offline), and Debian bookworm built here from
# Debian's own packages with mmdebstrap (cached in /var/cache/ketch-demo).
set -eu
cd "$(dirname "$0")/.."
KETCH=.venv/bin/ketch
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

echo "host: $(uname -sr), $(. /etc/os-release && echo "$PRETTY_NAME")"

if [ -d ../shared/images/alpine ]; then
    run $KETCH pull oci:../shared/images/alpine:3.20.3
    run $KETCH run --rm alpine:3.20.3 sh -c 'head -2 /etc/os-release; echo "kernel: $(uname -r)"; echo "my PID: $$"; ps'
    # BusyBox built against glibc 2.41 needs GLIBC_2.38, which a Debian 12 host lacks:
    # it runs only because the container's root really is the image's.
    run $KETCH pull -q oci:../shared/images/busybox:1.38.0-glibc
    run $KETCH run --rm busybox:1.38.0-glibc sh -c 'busybox | head -1; ls -l /lib/libc.so.6 2>/dev/null || ls /lib'
fi

cache=/var/cache/ketch-demo
if [ ! -f $cache/bookworm.tar ]; then
    mkdir -p $cache
    say "mmdebstrap --variant=minbase bookworm (once, ~1 min)"
    mmdebstrap --quiet --variant=minbase --mode=root --format=tar bookworm $cache/bookworm.tar.tmp
    mv $cache/bookworm.tar.tmp $cache/bookworm.tar
fi
$KETCH image inspect debian:bookworm >/dev/null 2>&1 || run $KETCH import $cache/bookworm.tar debian:bookworm
run $KETCH images
run $KETCH run --rm --hostname demo debian:bookworm sh -c 'grep PRETTY /etc/os-release; echo "kernel: $(uname -r)"; echo "hostname: $(hostname), PID $$"; echo "processes visible:" /proc/[0-9]*'
