"""``ketch compat IMAGE``: will this image's userland work on this kernel?

A report, so it exits 0 whatever the verdicts; 125 for bad input (unknown
image, malformed ``--kernel``, unreadable ``--seccomp`` profile).  The
library work is :mod:`ketch.compat`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

HELPS = {"compat": "Predict whether an image's programs work on this (or a target) kernel"}
HELP = HELPS["compat"]


def configure_compat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", metavar="X.Y[.Z]", help="judge against this kernel version instead of the host's")
    p.add_argument("--vsyscall", choices=("emulate", "xonly", "none"),
                   help="judge against this vsyscall mode instead of the host's")
    p.add_argument("--seccomp", metavar="default|unconfined|FILE", default="default",
                   help="seccomp profile the container would run under (a Docker JSON profile file)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--all", action="store_true", help="list every ELF file, not only the ones with problems")
    p.add_argument("image", metavar="IMAGE")


def run_compat(args: argparse.Namespace, paths) -> int:
    from ketch.compat import check_image
    from ketch.errors import UsageError
    try:
        report = check_image(paths, args.image, kernel=args.kernel, vsyscall=args.vsyscall,
                             seccomp=args.seccomp)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        json.dump(report.to_json(all_files=args.all), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(format_report(report, args.all))
    return 0


def format_report(report, all_files: bool = False) -> str:
    k = report.kernel
    out = [f"{report.image}: {report.verdict.upper()}" + (f" — {report.reason}" if report.reason else "")]
    if report.remedy:
        out.append(f"  remedy: {report.remedy}")
    kname = "target" if k.target else "host"
    extra = []
    if k.config_source:
        extra.append(f"config {k.config_source}")
    ns = ",".join(n for n in ("user", "cgroup", "time") if k.namespaces.get(n))
    out.append(f"kernel: {kname} {k.version_str} ({k.release}), vsyscall={k.vsyscall or 'unknown'}"
               f" ({k.vsyscall_source}), seccomp {'yes' if k.seccomp else 'no' if k.seccomp is False else '?'},"
               f" namespaces {ns or '-'}, overlayfs {'yes' if k.overlayfs else 'no'},"
               f" cgroup {k.cgroup or '?'}" + (f", {', '.join(extra)}" if extra else ""))
    pol = report.policy
    out.append(f"seccomp profile: {pol.name}" + (f" ({pol.note})" if pol.note else "")
               + (f", defaultAction {pol.default_action}" if pol.default_action else ""))
    lib = report.libc
    out.append(f"libc: {lib.label()}" + (f" ({lib.path}" + (f", ABI tag {lib.abi_tag}" if lib.abi_tag else "")
                                          + ")" if lib.path else "")
               + f"   entrypoint: {report.entrypoint or '-'}")
    c = report.counts()
    s = report.scan
    out.append(f"programs: {c['works']} work, {c['degraded']} degraded, {c['fails']} fail"
               f"   (scanned {s.get('files', 0)} ELF files, {s.get('bytes', 0) / 1e6:.1f} MB, in"
               f" {s.get('seconds', 0):.2f} s; {s.get('cached_layers', 0)}/{s.get('layers', 0)} layers cached)")
    rows = [v for v in report.binaries if all_files or v.verdict != "works" or v.path == report.entrypoint]
    if all_files:
        rows += report.libraries
    else:
        rows += [v for v in report.libraries if v.verdict != "works"]
    if rows:
        out.append("")
        w0 = min(48, max(len("BINARY"), *(len(v.path) + (len(f" (+{len(v.links)} links)") if v.links else 0)
                                          for v in rows)))
        w1 = max(len("LIBC"), *(len(v.libc) for v in rows))
        out.append(f"{'BINARY':<{w0}}  {'LIBC':<{w1}}  {'VERDICT':<8}  REASON")
        for v in rows:
            reason = v.reason.split(": ", 1)[1] if ": " in v.reason else v.reason
            path = v.path + (f" (+{len(v.links)} links)" if v.links else "")
            out.append(f"{path:<{w0}}  {v.libc:<{w1}}  {v.verdict:<8}  {reason}")
    return "\n".join(out) + "\n"
