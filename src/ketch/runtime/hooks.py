"""Hooks (config.md "POSIX-platform Hooks"): programs the runtime runs at
points of the lifecycle, each with the container's state JSON on stdin.

Where ketch runs each, as the spec names them:

- ``prestart`` (deprecated) and ``createRuntime``: by ``create``, in the
  runtime's namespaces, once the container's mounts are made and before
  pivot_root (the init asks over the sync channel and waits);
- ``createContainer``: by the init, in the container's namespaces, after
  those, before pivot_root (so ``path`` is a host path);
- ``startContainer``: by the init during ``start``, after pivot_root (a path
  in the container), before the user's program;
- ``poststart``: by ``start`` after the program was started; ``poststop`` by
  ``delete``.  A failure of these two is a warning on stderr, the lifecycle
  goes on (the spec's rule).

Only ``os``, ``signal`` and ``time`` are used: the init runs hooks after
pivot_root, where nothing can be imported.
"""

from __future__ import annotations

import os
import signal
import time

from ketch.errors import KetchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ketch.oci.runtime import Hook


def run(hooks: tuple[Hook, ...], name: str, state: bytes) -> None:
    """Run ``hooks`` in order; raise KetchError on the first that fails or times out."""
    for h in hooks:
        run_one(h, name, state)


def run_one(h: Hook, name: str, state: bytes) -> None:
    """fork + execve ``h.path`` with ``h.args`` (argv, ``args[0]`` included) and
    only ``h.env``; ``state`` on its stdin; wait at most ``h.timeout`` seconds."""
    argv = list(h.args) or [h.path]
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in h.env)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.dup2(r, 0)
            if r != 0:
                os.close(r)
            os.execve(h.path, argv, env)
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(2, f"{name} hook {h.path}: {getattr(e, 'strerror', e)}\n".encode())
            finally:
                os._exit(127)
    os.close(r)
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a hook need not read its stdin
    try:
        try:
            os.write(w, state)
        except OSError:
            pass
        finally:
            os.close(w)
    finally:
        signal.signal(signal.SIGPIPE, old)
    deadline = None if h.timeout is None else time.monotonic() + h.timeout
    delay = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline is not None and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise KetchError(f"{name} hook {h.path} timed out after {h.timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise KetchError(f"{name} hook {h.path} {how}")
