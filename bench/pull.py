#!/usr/bin/env python3
"""Benchmark: pull from a local registry to a runnable image — ketch vs ``skopeo copy`` + ``umoci unpack``.

Usage (root; needs docker-registry, skopeo, umoci, curl, mmdebstrap)::

    .venv/bin/python bench/pull.py [--runs 5] [--warmup 1] [--cache /var/cache/ketch-bench]
                                   [--workdir /var/tmp] [--only bookworm|busybox]

Two image sets, served by Debian's ``docker-registry`` (CNCF Distribution) on
127.0.0.1 with filesystem storage under ``--workdir``, filled once per run of
this script by ``skopeo copy`` (untimed):

* ``bookworm``: Debian bookworm minbase, one ~63 MB gzip layer — the OCI
  layout that ``bench/unpack.py`` builds with mmdebstrap + umoci and caches
  in ``--cache`` (built here the same way when absent);
* ``busybox``: the six BusyBox images of ``../shared/images/busybox``.

Timed per round, each from an empty store/directory:

* **ketch**: ``ketch --root R pull -q IMG`` for each image, then the first
  unpack (what ``ketch run`` does before it starts anything: every layer into
  its snapshot, :meth:`Snapshotter.ensure_image`, diff IDs checked) in one
  fresh interpreter for the set;
* **skopeo+umoci**: ``skopeo copy docker://… oci:DIR:TAG`` for each image, then
  ``umoci unpack --image DIR:TAG BUNDLE`` for each;
* **curl**: one ``curl`` reading every blob of the set (manifests, configs,
  layers) to /dev/null — the floor: just moving the bytes over loopback.

After ``--warmup`` untimed rounds, each round runs the three in a rotating
order, each after ``sync`` and a pause.  Printed: wall-time medians (min/max),
median CPU time (user+system of the tool's processes) and the ratios ketch /
(skopeo+umoci) (target ≤ 1.0) and ketch / curl.  Everything made (the
registry process, its storage, the stores and bundles) is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "images"
KETCH = [str(Path(sys.executable).parent / "ketch")]
if not Path(KETCH[0]).exists():
    KETCH = [sys.executable, "-m", "ketch.cli.main"]
BUSYBOX_TAGS = ("1.37.0-glibc", "1.37.0-musl", "1.37.0-uclibc", "1.38.0-glibc", "1.38.0-musl", "1.38.0-uclibc")
NAMES = ["ketch", "skopeo+umoci", "curl"]

UNPACK_SNIPPET = """
import sys
from ketch.paths import Paths
from ketch.image.store import ImageStore
from ketch.snapshot.overlay import Snapshotter
paths = Paths.from_env(sys.argv[1], sys.argv[1] + "-run")
store = ImageStore(paths)
snaps = Snapshotter(paths.snapshots)
for ref in sys.argv[2:]:
    snaps.ensure_image(store.content, store.resolve(ref))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """``docker-registry serve`` on 127.0.0.1 with its storage under ``base``."""

    def __init__(self, base: Path):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        cfg = base / "registry.yml"
        cfg.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {base / 'storage'}
http:
  addr: 127.0.0.1:{self.port}
  secret: ketch-bench
