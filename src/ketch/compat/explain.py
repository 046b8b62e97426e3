"""Why did a foreground container die by SIGSEGV, SIGILL or SIGSYS? (issue 7, point 2)

Called by ``ketch run`` only after the container ended with exit 132, 139 or
159, so nothing here (nor pyelftools/capstone) is imported on the normal run
path.  Only the entrypoint is analysed — the process's ``args[0]`` resolved
in the container's root (PATH lookup, symlinks followed inside the root, a
``#!`` script's interpreter) — together with the C library it runs on,
which holds e.g. old glibc's vsyscall ``time()``.  When every layer of the
image was scanned before (``ketch compat``), the cached per-layer facts are
used instead of reading any file.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

SIGNALS = {132: "SIGILL", 139: "SIGSEGV", 159: "SIGSYS"}
# Words in a finding's reason that tie it to the signal seen.
_MARKS = {"SIGSEGV": ("SIGSEGV", "vsyscall", "kernel too old"), "SIGSYS": ("SIGSYS",), "SIGILL": ("SIGILL",)}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where a dynamic glibc program's libc.so.6 is looked for when the layers were never scanned.
_GLIBC_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
               "usr/lib/aarch64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")


def resolve_in_root(root: Path, path: str) -> str | None:
    """``path`` (absolute within ``root``) with symlinks followed inside ``root``
    (:func:`ketch.fs.secure_join`); the relpath of a regular file, or None."""
    from ketch.fs import secure_join
    try:
        full = secure_join(root, path)
    except OSError:  # a symlink loop
        return None
    rel = os.path.relpath(full, os.path.abspath(root))
    return rel if rel != "." and os.path.isfile(full) else None


def which_in_root(root: Path, name: str, env: list[str] | tuple[str, ...] = ()) -> str | None:
    """``name`` looked up as execvp would inside ``root``."""
    if "/" in name:
        return resolve_in_root(root, name)
    path = next((kv[5:] for kv in env if kv.startswith("PATH=")), DEFAULT_PATH)
    for d in path.split(":"):
        rel = resolve_in_root(root, posixpath.join(d or "/", name))
        if rel is not None:
            return rel
    return None


def _shebang(root: Path, rel: str) -> str | None:
    try:
        with open(os.path.join(root, rel), "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    parts = head[2:].split(b"\n", 1)[0].split()
    return parts[0].decode(errors="replace") if parts else None


def _cached_view(paths, chain_ids: list[str]):
    """The merged view from the per-layer caches of ``ketch compat``, if every layer has one."""
    from ketch.compat.scan import MergedView, load_layer
    cache_dir = paths.root / "compat"
    caches = [cache_dir / (c.split(":", 1)[-1] + ".json") for c in chain_ids]
    if not chain_ids or not all(c.is_file() for c in caches):
        return None
    layers = [load_layer(Path("/nonexistent"), c) for c in caches]
    if not all(s.cached for s in layers):
        return None
    return MergedView.merge(layers)


def _entry_facts(root: Path, rel: str) -> dict:
    """``{relpath: ElfInfo}`` for the entrypoint and the C library it is linked against."""
    from ketch.compat.elf import scan_file
    out = {}
    info = scan_file(os.path.join(root, rel))
    if info is None:
        return out
    out[rel] = info
    if info.interp:
        cands = []
        if "libc.so.6" in info.needed:
            cands = [f"{d}/libc.so.6" for d in _GLIBC_DIRS]
        cands.append(info.interp)            # musl: the interpreter is the C library
        for c in cands:
            lrel = resolve_in_root(root, c)
            if lrel and lrel not in out:
                linfo = scan_file(os.path.join(root, lrel))
                if linfo is not None and linfo.kind == "library":
                    out[lrel] = linfo
                    if linfo.soname == "libc.so.6" or linfo.libc == "musl":
                        break
    return out


def explain_exit(code: int, image: str, argv: list[str], env: list[str], rootfs: Path,
                 paths=None, chain_ids: list[str] | None = None) -> list[str]:
    """Lines to print (without newlines) for a container that ended with ``code``;
    [] for codes that are not 132/139/159.  Never raises for bad input files."""
    sig = SIGNALS.get(code)
    if sig is None:
        return []
    head = f"ketch: the container's process was killed by {sig} (exit {code})"
    generic = [f"{head}; run 'ketch compat {image}' to check the image's binaries against this kernel"]
    if not argv:
        return generic
    try:
        cause = _likely_cause(sig, argv, env, Path(rootfs), paths, chain_ids or [])
    except Exception:       # an explanation must never turn into a failure of its own
        cause = None
    if cause is None:
        return generic
    what, remedy = cause
    lines = [f"{head}; likely cause: {what} — see 'ketch compat {image}'"]
    if remedy:
        lines.append(f"ketch: remedy: {remedy}")
    return lines


def _likely_cause(sig: str, argv, env, root: Path, paths, chain_ids) -> tuple[str, str] | None:
    from ketch.compat.host import probe
    from ketch.compat.verdict import Judge, load_policy

    rel = which_in_root(root, argv[0], env)
    if rel is None:
        return None
    interp = _shebang(root, rel)
    if interp:
        rel = resolve_in_root(root, interp)
        if rel is None:
            return None
    view = _cached_view(paths, chain_ids) if paths is not None else None
    if view is not None and rel in view.elf:
        elf = view.elf
        exists = lambda p: view.resolve(p) is not None   # noqa: E731
    else:
        elf = _entry_facts(root, rel)
        exists = lambda p: resolve_in_root(root, p) is not None   # noqa: E731
    info = elf.get(rel)
    if info is None:
        return None
    judge = Judge(probe(), load_policy("default"), elf, interp_exists=exists)
    v = judge.judge("/" + rel, info)
    marks = _MARKS[sig]
    for f in v.findings:
        if f["verdict"] == "fails" and any(m in f["reason"] for m in marks):
            reason = f["reason"].split(" → ", 1)[0]
            return f"/{rel} {reason}", f["remedy"]
    return None
