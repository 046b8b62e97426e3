"""The engine's SQLite database: ``<paths.root>/ketch.db``.

One durable store for what the engine keeps about containers (and, later,
networks and volumes): WAL journal, so readers (``ps``, ``inspect``) never
block the writer (a container's supervisor recording an exit) and a process
killed mid-write leaves the last committed state; ``synchronous=NORMAL``
(durable across process crashes, the last commits may be lost on power
failure); a busy timeout so concurrent ``ketch`` commands queue instead of
failing.

The schema is created on first use (``CREATE TABLE IF NOT EXISTS``) and has
no migrations: a table gains columns only with a default, added by
:func:`connect` when missing.  Imports only the standard library
(the image store reads it too).
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    # The C module itself: `sqlite3` adds only adapters (and the import of
    # datetime), ~2 ms of every `ketch run` that ketch does not use.
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover - another Python implementation
    import sqlite3

FILENAME = "ketch.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    image           TEXT NOT NULL,           -- image ID (config digest)
    image_name      TEXT NOT NULL,           -- as the user wrote it
    created         TEXT NOT NULL,           -- RFC 3339, nanoseconds
    status          TEXT NOT NULL DEFAULT 'created',  -- as last recorded: created|running|restarting|exited|removing
    exit_code       INTEGER NOT NULL DEFAULT 0,
    pid             INTEGER NOT NULL DEFAULT 0,   -- host PID of the container's PID 1
    pid_start       INTEGER,                      -- its start time (clock ticks): guards PID reuse
    monitor_pid     INTEGER NOT NULL DEFAULT 0,   -- the process that reaps PID 1 (supervisor or foreground run)
    monitor_start   INTEGER,
    started_at      TEXT NOT NULL DEFAULT '',
    finished_at     TEXT NOT NULL DEFAULT '',
    restart_count   INTEGER NOT NULL DEFAULT 0,
    manually_stopped INTEGER NOT NULL DEFAULT 0,  -- stop/kill by the user: no restart policy applies
    oom_killed      INTEGER NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    config          TEXT NOT NULL DEFAULT '{}',   -- JSON: Docker's Config (Cmd, Env, StopSignal, ...)
    host_config     TEXT NOT NULL DEFAULT '{}',   -- JSON: Docker's HostConfig (AutoRemove, RestartPolicy, ...)
    mounts          TEXT NOT NULL DEFAULT '[]'    -- JSON: Docker's Mounts
);
CREATE INDEX IF NOT EXISTS containers_image ON containers(image);
"""


def path(root: Path | str) -> Path:
    return Path(root) / FILENAME


def connect(root: Path | str, *, create: bool = True) -> "sqlite3.Connection | None":
    """A connection to the database under ``root`` (``paths.root``), in
    autocommit mode (use ``with conn:`` or explicit ``BEGIN IMMEDIATE`` for
    transactions).  ``create`` False: None when the database does not exist
    yet (readers that must not create anything)."""
    p = path(root)
    if not create and not p.exists():
        return None
    fresh = not p.exists()
    if fresh:
        os.makedirs(p.parent, exist_ok=True)
    conn = sqlite3.connect(p, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    if fresh or conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
    conn.execute("PRAGMA synchronous=NORMAL")
    if fresh or not conn.execute("SELECT 1 FROM sqlite_master WHERE name='containers'").fetchone():
        conn.executescript(SCHEMA)
    return conn
