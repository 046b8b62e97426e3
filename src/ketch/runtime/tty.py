"""The caller's side of a container terminal: receive the pty master, relay bytes.

The container's init opens the pty inside its own devpts and sends the master
over a unix socket (runc's ``--console-socket`` protocol, SCM_RIGHTS).  The
caller puts its own terminal in raw mode, copies its stdin to the master and
the master to its stdout, and forwards window-size changes (SIGWINCH →
TIOCSWINSZ), so Ctrl-C reaches the container's foreground process group
through the pty's line discipline, as with ``docker run -it``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import tty


def recv_console(sock: socket.socket) -> int:
    """Receive the pty master fd sent by the container's init.
    Raises OSError if the peer closed without sending one."""
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    if not fds:
        raise OSError(errno.EPIPE, "container closed the console socket without sending a terminal")
    return fds[0]


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on ``fd``, or None if it is not one."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def set_window_size(fd: int, size: tuple[int, int]) -> None:
    """TIOCSWINSZ on ``fd``: the kernel sends SIGWINCH to the pty's foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def relay(master: int, stdin: int | None, stdout: int) -> None:
    """Copy ``stdin`` → ``master`` and ``master`` → ``stdout`` until the
    container side of the pty closes (EIO/EOF on the master) or ``stdout``'s
    reader goes away (EPIPE).

    ``stdin`` None: input not attached (``-t`` without ``-i``).  The caller's
    terminal (if ``stdin`` is one) is raw for the duration and restored after;
    SIGWINCH on the caller resizes the pty.
    """
    saved = None
    in_fd = stdin
    if stdin is not None and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    src_tty = stdin if stdin is not None and os.isatty(stdin) else (stdout if os.isatty(stdout) else None)

    def on_winch(_sig, _frm):
        size = window_size(src_tty) if src_tty is not None else None
        if size:
            try:
                set_window_size(master, size)
            except OSError:
                pass

    old_winch = signal.signal(signal.SIGWINCH, on_winch)
    try:
        readers = [master] + ([stdin] if stdin is not None else [])
        while True:
            try:
                ready, _, _ = select.select(readers, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:
                        break
                    raise
                if not data:
                    break
                try:
                    _write_all(stdout, data)
                except BrokenPipeError:
                    # Our reader went away (`ketch run -t … | head`): stop as a
                    # closed terminal would; the caller closes the master, which
                    # hangs up the container's terminal.
                    break
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    readers.remove(stdin)
                    # Like a user typing the EOF character (^D): the container sees end of input.
                    _write_all(master, termios.tcgetattr(master)[6][termios.VEOF])
                    stdin = None
                else:
                    _write_all(master, data)
    finally:
        signal.signal(signal.SIGWINCH, old_winch)
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
