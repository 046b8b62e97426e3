#!/usr/bin/env python3
"""Benchmark: ``ketch run --rm alpine:3.20.3 true`` against podman (and runc alone).

Usage (root; needs podman, skopeo, runc)::

    .venv/bin/python bench/run.py [--runs 30] [--warmup 3] [--workdir /var/tmp]
                                  [--no-podman] [--no-runc]

Everything lives in one fresh directory under ``--workdir``, removed at the end:

* ketch: ``.venv/bin/ketch --root W/ketch-root --runroot W/ketch-run``, the
  image loaded with ``ketch pull oci:/work/shared/images/alpine:3.20.3``
  (bytecode of the ketch sources is compiled first: a run that compiles its
  imports measures the compiler, not ketch);
* podman: ``podman --root W/podman-root --runroot W/podman-run --tmpdir
  W/podman-tmp --storage-driver overlay --cgroup-manager cgroupfs --runtime
  runc run --rm --network none --ulimit nofile=20000:20000 --ulimit
  nproc=32768:32768``, the same image copied in with ``skopeo copy
  oci:… containers-storage:[overlay@…]``.  crun, podman's default here,
  refuses this host's hybrid cgroup layout; the ulimits match what this
  machine allows (no CAP_SYS_RESOURCE);
* baseline (``--baseline KETCH``): another ketch entry point, e.g. a wrapper
  that puts an older checkout's ``src`` first on ``sys.path``, timed in the
  same rounds against the same store;
* runc: ``runc --root W/runc-state run --bundle W/bundle ID`` of a bundle made
  with ``runc spec`` (terminal off, ``args ["true"]``) over the same layer
  extracted with ``tar``: the OCI runtime alone, without an engine, an image
  store or an overlay mount.

After ``--warmup`` untimed rounds, each round runs every tool once in a
rotating order.  Printed: wall-time median, p90, min and max per tool, and the
ratio ketch/podman against the issue's target (≤ 0.5); also the median CPU
time (user + system) of each tool's waited-for processes, steadier than wall
time on a shared machine (podman's conmon detaches, so part of podman's is
not counted).

Clean-up (also after a failure or Ctrl-C): podman's images removed and every
mount left under the work directory detached, the directory deleted, and
``/run/runc`` — which ``podman container cleanup`` uses as runc's default
state root — removed again if this run created it and it is empty.  The mount
count of ``findmnt`` is compared before and after.
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

REPO = Path(__file__).resolve().parent.parent
LAYOUT = Path("/work/shared/images/alpine")
TAG = "3.20.3"
IMAGE = f"alpine:{TAG}"
PODMAN_RUN_FLAGS = ["--rm", "--network", "none",
                    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a set-up command; on failure show its output and stop."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"bench/run.py: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}")
    return p


def mounts() -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], stdout=subprocess.PIPE, text=True).stdout
    return [m.encode().decode("unicode_escape") for m in out.splitlines()]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


class Tools:
    """Set-up, the timed command and clean-up of each contender, all under ``work``."""

    def __init__(self, work: Path, ketch: Path, podman: bool, runc: bool, baseline: Path | None = None):
        self.work = work
        where = ["--root", str(work / "ketch-root"), "--runroot", str(work / "ketch-run")]
        self.ketch = [str(ketch)] + where
        self.baseline = [str(baseline)] + where if baseline else None
        self.podman = ["podman", "--root", str(work / "podman-root"), "--runroot", str(work / "podman-run"),
                       "--tmpdir", str(work / "podman-tmp"), "--storage-driver", "overlay",
                       "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
        self.use_podman = podman
        self.use_runc = runc
        self.runc_seq = 0

    def names(self) -> list[str]:
        return (["ketch"] + (["baseline"] if self.baseline else []) + (["podman"] if self.use_podman else [])
                + (["runc"] if self.use_runc else []))

    def setup(self) -> None:
        # Fresh bytecode for the ketch that will run (PYTHONDONTWRITEBYTECODE may be set).
        sh([sys.executable, "-m", "compileall", "-q", str(REPO / "src")])
        sh(self.ketch + ["pull", f"oci:{LAYOUT}:{TAG}"])
        if self.use_podman:
            store = f"[overlay@{self.work / 'podman-root'}+{self.work / 'podman-run'}]"
            sh(["skopeo", "copy", "-q", f"oci:{LAYOUT}:{TAG}",
                f"containers-storage:{store}docker.io/library/{IMAGE}"])
        if self.use_runc:
            self._make_bundle()

    def _make_bundle(self) -> None:
        bundle = self.work / "bundle"
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True)
        index = json.loads((LAYOUT / "index.json").read_text())
        mdesc = next(m for m in index["manifests"]
                     if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)
        blobs = LAYOUT / "blobs" / "sha256"
        manifest = json.loads((blobs / mdesc["digest"][7:]).read_text())
        for layer in manifest["layers"]:
            sh(["tar", "-xzf", str(blobs / layer["digest"][7:]), "-C", str(rootfs)])
        sh(["runc", "spec"], cwd=bundle)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["true"]
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))

    def command(self, name: str) -> list[str]:
        # --network none on both sides, as the podman command has: the issue's
        # comparison is of starting a container, not of creating a veth pair.
        if name == "ketch":
            return self.ketch + ["run", "--rm", "--network", "none", IMAGE, "true"]
        if name == "baseline":
            return self.baseline + ["run", "--rm", "--network", "none", IMAGE, "true"]
        if name == "podman":
            return self.podman + ["run"] + PODMAN_RUN_FLAGS + [IMAGE, "true"]
        self.runc_seq += 1
        return ["runc", "--root", str(self.work / "runc-state"), "run", "--bundle",
                str(self.work / "bundle"), f"bench-{os.getpid()}-{self.runc_seq}"]

    def cleanup(self) -> None:
        if self.use_podman and (self.work / "podman-root").exists():
            subprocess.run(self.podman + ["rm", "-a", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(self.podman + ["rmi", "-a", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prefix = str(self.work) + "/"
        # Deepest first; lazily, so a busy mount cannot stop the clean-up.
        for m in sorted((m for m in mounts() if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed rounds (each runs every tool once)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--ketch", type=Path, default=REPO / ".venv" / "bin" / "ketch",
                    help="the ketch entry point to time (default: the repository's .venv/bin/ketch)")
    ap.add_argument("--baseline", type=Path, metavar="KETCH",
                    help="another ketch entry point (e.g. an older checkout's) timed in the same rounds")
    ap.add_argument("--no-podman", action="store_true")
    ap.add_argument("--no-runc", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces, mounts)", file=sys.stderr)
        return 2
    need = ["findmnt"] + ([] if args.no_podman else ["podman", "skopeo"]) + ([] if args.no_runc else ["runc"])
    for tool in need:
        if not shutil.which(tool):
            print(f"{tool} is not installed (or pass --no-{tool})", file=sys.stderr)
            return 2

    mounts_before = len(mounts())
    runc_default_root = Path("/run/runc")
    had_runc_root = runc_default_root.exists()
    work = Path(tempfile.mkdtemp(prefix="ketch-bench-run-", dir=args.workdir))
    tools = Tools(work, args.ketch, not args.no_podman, not args.no_runc, args.baseline)
    names = tools.names()
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}  # user + system of the waited-for tree
    try:
        log(f"setting up in {work} …")
        tools.setup()
        for w in range(args.warmup):
            for n in names:
                t0 = time.perf_counter()
                sh(tools.command(n))
                log(f"warm-up {w + 1}: {n} {1e3 * (time.perf_counter() - t0):.0f} ms")
        for r in range(args.runs):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                cmd = tools.command(n)
                with tempfile.TemporaryFile() as out:
                    t0 = time.perf_counter()
                    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
                    _, status, ru = os.wait4(p.pid, 0)
                    dt = time.perf_counter() - t0
                    code = os.waitstatus_to_exitcode(status)
                    if code != 0:
                        out.seek(0)
                        raise SystemExit(f"{n} failed with exit status {code}: "
                                         f"{out.read().decode(errors='replace').strip()}")
                times[n].append(dt)
                cpu[n].append(ru.ru_utime + ru.ru_stime)
            log(f"round {r + 1}: " + "  ".join(f"{n} {1e3 * times[n][-1]:.0f} ms" for n in names))
    finally:
        tools.cleanup()
        if not had_runc_root:
            try:
                runc_default_root.rmdir()
            except OSError:
                pass
    mounts_after = len(mounts())

    print(f"\n`run --rm {IMAGE} true`, {args.runs} interleaved runs each after {args.warmup} warm-up "
          f"rounds (wall ms)")
    print(f"{'tool':<8}{'median':>8}{'p90':>8}{'min':>8}{'max':>8}{'cpu med':>9}")
    for n in names:
        v = [1e3 * t for t in times[n]]
        print(f"{n:<8}{statistics.median(v):>8.1f}{percentile(v, 0.9):>8.1f}{min(v):>8.1f}{max(v):>8.1f}"
              f"{1e3 * statistics.median(cpu[n]):>9.1f}")
    print("(cpu: user+system ms of the processes the tool waited for; podman's conmon detaches, "
          "so its share is missing)")
    med = {n: statistics.median(v) for n, v in times.items()}
    if "podman" in med:
        ratio = med["ketch"] / med["podman"]
        print(f"\nketch / podman = {ratio:.2f}  (target ≤ 0.50: {'ok' if ratio <= 0.5 else 'MISSED'})")
    if "baseline" in med:
        print(f"ketch / baseline = {med['ketch'] / med['baseline']:.2f}")
    if "runc" in med:
        print(f"ketch / runc   = {med['ketch'] / med['runc']:.2f}  (runc alone: no engine, no overlay mount)")
    leftover = [m for m in mounts() if m.startswith(str(work))]
    print(f"mounts (whole host, others' come and go): {mounts_before} before, {mounts_after} after"
          + (f"; LEFT UNDER {work}: {leftover}" if leftover else "") + f"; {work} removed: {not work.exists()}")
    return 1 if leftover or work.exists() else 0


if __name__ == "__main__":
    sys.exit(main())
