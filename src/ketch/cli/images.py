"""Image commands: ``pull``, ``images``, ``image …``, ``tag``, ``rmi``, ``load``, ``save``, ``import``, ``inspect``.

Thin layer over :mod:`ketch.image.store` and :mod:`ketch.image.transports`,
with Docker's output formats (``docker images`` table, ``Untagged:``/
``Deleted:`` lines, ``Loaded image:`` lines, ``docker image inspect`` JSON).
Only the standard library is imported at module level; the store is imported
inside the commands (start-up time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

HELPS = {
    "pull": "Download an image from a registry, or copy one in (oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE)",
    "images": "List images",
    "image": "Manage images (ls, rm, tag, pull, push, load, save, import, inspect, prune)",
    "tag": "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
    "rmi": "Remove one or more images",
    "load": "Load images from a tar archive (docker save or OCI archive) or STDIN",
    "save": "Save one or more images to a tar archive (docker-archive or oci-archive), streamed to STDOUT by default",
    "import": "Import the contents from a tarball to create a filesystem image",
    "inspect": "Return low-level information on images",
}
HELP = HELPS["images"]


def _store(paths):
    from ketch.image.store import ImageStore
    return ImageStore(paths)


# --------------------------------------------------------------------------
# Formatting helpers (go-units and text/tabwriter as the Docker CLI uses them)


def human_size(size: float) -> str:
    """Docker's ``HumanSizeWithPrecision(size, 3)``: decimal units, 3 significant digits (``7.8MB``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.3g}{units[i]}"


def human_duration(seconds: float) -> str:
    """Docker's ``units.HumanDuration`` (``2 weeks``, ``About an hour``)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def table(rows: list[list[str]]) -> str:
    """Columns as Go's ``tabwriter(minwidth=10, padding=3)``; the last column unpadded."""
    if not rows:
        return ""
    ncol = len(rows[0])
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(ncol - 1)]
    return "\n".join("".join(c.ljust(w) for c, w in zip(r, widths)) + r[-1] for r in rows)


