#!/usr/bin/env python3
"""Benchmark of detached containers (issue 5), ketch against podman, one run.

Usage (root; needs podman and skopeo)::

    .venv/bin/python bench/detached.py [--idle 50] [--cycles 100] [--network none]

1. Idle overhead: ``--idle`` containers ``sleep infinity`` started with
   ``run -d``; the memory of every process of the engine then alive (ketch:
   the monitors; podman: its conmon monitors), as RSS and as PSS (shared pages
   divided among their users) from ``/proc/PID/smaps_rollup``, divided by the
   number of containers.  The containers' own ``sleep`` processes are not
   counted for either.
2. ``--cycles`` of ``run -d alpine true`` then ``rm -f``, interleaved
   (ketch, podman, ketch, …), wall time.

Both engines use an isolated store under a fresh directory of ``--workdir``
(podman: overlay, cgroupfs, runc, as in bench/run.py) and ``--network``
(default none: the network set-up is measured elsewhere).  Everything made is
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYOUT = Path("/work/shared/images/alpine")
TAG = "3.20.3"
IMAGE = f"alpine:{TAG}"


def sh(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def memory(pids: list[int]) -> tuple[int, int]:
    """Sum of (RSS, PSS) in kB."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def pids_of(pattern: bytes) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if pattern in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=50)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--network", default="none")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--ketch", type=Path, default=REPO / ".venv" / "bin" / "ketch")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ketch-bench-detached-", dir=args.workdir))
    ketch = [str(args.ketch), "--root", str(work / "ketch-root"), "--runroot", str(work / "ketch-run")]
    podman = ["podman", "--root", str(work / "podman-root"), "--runroot", str(work / "podman-run"),
              "--tmpdir", str(work / "podman-tmp"), "--storage-driver", "overlay",
              "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
    prun = ["--network", args.network, "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
    try:
        sh([sys.executable, "-m", "compileall", "-q", str(REPO / "src")])
        sh(ketch + ["pull", "-q", f"oci:{LAYOUT}:{TAG}"])
        store = f"[overlay@{work / 'podman-root'}+{work / 'podman-run'}]"
        sh(["skopeo", "copy", "-q", f"oci:{LAYOUT}:{TAG}", f"containers-storage:{store}docker.io/library/{IMAGE}"])

        # 1. idle containers
        for _ in range(args.idle):
            sh(ketch + ["run", "-d", "--network", args.network, IMAGE, "sleep", "infinity"])
            sh(podman + ["run", "-d", *prun, IMAGE, "sleep", "infinity"])
        time.sleep(1)
        kpids = pids_of(str(work / "ketch-root").encode() + b'"')  # the monitors' argument carries the root
        ppids = [p for p in pids_of(b"conmon") if str(work).encode() in open(f"/proc/{p}/cmdline", "rb").read()]
        (krss, kpss), (prss, ppss) = memory(kpids), memory(ppids)
        n = args.idle
        print(f"{n} idle `sleep infinity` containers: engine processes alive: ketch {len(kpids)}, podman {len(ppids)}")
        print(f"  per container  ketch RSS {krss / n / 1024:.2f} MiB  PSS {kpss / n / 1024:.2f} MiB   |   "
              f"podman (conmon) RSS {prss / n / 1024:.2f} MiB  PSS {ppss / n / 1024:.2f} MiB")
        t = time.monotonic()
        sh(ketch + ["rm", "-f", *sh(ketch + ["ps", "-aq"]).split()])
        krm = time.monotonic() - t
        t = time.monotonic()
        sh(podman + ["rm", "-f", "-t", "0", "--all"])
        prm = time.monotonic() - t
        print(f"  rm -f of all {n}: ketch {krm:.2f} s, podman {prm:.2f} s")

        # 2. run -d + rm -f cycles, interleaved
        tk = tp = 0.0
        for _ in range(args.cycles):
            t = time.monotonic()
            cid = sh(ketch + ["run", "-d", "--network", args.network, IMAGE, "true"]).strip()
            sh(ketch + ["rm", "-f", cid])
            tk += time.monotonic() - t
            t = time.monotonic()
            cid = sh(podman + ["run", "-d", *prun, IMAGE, "true"]).strip()
            sh(podman + ["rm", "-f", "-t", "0", cid])
            tp += time.monotonic() - t
        print(f"{args.cycles} cycles of run -d + rm -f: ketch {tk:.1f} s, podman {tp:.1f} s, "
              f"ketch/podman = {tk / tp:.2f} (target <= 0.5)")
    finally:
        subprocess.run(ketch + ["rm", "-f", *subprocess.run(ketch + ["ps", "-aq"], stdout=subprocess.PIPE,
                                                             text=True).stdout.split()],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(podman + ["rm", "-f", "-t", "0", "--all"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(podman + ["rmi", "-a", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open("/proc/self/mountinfo") as f:
            for mp in sorted((line.split()[4] for line in f if str(work) in line.split()[4]), key=len, reverse=True):
                subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
