"""The typed parent↔child channel of container creation.

A ``SOCK_SEQPACKET`` socketpair: each message is one datagram holding one
JSON object with a ``type``.  The sequence (runc's ``sync.go`` plays the same
role)::

    parent (create)              intermediate                init (PID 1 inside)
      fork ───────────────────▶  setns / unshare
                                  fork ──────────────────────▶
      ◀── Pid{pid} ────────────   exit 0
      waitpid(intermediate)                                   mounts
      ◀── Hooks{} ─────────── (only with prestart/createRuntime hooks)
      run prestart, createRuntime
      ── Resume{} ───────────────────────────────────────────▶ createContainer hooks,
                                                              pivot_root, hostname, console
      ◀── Ready{} or Error{message, exit_code} ───────────────
      write state.json                                        open(exec.fifo, O_WRONLY)
    start: open(exec.fifo, O_RDONLY) ─────────────────────────▶ execve(process)

Both children write to the same socket, so ``Pid`` and the init's ``Ready``
or ``Error`` can arrive in either order: the parent reads until it has both
(or EOF).  When the caller reaps PID 1 itself and needs no user or time
namespace, there is no intermediate: the parent forks PID 1 directly into a
new PID namespace (``Runtime._spawn``), knows its PID from ``fork`` and reads
only ``Ready`` or ``Error``.  The init's end is ``SOCK_CLOEXEC``: after
``execve`` the parent reads EOF.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

from ketch.errors import ExecError, KetchError

_MAX = 65536


@dataclass(frozen=True)
class Pid:
    """The container init's PID in the caller's PID namespace."""
    pid: int


@dataclass(frozen=True)
class Ready:
    """Init finished setting up and is waiting on the exec fifo."""


@dataclass(frozen=True)
class Hooks:
    """Init has made the mounts: the parent runs prestart and createRuntime hooks now."""


@dataclass(frozen=True)
class Resume:
    """The parent's hooks succeeded: init goes on (to pivot_root)."""


@dataclass(frozen=True)
class Error:
    """Init failed; ``exit_code`` is 126/127 for exec problems, 125 otherwise."""
    message: str
    exit_code: int = 125


Message = Pid | Ready | Error | Hooks | Resume
_TYPES: dict[str, type] = {"pid": Pid, "ready": Ready, "error": Error, "hooks": Hooks, "resume": Resume}
_NAMES = {v: k for k, v in _TYPES.items()}


class Channel:
    """One end of the sync socketpair; ``send`` and ``recv`` typed messages."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    @staticmethod
    def pair() -> tuple["Channel", "Channel"]:
        """(parent end, child end), both close-on-exec."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return Channel(a), Channel(b)

    def send(self, msg: Message) -> None:
        body = dict(msg.__dict__)
        body["type"] = _NAMES[type(msg)]
        self.sock.send(json.dumps(body).encode())

    def recv(self) -> Message | None:
        """The next message, or None at EOF (the other end closed or exec'd).
        Raises KetchError on a malformed message."""
        data = self.sock.recv(_MAX)
        if not data:
            return None
        try:
            body = json.loads(data)
            cls = _TYPES[body.pop("type")]
            return cls(**body)
        except (ValueError, KeyError, TypeError) as e:
            raise KetchError(f"container init sent a malformed message: {data[:80]!r}") from e

    def close(self) -> None:
        self.sock.close()


def raise_error(msg: Error) -> None:
    """Turn an init ``Error`` into the exception the CLI reports."""
    if msg.exit_code in (126, 127):
        raise ExecError(msg.message, msg.exit_code)
    raise KetchError(msg.message)