""")
        self.logf = open(base / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/v2/")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"docker-registry did not start: {(base / 'registry.log').read_text()}")
            time.sleep(0.05)

    def blob_urls(self, repo: str, tag: str) -> list[str]:
        """URLs of the manifest and every blob of ``repo:tag``."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", f"/v2/{repo}/manifests/{tag}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                     "application/vnd.docker.distribution.manifest.v2+json"})
        m = json.loads(c.getresponse().read())
        c.close()
        base = f"http://{self.host}/v2/{repo}"
        return [f"{base}/manifests/{tag}"] + [f"{base}/blobs/{d['digest']}" for d in [m["config"], *m["layers"]]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def bookworm_layout(cache: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from unpack import build  # bench/unpack.py: mmdebstrap + umoci, cached
    layout, _, _ = build(cache)
    return layout


def image_sets(cache: Path, only: str | None) -> dict[str, list[tuple[Path, str, str]]]:
    """name -> [(layout, tag in the layout, repo:tag in the registry)]."""
    sets: dict[str, list[tuple[Path, str, str]]] = {}
    if only in (None, "bookworm"):
        sets["bookworm"] = [(bookworm_layout(cache), "bookworm", "debian:bookworm")]
    if only in (None, "busybox"):
        sets["busybox"] = [(SHARED / "busybox", t, f"busybox:{t}") for t in BUSYBOX_TAGS]
    return sets


def commands(reg: Registry, images: list[tuple[Path, str, str]], out: Path,
             urls: list[str]) -> dict[str, list[list[str]]]:
    root = out / "ketch-root"
    refs = [f"{reg.host}/{rt}" for _, _, rt in images]
    ketch = [[*KETCH, "--root", str(root), "--runroot", str(out / "ketch-run"), "pull", "-q", r] for r in refs]
    ketch.append([sys.executable, "-c", UNPACK_SNIPPET, str(root), *refs])
    layout = out / "skopeo-oci"
    sk = [["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{r}", f"oci:{layout}:{rt.split(':')[1]}"]
          for r, (_, _, rt) in zip(refs, images)]
    sk += [["umoci", "--log", "error", "unpack", "--image", f"{layout}:{rt.split(':')[1]}",
            str(out / f"bundle-{rt.split(':')[1]}")] for _, _, rt in images]
    curl = ["curl", "-sSf"]
    for u in urls:
        curl += ["-o", "/dev/null", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", u]
    return {"ketch": ketch, "skopeo+umoci": sk, "curl": [curl]}


def timed(cmds: list[list[str]], first: int) -> tuple[float, float, float]:
    """Run ``cmds`` one after the other; (wall seconds, cpu seconds of their processes,
    wall seconds of the ``first`` commands alone — the download part)."""
    cpu = 0.0
    part = 0.0
    t0 = time.perf_counter()
    for i, cmd in enumerate(cmds):
        if i == first:
            part = time.perf_counter() - t0
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        cpu += ru.ru_utime + ru.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd[:6])}… failed: {proc.stderr.read().decode()[-500:]}")
        proc.stderr.close()
    total = time.perf_counter() - t0
    return total, cpu, part or total


def settle() -> None:
    os.sync()
    time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("/var/cache/ketch-bench"))
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--only", choices=["bookworm", "busybox"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("needs root (umoci unpack and ketch's unpack keep owners and device nodes)")
        return 2
    for tool in ("docker-registry", "skopeo", "umoci", "curl"):
        if not shutil.which(tool):
            log(f"{tool} is not installed (scripts/setup.sh installs it)")
            return 2
    sets = image_sets(args.cache, args.only)
    work = Path(tempfile.mkdtemp(prefix="ketch-bench-pull-", dir=args.workdir))
    reg = None
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    try:
        reg = Registry(work)
        for images in sets.values():
            for layout, tag, rt in images:
                subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                                f"docker://{reg.host}/{rt}"], check=True)
        for name, images in sets.items():
            urls = [u for _, _, rt in images for u in reg.blob_urls(*rt.split(":"))]
            size = 0
            for u in urls:
                if "/blobs/" in u:
                    c = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=10)
                    c.request("HEAD", u.split(reg.host, 1)[1])
                    size += int(c.getresponse().getheader("Content-Length") or 0)
                    c.close()
            log(f"{name}: {len(images)} image(s), {len(urls) - len(images)} blobs, {size / 1e6:.1f} MB")
            res: dict[str, list[tuple[float, float, float]]] = {n: [] for n in NAMES}
            for r in range(args.warmup + args.runs):
                out = work / f"{name}-{r}"
                out.mkdir()
                cmds = commands(reg, images, out, urls)
                order = NAMES[r % 3:] + NAMES[:r % 3]
                got = {}
                for n in order:
                    settle()
                    got[n] = timed(cmds[n], len(images))
                shutil.rmtree(out)
                tag = "warm-up" if r < args.warmup else f"round {r - args.warmup + 1}"
                log(f"  {tag}: " + "  ".join(f"{n} {got[n][0]:.2f}s (fetch {got[n][2]:.2f}s, cpu {got[n][1]:.2f}s)"
                                             for n in NAMES))
                if r >= args.warmup:
                    for n in NAMES:
                        res[n].append(got[n])
            results[name] = res
    finally:
        if reg is not None:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    for name, res in results.items():
        med = {n: statistics.median(w for w, _, _ in v) for n, v in res.items()}
        print(f"\n{name}: pull to a runnable image, {args.runs} runs (wall seconds; 'fetch' = the "
              f"ketch pull / skopeo copy part alone)")
        print(f"{'tool':<14}{'median':>8}{'min':>8}{'max':>8}{'cpu med':>9}{'fetch med':>11}")
        for n in NAMES:
            walls = [w for w, _, _ in res[n]]
            print(f"{n:<14}{med[n]:>8.3f}{min(walls):>8.3f}{max(walls):>8.3f}"
                  f"{statistics.median(c for _, c, _ in res[n]):>9.3f}"
                  f"{statistics.median(f for _, _, f in res[n]):>11.3f}")
        ratio = med["ketch"] / med["skopeo+umoci"]
        print(f"ketch / (skopeo+umoci) = {ratio:.2f}  (target ≤ 1.00: {'ok' if ratio <= 1.0 else 'MISSED'})")
        print(f"ketch / curl           = {med['ketch'] / med['curl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
