"""Container records in the engine's SQLite database (:mod:`ketch.db`).

A record holds what Docker's ``inspect`` shows (Config, HostConfig, State)
plus what the engine needs to tell the truth about a container after any
process was killed: the host PID of the container's PID 1 and of its
*monitor* (the detached supervisor, or the foreground ``ketch run`` that
reaps PID 1), each with its start time from ``/proc/PID/stat`` so a reused
PID is never mistaken for them.

The recorded status is what the monitor last wrote; :meth:`ContainerRecord.state`
derives the status that is true now (the lifecycle rules, in one place):

* recorded ``running``/``restarting`` and the monitor alive: as recorded —
  the monitor reaps PID 1 and records its exit within milliseconds;
* recorded ``running`` and the monitor gone (``kill -9``): ``running`` while
  PID 1 lives, else ``exited`` with exit code 255 (nobody saw the status;
  containerd reports lost tasks the same way);
* anything else: as recorded.

Names are unique by the table's constraint: two ``ketch run --name x`` racing
get one container and one Docker "Conflict" error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields

from ketch.errors import ContainerNotFound, ContainerStateError
from ketch.linux.proc import start_time as proc_start_time
from ketch.paths import Paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

_ADJECTIVES = ("admiring", "brave", "calm", "dazzling", "eager", "focused", "gallant", "happy",
               "jolly", "keen", "loving", "modest", "nifty", "optimistic", "quirky", "serene",
               "tender", "upbeat", "vibrant", "wizardly", "youthful", "zealous")
_NOUNS = ("archimedes", "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper",
          "kepler", "lovelace", "meitner", "newton", "noether", "pascal", "ritchie", "shannon",
          "thompson", "turing", "wozniak", "yalow")

LOST_EXIT_CODE = 255  # PID 1 ended while nobody was watching


def now_iso() -> str:
    """The current UTC time in Docker's RFC 3339 form with nanoseconds."""
    t = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 10**9)) + f".{t % 10**9:09d}Z"


