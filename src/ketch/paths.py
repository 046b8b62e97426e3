"""Where ketch keeps things on the host.

Everything lives under two directories so tests can isolate themselves:
``root`` (persistent: content store, snapshots, containers; podman's
``--root``, default ``/var/lib/ketch``) and ``runroot`` (volatile runtime
state; podman's ``--runroot``, default ``/run/ketch``).  ``$KETCH_ROOT`` and
``$KETCH_RUNROOT`` override the defaults; command-line flags override those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "/var/lib/ketch"
DEFAULT_RUNROOT = "/run/ketch"


@dataclass(frozen=True)
class Paths:
    """The engine's directories; all derived paths are properties."""

    root: Path
    runroot: Path

    @classmethod
    def from_env(cls, root: str | None = None, runroot: str | None = None) -> "Paths":
        """Resolve from explicit values, then ``$KETCH_ROOT``/``$KETCH_RUNROOT``, then defaults."""
        r = root or os.environ.get("KETCH_ROOT") or DEFAULT_ROOT
        rr = runroot or os.environ.get("KETCH_RUNROOT") or DEFAULT_RUNROOT
        return cls(Path(os.path.abspath(r)), Path(os.path.abspath(rr)))

    @property
    def content(self) -> Path:
        """OCI image layout holding every blob (``blobs/sha256/<hex>``)."""
        return self.root / "content"

    @property
    def images(self) -> Path:
        """JSON file mapping image names to manifest digests."""
        return self.root / "images.json"

    @property
    def snapshots(self) -> Path:
        """Unpacked layers (one directory per chain ID) and container upper dirs."""
        return self.root / "snapshots"

    @property
    def containers(self) -> Path:
        """One directory per container: bundle (config.json, rootfs), hosts files, record."""
        return self.root / "containers"

    @property
    def runtime_state(self) -> Path:
        """The runtime's state directory (runc's ``--root``): one dir per container."""
        return self.runroot / "runtime"

    @property
    def lock(self) -> Path:
        """Lock file serializing changes to the image names and snapshots."""
        return self.root / "lock"
