"""The one exception tree of ketch.

Every error ketch raises on purpose is a :class:`KetchError`; the CLI prints
``str(err)`` as a single line prefixed with the command name and exits with
:attr:`KetchError.exit_code` (125 for ketch's own errors, as Docker does).
Imports nothing but the standard library so every layer may use it.
"""

from __future__ import annotations

import errno as _errno
import os


class KetchError(Exception):
    """Base of every deliberate ketch error; ``str()`` is one line for the user."""

    exit_code = 125


class UsageError(KetchError):
    """Bad command line: unknown flag, missing argument, malformed value."""


class InvalidReference(KetchError):
    """A malformed image reference (``name[:tag][@digest]``)."""


class ImageError(KetchError):
    """An image problem: unknown image, corrupt or missing blob, bad manifest."""


class ImageNotFound(ImageError):
    """No image of that name in the local store."""


class DigestMismatch(ImageError):
    """Content whose sha256 or size differs from the descriptor that named it."""


class LayerError(ImageError):
    """A layer tar that cannot be applied safely (escaping entry, bad type)."""


class SpecError(KetchError):
    """An invalid OCI runtime spec (config.json) or option that would produce one."""


class ContainerStateError(KetchError):
    """An operation not allowed in the container's current state, or unknown container."""


class ContainerNotFound(ContainerStateError):
    """No container of that name or ID."""


class ExecError(KetchError):
    """The container's process could not be executed.

    ``exit_code`` follows Docker: 127 when the executable is not found,
    126 when it exists but cannot be executed.
    """

    def __init__(self, message: str, exit_code: int = 126):
        super().__init__(message)
        self.exit_code = exit_code


class SyscallError(KetchError, OSError):
    """A failed system call: ``errno``, the ``call`` name and the ``path`` involved.

    Raised by the wrappers in :mod:`ketch.linux`; ``str()`` reads like
    ``mount /x: Operation not permitted``.
    """

    def __init__(self, err: int, call: str, path: str | None = None):
        OSError.__init__(self, err, os.strerror(err))
        self.call = call
        self.path = path

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{self.call}{where}: {os.strerror(self.errno)} ({name})"