def alive(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs."""
    return bool(pid) and start is not None and proc_start_time(pid) == start


# column name -> record attribute
_COLUMNS = {
    "id": "Id", "name": "Name", "image": "Image", "image_name": "ImageName", "created": "Created",
    "status": "Status", "exit_code": "ExitCode", "pid": "Pid", "pid_start": "PidStart",
    "monitor_pid": "MonitorPid", "monitor_start": "MonitorStart", "started_at": "StartedAt",
    "finished_at": "FinishedAt", "restart_count": "RestartCount", "manually_stopped": "ManuallyStopped",
    "oom_killed": "OOMKilled", "error": "Error", "config": "Config", "host_config": "HostConfig",
    "mounts": "Mounts",
}
_JSON_COLUMNS = ("config", "host_config", "mounts")
_BOOL_COLUMNS = ("manually_stopped", "oom_killed")


@dataclass
class ContainerRecord:
    """What the engine remembers of a container (Docker's inspect fields)."""

    Id: str
    Name: str
    Image: str             # image ID (config digest)
    ImageName: str         # as the user wrote it
    Created: str
    Status: str = "created"  # as recorded: created | running | restarting | exited | removing
    ExitCode: int = 0
    Pid: int = 0
    PidStart: int | None = None
    MonitorPid: int = 0
    MonitorStart: int | None = None
    StartedAt: str = ""
    FinishedAt: str = ""
    RestartCount: int = 0
    ManuallyStopped: bool = False
    OOMKilled: bool = False
    Error: str = ""
    Config: dict = field(default_factory=dict)
    HostConfig: dict = field(default_factory=dict)
    Mounts: list = field(default_factory=list)

    @property
    def AutoRemove(self) -> bool:
        return bool(self.HostConfig.get("AutoRemove"))

    def pid1_alive(self) -> bool:
        return alive(self.Pid, self.PidStart)

    def monitor_alive(self) -> bool:
        return alive(self.MonitorPid, self.MonitorStart)

    def state(self) -> tuple[str, int]:
        """(status, exit code) true now; see the module docstring."""
        if self.Status in ("running", "restarting"):
            if self.monitor_alive():
                return self.Status, self.ExitCode
            if self.Status == "running" and self.pid1_alive():
                return "running", 0
            return "exited", LOST_EXIT_CODE
        return self.Status, self.ExitCode

    @property
    def running(self) -> bool:
        return self.state()[0] in ("running", "restarting")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> "ContainerRecord":
        kw = {}
        for col, attr in _COLUMNS.items():
            v = row[col]
            if col in _JSON_COLUMNS:
                v = json.loads(v)
            elif col in _BOOL_COLUMNS:
                v = bool(v)
            kw[attr] = v
        return cls(**kw)


class ContainerStore:
    """Container records in ``paths.root``'s database; the container's files
    (bundle, hosts files, logs) in ``paths.containers/<id>/``."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.root = paths.containers
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            from ketch import db
            self._conn = db.connect(self.paths.root)
            self._conn.row_factory = db.sqlite3.Row
        return self._conn

    def dir(self, cid: str) -> os.PathLike:
        return self.root / cid

    def log_path(self, cid: str) -> os.PathLike:
        """Docker's json-file log of the container."""
        return self.root / cid / f"{cid}-json.log"

    # ------------------------------------------------------------------ create
    def create(self, image_id: str, image_name: str, name: str | None, *, config: dict | None = None,
               host_config: dict | None = None, mounts: list | None = None,
               auto_remove: bool | None = None) -> ContainerRecord:
        """Reserve an ID and a unique name, write the record, make its directory.
        Raises ContainerStateError (Docker's "Conflict") if ``name`` is taken."""
        from ketch.db import sqlite3

        host_config = dict(host_config or {})
        if auto_remove is not None:
            host_config["AutoRemove"] = auto_remove
        cid = os.urandom(32).hex()
        rec = ContainerRecord(Id=cid, Name=name or "", Image=image_id, ImageName=image_name,
                              Created=now_iso(), Config=config or {}, HostConfig=host_config,
                              Mounts=mounts or [])
        for attempt in range(20):
            if not name:
                rec.Name = _random_name(attempt)
            try:
                self._insert(rec)
                break
            except sqlite3.IntegrityError:
                if name:
                    other = self.conn.execute("SELECT id FROM containers WHERE name=?", (name,)).fetchone()
                    raise ContainerStateError(
                        f'Conflict. The container name "/{name}" is already in use by container '
                        f'"{other[0] if other else "?"}". You have to remove (or rename) that container '
                        "to be able to reuse that name.") from None
        else:
            raise ContainerStateError("could not find a free random container name")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.dir(cid).mkdir(mode=0o711)
        except BaseException:
            self.delete(cid)
            raise
        return rec

    def _insert(self, rec: ContainerRecord) -> None:
        cols = list(_COLUMNS)
        vals = [_to_db(c, getattr(rec, _COLUMNS[c])) for c in cols]
        self.conn.execute(f"INSERT INTO containers ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", vals)

    # ------------------------------------------------------------------ update
    def update(self, cid: str, **changes: Any) -> None:
        """Set record attributes (``Status="running", Pid=...``) in one statement."""
        cols = {a: c for c, a in _COLUMNS.items()}
        sets = ", ".join(f"{cols[k]}=?" for k in changes)
        self.conn.execute(f"UPDATE containers SET {sets} WHERE id=?",
                          [*(_to_db(cols[k], v) for k, v in changes.items()), cid])

    def save(self, rec: ContainerRecord) -> None:
        """Write every mutable field of ``rec``."""
        self.update(rec.Id, **{a: getattr(rec, a) for c, a in _COLUMNS.items()
                               if c not in ("id", "name", "image", "image_name", "created")})

    def delete(self, cid: str) -> None:
        self.conn.execute("DELETE FROM containers WHERE id=?", (cid,))

    # ------------------------------------------------------------------ read
    def load(self, cid: str) -> ContainerRecord:
        row = self.conn.execute("SELECT * FROM containers WHERE id=?", (cid,)).fetchone()
        if row is None:
            raise ContainerNotFound(f"No such container: {cid}")
        return ContainerRecord._from_row(row)

    def list(self) -> list[ContainerRecord]:
        """Every record, newest first."""
        rows = self.conn.execute("SELECT * FROM containers ORDER BY created DESC").fetchall()
        return [ContainerRecord._from_row(r) for r in rows]

    def find(self, ref: str) -> ContainerRecord:
        """By full ID, name, or unique ID prefix (Docker's lookup order).
        Raises ContainerNotFound, ContainerStateError (ambiguous prefix)."""
        ref_name = ref[1:] if ref.startswith("/") else ref
        row = self.conn.execute("SELECT * FROM containers WHERE id=? OR name=? ORDER BY id=? DESC LIMIT 1",
                                (ref, ref_name, ref)).fetchone()
        if row is not None:
            return ContainerRecord._from_row(row)
        if ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.conn.execute("SELECT * FROM containers WHERE id LIKE ? LIMIT 2", (ref + "%",)).fetchall()
            if len(rows) == 1:
                return ContainerRecord._from_row(rows[0])
            if len(rows) > 1:
                raise ContainerStateError(f"multiple containers match the prefix {ref}")
        raise ContainerNotFound(f"No such container: {ref}")


def _to_db(col: str, v: Any) -> Any:
    if col in _JSON_COLUMNS:
        return json.dumps(v)
    if col in _BOOL_COLUMNS:
        return int(bool(v))
    return v


def _random_name(attempt: int) -> str:
    import random
    rng = random.SystemRandom()
    name = f"{rng.choice(_ADJECTIVES)}_{rng.choice(_NOUNS)}"
    return name if attempt < 3 else f"{name}{rng.randint(0, 99)}"