def _print_error(msg: str) -> None:
    print(f"Error response from daemon: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------
# pull


def _bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def configure_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name (or ID)")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="copy every tagged image of an oci:/oci-archive: layout")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="pull the image for this platform from a multi-platform registry image")
    p.add_argument("--tls-verify", type=_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="check the registry's TLS certificate (default true; false also allows plain HTTP)")
    p.add_argument("source", metavar="SOURCE",
                   help="NAME[:TAG|@DIGEST] | docker://NAME[:TAG] | oci:DIR[:TAG] | oci-archive:FILE[:TAG] "
                        "| docker-archive:FILE[:NAME:TAG]")


def run_pull(args: argparse.Namespace, paths) -> int:
    from ketch.image.transports import parse_source, pull
    src = parse_source(args.source)
    if src.transport == "docker":
        return _pull_registry(args, paths, src.path)
    results = pull(_store(paths), args.source, all_tags=args.all_tags)
    for r in results:
        _report_pull(r, args.quiet)
    return 0


def _pull_registry(args: argparse.Namespace, paths, ref_text: str) -> int:
    """``docker pull`` output: progress lines while the layers arrive, then the name."""
    from ketch.image.progress import PlainProgress
    from ketch.image.reference import parse
    from ketch.image.transports import pull
    ref = parse(ref_text)
    printer = None
    if not args.quiet:
        given = args.source.removeprefix("docker://")
        if parse(given, default_tag=False).tag is None and ref.digest is None:
            print("Using default tag: latest", flush=True)
        printer = PlainProgress(sys.stdout)
        printer.header(ref)
    (r,) = pull(_store(paths), ref_text, all_tags=args.all_tags, platform=args.platform,
                tls_verify=args.tls_verify, progress=printer)
    if printer is not None:
        printer.footer(r, ref)
    print(r.names[0] if r.names else f"{ref.name}@{getattr(r, 'digest', r.image.manifest_digest)}")
    return 0


def _report_pull(r, quiet: bool) -> None:
    from ketch.image.reference import parse
    named = parse(r.names[0]) if r.names else None
    if not quiet:
        if named is not None:
            print(f"{named.tag}: Pulling from {named.path}")
        for digest, status in r.layers:
            print(f"{digest[7:19]}: {status}")
        print(f"Digest: {r.image.manifest_digest}")
        if named is not None:
            verb = "Image is up to date for" if r.up_to_date else "Downloaded newer image for"
            print(f"Status: {verb} {named.familiar}")
    print(r.names[0] if r.names else r.image.id)


# --------------------------------------------------------------------------
# images


def configure_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-a", "--all", action="store_true", help="show all images (there are no intermediate ones)")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def run_images(args: argparse.Namespace, paths) -> int:
    from fnmatch import fnmatchcase

    from ketch.image.reference import parse
    from ketch.image.store import created_time
    now = time.time()
    rows = [["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]]
    quiet = []
    for img in _store(paths).list():
        refs = [parse(n, default_tag=False) for n in img.names]
        if args.reference:
            refs = [r for r in refs if fnmatchcase(r.familiar_name, args.reference)
                    or fnmatchcase(r.familiar, args.reference)]
            if not refs:
                continue
        iid = img.id if args.no_trunc else img.short_id
        t = created_time(img.config.created)
        created = "N/A" if t is None else human_duration(max(0.0, now - t)) + " ago"
        for r in refs or [None]:
            repo, tag = (r.familiar_name, r.tag or "<none>") if r else ("<none>", "<none>")
            digest = [img.manifest_digest] if args.digests else []
            rows.append([repo, tag] + digest + [iid, created, human_size(img.size)])
            quiet.append(iid)
    if args.quiet:
        if quiet:
            print("\n".join(quiet))
    else:
        print(table(rows))
    return 0


# --------------------------------------------------------------------------
# tag


def configure_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def run_tag(args: argparse.Namespace, paths) -> int:
    _store(paths).tag(args.source, args.target)
    return 0


# --------------------------------------------------------------------------
# rmi


def configure_rmi(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="remove all names of the image even if in several repositories or used by a container")
    p.add_argument("--no-prune", action="store_true", help="accepted for compatibility; ketch has no parents")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def run_rmi(args: argparse.Namespace, paths) -> int:
    from ketch.errors import KetchError
    store = _store(paths)
    status = 0
    for ref in args.images:
        try:
            for what, name in store.remove(ref, force=args.force):
                print(f"{what}: {name}")
        except KetchError as e:
            _print_error(str(e))
            status = 1
    return status


# --------------------------------------------------------------------------
# load / import


def configure_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", metavar="FILE", help="read from tar archive file, instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the load output")


def run_load(args: argparse.Namespace, paths) -> int:
    from ketch.errors import KetchError
    from ketch.image.transports import load
    if args.input is None or args.input == "-":
        if sys.stdin.isatty():
            raise KetchError("requested load from stdin, but stdin is empty")
        results = load(_store(paths), sys.stdin.buffer)
    else:
        results = load(_store(paths), args.input)
    if not args.quiet:
        from ketch.image.reference import familiar
        for r in results:
            if r.names:
                for n in r.names:
                    print(f"Loaded image: {familiar(n)}")
            else:
                print(f"Loaded image ID: {r.image.id}")
    return 0


def configure_save(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (replaced atomically) instead of STDOUT")
    p.add_argument("--format", default="docker-archive", choices=["docker-archive", "oci-archive"],
                   help="archive format (default docker-archive, as docker save)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="NAME[:TAG], a repository (all its tags) or an ID")


def run_save(args: argparse.Namespace, paths) -> int:
    from ketch.errors import KetchError
    from ketch.image.save import save
    if args.output is None or args.output == "-":
        if sys.stdout.isatty():
            raise KetchError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        sys.stdout.flush()
        save(_store(paths), args.images, sys.stdout.buffer, args.format)
    else:
        save(_store(paths), args.images, args.output, args.format)
    return 0


def configure_push(p: argparse.ArgumentParser) -> None:
    from ketch.cli.registry import configure_push as configure
    configure(p)


def run_push(args: argparse.Namespace, paths) -> int:
    from ketch.cli.registry import run_push as run
    return run(args, paths)


def configure_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, "
                        "EXPOSE, VOLUME, STOPSIGNAL)")
    p.add_argument("-m", "--message", help="set the history comment of the imported image")
    p.add_argument("file", metavar="FILE|-", help="root filesystem tar (.tar, .tar.gz, .tar.zst) or - for stdin")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def run_import(args: argparse.Namespace, paths) -> int:
    from ketch.image.transports import import_rootfs
    from ketch.errors import ImageError
    from ketch.snapshot.overlay import Snapshotter

    src = sys.stdin.buffer if args.file == "-" else args.file
    store = _store(paths)
    r = import_rootfs(store, src, args.reference, message=args.message, changes=args.change)
    # Unpack now, as `docker import` extracts at import time: a tar with an
    # escaping or corrupt entry is refused here (naming the entry), not at
    # the first run, and the image it would have made is removed again.
    try:
        Snapshotter(paths.snapshots).ensure_image(store.content, r.image)
    except ImageError:
        store.remove(r.image.id, force=True)
        raise
    print(r.image.id)
    return 0


# --------------------------------------------------------------------------
# inspect


def inspect_json(img, manifest_size: int) -> dict:
    """``docker image inspect`` shape for one :class:`~ketch.image.store.Image`.

    ``manifest_size`` is the stored manifest blob's size in bytes (for
    ``Descriptor``, as Docker 25+ with the containerd store reports it).
    """
    raw = img.config_json
    cfg = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
           "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None,
           "Cmd": None, "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
           "OnBuild": None, "Labels": None}
    cfg.update(raw.get("config") or {})
    history = raw.get("history") or []
    out = {
        "Id": img.id,
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Parent": "",
        "Comment": (history[-1].get("comment", "") if history and isinstance(history[-1], dict) else ""),
        "Created": img.config.created or "",
        "DockerVersion": raw.get("docker_version", ""),
        "Author": img.config.author or "",
        "Config": cfg,
        "Architecture": img.config.architecture,
        "Os": img.config.os,
        "Size": img.size,
        "RootFS": {"Type": "layers", "Layers": list(img.config.diff_ids)},
        "Metadata": {"LastTagTime": img.added},
        "Descriptor": {"mediaType": img.manifest.mediaType, "digest": img.manifest_digest,
                       "size": manifest_size},
    }
    if img.config.variant:
        out["Variant"] = img.config.variant
    return out


def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format the output using a Go-template subset: "
                                          "{{.Field.Sub}}, {{json .Field}}")
    p.add_argument("--type", choices=["image"], default="image", help="only images are inspected here")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def run_inspect(args: argparse.Namespace, paths) -> int:
    from ketch.errors import KetchError
    store = _store(paths)
    docs, status = [], 0
    for ref in args.images:
        try:
            img = store.resolve(ref)
        except KetchError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
            continue
        docs.append(inspect_json(img, store.content.size(img.manifest_digest)))
    if args.format:
        for d in docs:
            print(render_format(args.format, d))
    else:
        print(json.dumps(docs, indent=4))
    return status


def _go_str(v) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + " ".join(_go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_str(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def render_format(fmt: str, doc: dict) -> str:
    """Render the subset of Go templates Docker users type: ``{{.A.B}}``, ``{{json .A}}``, ``{{.}}``.

    Raises :class:`~ketch.errors.UsageError` for other template actions.
    """
    import re

    from ketch.errors import UsageError

    def field(path: str):
        v = doc
        for part in [x for x in path.split(".") if x]:
            if not isinstance(v, dict) or part not in v:
                raise UsageError(f"template: map has no entry for key {part!r} in {fmt!r}")
            v = v[part]
        return v

    def sub(m: re.Match) -> str:
        action = m.group(1).strip()
        mm = re.fullmatch(r"(json\s+)?(\.[\w.]*)", action)
        if not mm:
            raise UsageError(f"unsupported format action {{{{{action}}}}}: only {{{{.Field}}}} and "
                             "{{json .Field}} are supported")
        v = field(mm.group(2))
        return json.dumps(v) if mm.group(1) else _go_str(v)

    return re.sub(r"\{\{(.*?)\}\}", sub, fmt.replace("\\n", "\n").replace("\\t", "\t"))


# --------------------------------------------------------------------------
# image (management command)

_IMAGE_SUBCOMMANDS = {
    "ls": "images", "list": "images", "rm": "rmi", "remove": "rmi", "tag": "tag", "pull": "pull",
    "load": "load", "save": "save", "push": "push", "import": "import", "inspect": "inspect", "prune": "prune",
}


def configure_image(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=type(p))
    sub.required = True
    for word, target in _IMAGE_SUBCOMMANDS.items():
        help_ = HELPS.get(target) or {"prune": "Remove unused images", "push": "Upload an image to a registry"}[target]
        sp = sub.add_parser(word, help=help_, description=help_)
        globals()["configure_" + target](sp)


def configure_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="remove all images without containers, not just dangling")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")


def run_prune(args: argparse.Namespace, paths) -> int:
    """``docker image prune``: remove dangling (or, with -a, all unused) images."""
    if not args.force:
        what = "all images without at least one container associated to them" if args.all else "all dangling images"
        print(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ", end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    store = _store(paths)
    deleted, reclaimed = [], 0
    before = {d: store.content.size(d) for d in store.content.digests()}
    removed: set[str] = set()
    for img in store.list():
        # Several stored manifests may share one image ID (the same image pulled
        # and loaded): removing the ID removes them all, once.
        if img.id in removed or (img.names and not args.all) or store.containers_using(img.id):
            continue
        removed.add(img.id)
        for what, name in store.remove(img.id, force=True):
            if what == "Deleted":
                deleted.append(name)
    after = set(store.content.digests())
    reclaimed = sum(s for d, s in before.items() if d not in after)
    if deleted:
        print("Deleted Images:")
        for d in deleted:
            print(f"deleted: {d}")
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def run_image(args: argparse.Namespace, paths) -> int:
    target = _IMAGE_SUBCOMMANDS[args.subcommand]
    return globals()["run_" + target](args, paths)
