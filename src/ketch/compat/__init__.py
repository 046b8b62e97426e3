"""Kernel compatibility of an image's userland (issue 7).

A container runs on the host's kernel, so whether a distribution's programs
work depends on what they ask of it.  This package answers that statically:

* :mod:`~ketch.compat.host` — the kernel's profile (version, vsyscall mode,
  config, seccomp/namespace/overlayfs/cgroup support) or a target profile;
* :mod:`~ketch.compat.tables` — syscall → first kernel (``data/``), C library
  fallbacks on ENOSYS, library functions → syscalls;
* :mod:`~ketch.compat.elf` — one ELF file's facts (pyelftools + capstone);
* :mod:`~ketch.compat.scan` — every ELF file of an image's merged layers,
  cached per layer;
* :mod:`~ketch.compat.verdict` — works / degraded / fails, with reasons.

:func:`check_image` ties them together for ``ketch compat``.
"""

from __future__ import annotations


def check_image(paths, ref: str, kernel: str | None = None, vsyscall: str | None = None,
                seccomp: str | None = "default"):
    """Scan image ``ref`` of the store at ``paths`` and judge it against the host kernel
    (or ``kernel``/``vsyscall`` overrides) under the ``seccomp`` profile.  Returns an
    :class:`~ketch.compat.verdict.ImageReport`.  Raises ValueError for bad
    overrides/profiles, ImageNotFound/InvalidReference for unknown images."""
    from ketch.compat.host import probe
    from ketch.compat.scan import scan_image
    from ketch.compat.verdict import judge_image, load_policy

    profile = probe().with_target(kernel, vsyscall)
    policy = load_policy(seccomp)
    image, scan = scan_image(paths, ref)
    name = image.repo_tags[0] if image.repo_tags else ref
    stats = {"files": scan.files, "bytes": scan.bytes, "seconds": round(scan.seconds, 3),
             "layers": scan.layers, "cached_layers": scan.cached_layers}
    return judge_image(name, scan.view, image.config.config, profile, policy, stats)
