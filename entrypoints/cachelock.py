"""Exclusive locks on a volume that several containers share (two machines training `--expert both`).

flock() is not honoured across machines by most network volumes, but creating a file with O_CREAT|O_EXCL is
atomic on them, so a lock is a file created that way, holding its owner (run id, host, pid, time). The holder
touches it every HEARTBEAT_S seconds while it works, which lets a waiter tell a live holder, however long its
step takes, from one that vanished with its machine. A lock is stale, and broken, when its holder is a dead
process on this same machine, or when it has not been touched for `stale_after` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

HEARTBEAT_S = 30.0
REPORT_S = 30.0  # how often a waiter says it is still waiting
POLL_S = 0.5
BREAK_GUARD_S = 60.0  # a breaker that died mid-break leaves its guard file; it is stale after this


class Cancelled(Exception):
    """Waiting was given up because the run is stopping."""


class Busy(Exception):
    """The lock stayed with a live holder for longer than the caller would wait."""


def _read_text(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return ""


def machine_id() -> str:
    """Host name, boot and pid namespace: only where all three match is a pid check meaningful."""
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return "/".join((socket.gethostname(), _read_text("/proc/sys/kernel/random/boot_id"), namespace))


def _start_time(pid: int) -> str:
    # Field 22 of /proc/<pid>/stat: tells a reused pid (a restarted container is often pid 1 again) from ours.
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if ")" in stat else ""


def new_owner(run_id: str) -> dict:
    pid = os.getpid()
    return {"run_id": run_id, "host": socket.gethostname(), "machine": machine_id(), "pid": pid,
            "pid_start": _start_time(pid), "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}


def describe(owner: dict) -> str:
    return (f"run {owner.get('run_id', '?')} on {owner.get('host', '?')} (pid {owner.get('pid', '?')}) "
            f"since {owner.get('since', '?')}")


def _create(path: Path, owner: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(owner, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def read_owner(path: Path) -> dict | None:
    """The holder, {} while it is being written (or was cut short), None once the lock is gone."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True  # nothing to check: wait for the heartbeat to go stale instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return not owner.get("pid_start") or _start_time(pid) == owner["pid_start"]


def is_stale(path: Path, owner: dict, stale_after: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: simply try again
    if owner.get("machine") == machine_id() and not _alive(owner):
        return True
    return age > stale_after


def _break(path: Path, token: str | None) -> None:
    """Removes a stale lock, unless another waiter broke it and a new holder took it meanwhile."""
    guard = path.with_name(path.name + ".break")
    if not _create(guard, {"pid": os.getpid()}):
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > BREAK_GUARD_S:
                guard.unlink()
        return
    try:
        if (read_owner(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


class Lock:
    """A held lock: heartbeats until released."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {path.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def intact(self) -> bool:
        """Whether the lock is still ours: no waiter judged it stale, broke it and took it."""
        return (read_owner(self.path) or {}).get("token") == self.owner["token"]

    def release(self) -> None:
        self._done.set()
        self._beat.join()
        if self.intact():  # not if it was broken and taken
            self.path.unlink(missing_ok=True)


def acquire(path: str | Path, owner: dict, stale_after: float, log: Callable[[str], None],
            cancelled: Callable[[], bool] = lambda: False, give_up_after: float | None = None) -> Lock:
    """Takes the lock at `path`, waiting while a live holder has it; raises Cancelled or Busy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reported = None
    while not _create(path, owner):
        holder = read_owner(path)
        if holder is None:
            continue
        if is_stale(path, holder, stale_after):
            log(f"breaking the stale lock {path} of {describe(holder)}")
            _break(path, holder.get("token"))
            continue
        if cancelled():
            raise Cancelled(str(path))
        waited = time.monotonic() - started
        if give_up_after is not None and waited > give_up_after:
            raise Busy(describe(holder))
        if reported is None or time.monotonic() - reported >= REPORT_S:
            log(f"waiting for {path.name}: held by {describe(holder)} ({waited:.0f} s so far)")
            reported = time.monotonic()
        time.sleep(POLL_S)
    return Lock(path, owner)


@contextlib.contextmanager
def held(paths: Sequence[str | Path], owner: dict, stale_after: float, log: Callable[[str], None],
         cancelled: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Holds every lock in `paths`, taken in sorted order so that two runs never wait on each other."""
    locks = []
    try:
        for path in sorted({str(p) for p in paths}):
            locks.append(acquire(path, owner, stale_after, log, cancelled))
        yield
    finally:
        for lock in reversed(locks):
            lock.release()
