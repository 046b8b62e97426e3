#!/usr/bin/env python3
"""Benchmark: unpack the Debian bookworm layer with ketch, ``umoci unpack`` and GNU tar.

Usage (root; needs mmdebstrap, umoci, tar)::

    .venv/bin/python bench/unpack.py [--runs 5] [--cache /var/cache/ketch-bench]

The image is built once and cached outside the repository:
``mmdebstrap --variant=minbase --mode=root --format=tar bookworm`` gives the
rootfs tar; ``umoci init/new/raw add-layer`` turns it into an OCI layout with
one gzip layer.  All three tools then unpack *that same blob*:

* ketch: ``apply_layer(blob, dest, [], diff_id)`` in a fresh interpreter
  (startup and imports included; the diff ID is verified, as umoci does);
* umoci: ``umoci unpack --image LAYOUT:bookworm BUNDLE``;
* tar: ``tar -xzf BLOB -C DIR`` (as root: owners and modes kept).

After an untimed warm-up round, each round runs the three in a rotating order, each after ``sync`` and a short
pause (the disk's writeback otherwise leaks into the next timing), and the
outputs are deleted between rounds.  Printed: every wall time, the median, the
CPU time (user + system of the tool's processes: steadier than wall time on a
machine whose disk is shared), and the wall-time ratios against the issue's
targets (ketch ≤ 1.0× umoci, ≤ 1.25× tar).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TAG = "bookworm"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(cache: Path) -> tuple[Path, Path, str]:
    """Return ``(layout, blob, diff_id)``, building what the cache lacks."""
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / "bookworm.tar"
    if not rootfs.exists():
        log(f"building {rootfs} with mmdebstrap (about 20 s)…")
        tmp = rootfs.with_suffix(".tmp")
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", "--format=tar",
                        "bookworm", str(tmp)], check=True)
        tmp.rename(rootfs)
    layout = cache / "oci"
    if not (layout / "index.json").exists() or TAG not in (layout / "index.json").read_text():
        log(f"building the OCI layout {layout} with umoci…")
        shutil.rmtree(layout, ignore_errors=True)
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:{TAG}"], check=True)
        subprocess.run(["umoci", "raw", "add-layer", "--image", f"{layout}:{TAG}", str(rootfs)], check=True)
    index = json.loads((layout / "index.json").read_text())
    mdesc = next(m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / mdesc["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    return layout, blobs / manifest["layers"][0]["digest"][7:], config["rootfs"]["diff_ids"][0]


KETCH_SNIPPET = ("import sys; from ketch.image.unpack import apply_layer; "
                 "apply_layer(sys.argv[1], sys.argv[2], [], sys.argv[3])")


def commands(layout: Path, blob: Path, diff_id: str, out: Path) -> dict[str, list[str]]:
    return {
        "ketch": [sys.executable, "-c", KETCH_SNIPPET, str(blob), str(out / "ketch"), diff_id],
        "umoci": ["umoci", "--log", "error", "unpack", "--image", f"{layout}:{TAG}", str(out / "umoci")],
        "tar": ["sh", "-c", f'mkdir "$1" && exec tar -xzf "$2" -C "$1"', "sh", str(out / "tar"), str(blob)],
    }


def count_entries(root: Path) -> int:
    n = 0
    for _, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n


def settle() -> None:
    os.sync()
    time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds (each runs all three tools)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (page cache, VM memory)")
    ap.add_argument("--cache", type=Path, default=Path("/var/cache/ketch-bench"))
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                    help="where outputs go (same filesystem as a real snapshot root)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (owners, device nodes)", file=sys.stderr)
        return 2
    for tool in ("umoci", "tar", "mmdebstrap"):
        if not shutil.which(tool):
            print(f"{tool} is not installed", file=sys.stderr)
            return 2

    layout, blob, diff_id = build(args.cache)
    log(f"blob {blob.name[:16]}… {blob.stat().st_size / 1e6:.1f} MB gzip, diff_id {diff_id[:19]}…")
    names = ["ketch", "umoci", "tar"]
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}  # user + system, all processes
    work = Path(tempfile.mkdtemp(prefix="ketch-bench-", dir=args.workdir))
    try:
        for w in range(args.warmup):
            out = work / f"warmup{w}"
            out.mkdir()
            for n, cmd in commands(layout, blob, diff_id, out).items():
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(out)
        for r in range(args.runs):
            out = work / f"round{r}"
            out.mkdir()
            cmds = commands(layout, blob, diff_id, out)
            order = names[r % 3:] + names[:r % 3]
            for n in order:
                settle()
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmds[n], stdout=subprocess.DEVNULL)
                _, status, ru = os.wait4(proc.pid, 0)
                times[n].append(time.perf_counter() - t0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode != 0:
                    raise SystemExit(f"{n} failed with exit status {proc.returncode}")
                cpu[n].append(ru.ru_utime + ru.ru_stime)
            if r == 0:
                counts = {"ketch": count_entries(out / "ketch"), "tar": count_entries(out / "tar"),
                          "umoci": count_entries(out / "umoci" / "rootfs")}
                log(f"entries unpacked: {counts}")
                if len(set(counts.values())) != 1:
                    log("WARNING: the three trees differ in size")
            log("round %d: %s" % (r + 1, "  ".join(f"{n} {times[n][-1]:.2f}s (cpu {cpu[n][-1]:.2f}s)"
                                                   for n in names)))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"\nDebian bookworm minbase layer, {blob.stat().st_size / 1e6:.1f} MB gzip, "
          f"{args.runs} runs each (wall seconds)")
    print(f"{'tool':<8}{'median':>8}{'min':>8}{'max':>8}{'cpu med':>9}")
    for n in names:
        print(f"{n:<8}{med[n]:>8.3f}{min(times[n]):>8.3f}{max(times[n]):>8.3f}"
              f"{statistics.median(cpu[n]):>9.3f}")
    ru, rt = med["ketch"] / med["umoci"], med["ketch"] / med["tar"]
    print(f"\nketch / umoci = {ru:.2f}  (target ≤ 1.00: {'ok' if ru <= 1.0 else 'MISSED'})")
    print(f"ketch / tar   = {rt:.2f}  (target ≤ 1.25: {'ok' if rt <= 1.25 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
