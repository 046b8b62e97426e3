"""Container networking: CNI bridge networks, published ports, names.

The engine's three calls (everything else is :mod:`.manager`):

- :func:`attach_container` before the container's namespaces are made (and
  before ketch enters its private mount namespace): pins a network namespace
  and runs CNI ADD; the returned :class:`~.manager.Attachment` gives the
  address for ``/etc/hosts`` and puts the namespace's path into the spec;
- :meth:`~.manager.Attachment.joined` once the container's ``hosts`` file
  exists: name resolution on user networks;
- :func:`detach_container` when the container has exited, and on ``rm``:
  CNI DEL and unpinning, idempotent.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from ketch.paths import Paths

    from .manager import Attachment


def attach_container(paths: Paths, cid: str, cdir: Path, name: str, opts: Any,
                     exposed: tuple[str, ...] = ()) -> Attachment:
    """See :func:`ketch.network.manager.attach`."""
    mode = getattr(opts, "network", None)
    if mode in ("none", "host") and not getattr(opts, "publish", ()) and not getattr(opts, "publish_all", False):
        from .attachment import Attachment  # nothing to set up: CNI and iptables stay unimported
        return Attachment(mode)
    from .manager import attach
    return attach(paths, cid, cdir, name, opts, exposed)


def detach_container(paths: Paths, cdir: Path, *, warn: bool = False) -> None:
    """Undo the container's network setup (:func:`ketch.network.manager.detach`);
    a no-op when it has none.  With ``warn``, an error is printed instead of
    raised (clean-up after the container's exit must not hide its status)."""
    from pathlib import Path as _P
    if not (_P(cdir) / "network.json").exists():
        return
    from .cni import NetworkError
    from .manager import detach
    try:
        detach(paths, cdir)
    except NetworkError as e:
        if not warn:
            raise
        print(f"ketch: warning: network clean-up: {e}", file=sys.stderr)
