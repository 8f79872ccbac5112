"""One writer per folder: a lock file naming its holder, kept alive by a heartbeat.

The one public place of the lock: `tcore propagate -o` (through `tcore._outputs.staged_folder`),
`tcore eval` results folders, `python -m training.prepare frames` and training's `train.output_dir`
all hold it. It is written generically (a folder and a purpose string). Under torchrun, rank 0 takes
it and every rank learns the outcome through `tcore.distributed.claim_folder`. Standard library
only: importing it loads neither torch nor anything else heavy.

    lock = FolderLock("runs/vits16", purpose="training")
    previous = lock.acquire()   # FolderLockedError if a live run holds it; the stale holder, if taken over
    ...
    lock.check()                # before writing: LockLostError if another run has taken the folder over
    ...
    lock.release()              # or: with FolderLock(folder, purpose): ...

The lock is the JSON file `<folder>/tcore.lock`: purpose, host, pid, start time, heartbeat, a random
token, and on Linux the process's start time (boot id + start tick, to recognise a reused pid).

* **Atomic creation.** The file is created with `O_CREAT | O_EXCL` (atomic on local file systems
  and NFSv3+): of two launches, exactly one gets the folder.
* **Heartbeat.** While held, a daemon thread rewrites the heartbeat every `heartbeat_every`
  seconds (temporary file + `os.replace`, so readers never see half a file). A thread, not the
  caller's loop, so that long steps, compilation or data loading never make a live run look dead.
* **Stale locks** are taken over, with a warning on this module's logger, when
  (a) the holder ran on this host and its process is gone (no such pid, a zombie, or a pid now used
      by another process), or
  (b) its heartbeat is older than `stale_after` seconds (default 120; the only rule across hosts,
      so the hosts' clocks must agree to well under that).
  Anything else is a live holder, and `acquire` raises `FolderLockedError` naming it (host, pid,
  since when, last heartbeat) and what to do. Concurrent takeovers are serialised by a second file,
  `tcore.lock.takeover`, held for milliseconds (one left over by a crash is removed after 30 s).
* **Loss.** A holder whose heartbeat stalled longer than `stale_after` (a frozen node) can be taken
  over while it still runs; the heartbeat thread then stops writing, and `check()` raises
  `LockLostError`, so the old holder stops before its next write instead of fighting the new one.
* **Release** deletes the file if it is still this holder's, from the process that acquired it
  only (a forked child, such as a DataLoader worker, never releases its parent's lock).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .errors import UserError
from .files import write_text_atomic

__all__ = ["FolderLock", "FolderLockedError", "LockHolder", "LockLostError", "LOCK_NAME", "HEARTBEAT_EVERY_S",
           "STALE_AFTER_S", "is_lock_file"]

LOCK_NAME = "tcore.lock"
HEARTBEAT_EVERY_S = 10.0   # seconds between heartbeats
STALE_AFTER_S = 120.0      # a heartbeat older than this marks a dead holder, on any host
_TAKEOVER_STALE_S = 30.0   # a takeover file older than this was left by a crash
_CONTENTION_S = 10.0       # give up acquiring after this long of lost races
_logger = logging.getLogger(__name__)


def is_lock_file(name: str) -> bool:
    """True for the files a `FolderLock` keeps in its folder: the lock, its takeover guard and the
    heartbeat's temporary files (so that code emptying or listing the folder can leave them be)."""
    return name == LOCK_NAME or name.startswith((f"{LOCK_NAME}.", f".{LOCK_NAME}."))


# ------------------------------------------------------------------------------ processes

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start tick) of a Linux process from /proc/<pid>/stat; None without /proc or pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": the comm may hold spaces
    return fields[0], fields[19]  # stat fields 3 (state) and 22 (starttime)


def _process_identity(pid: int) -> str | None:
    """A string that changes when `pid` is reused (Linux: boot id + start tick); None elsewhere."""
    stat = _proc_stat(pid)
    return f"{_boot_id()}:{stat[1]}" if stat else None


def _pid_gone(pid: int, identity: str | None) -> str | None:
    """Why process `pid` of this host is not the holder any more, or None if it may still be."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there: heartbeat rule only
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is gone"
    except PermissionError:  # exists, owned by another user
        pass
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return f"process {pid} has exited"
    if identity is not None and stat is not None and _process_identity(pid) != identity:
        return f"pid {pid} now belongs to another process"
    return None


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------ the lock file

@dataclass(frozen=True)
class LockHolder:
    """What the lock file says about the run holding a folder (times are Unix seconds)."""

    purpose: str
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str
    process: str | None = None  # _process_identity(pid) on Linux

    def describe(self, now: float | None = None) -> str:
        """One line for people: `pid 1234 on host node7, started 2026-11-26 10:00:03 (2.1 h ago), ...`."""
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"pid {self.pid} on host {self.host}, started {since} ({_ago(now - self.started)} ago), "
                f"last heartbeat {_ago(now - self.heartbeat)} ago")

    def stale_reason(self, stale_after: float, now: float | None = None) -> str | None:
        """Why this holder is dead (see the module docstring), or None when it may be alive."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname():
            gone = _pid_gone(self.pid, self.process)
            if gone:
                return gone
        if now - self.heartbeat > stale_after:
            return f"its last heartbeat is {_ago(now - self.heartbeat)} old (stale after {stale_after:g} s)"
        return None


def _parse(text: str) -> LockHolder:
    data = json.loads(text)
    return LockHolder(purpose=str(data["purpose"]), host=str(data["host"]), pid=int(data["pid"]),
                      started=float(data["started"]), heartbeat=float(data["heartbeat"]), token=str(data["token"]),
                      process=data.get("process"))


class FolderLockedError(UserError, RuntimeError):
    """The folder is held by a live run (`holder`), or its lock file cannot be read (`holder` None)."""

    def __init__(self, message: str, holder: LockHolder | None = None):
        super().__init__(message)
        self.holder = holder


class LockLostError(UserError, RuntimeError):
    """Another run took the folder over from this holder (see `FolderLock.check`)."""


# ------------------------------------------------------------------------------ the lock

class FolderLock:
    """Exclusive ownership of a folder by one process, across processes and hosts.

    Args:
        folder: the folder to own (created if missing); the lock file is `<folder>/tcore.lock`.
        purpose: what the holder does ("training", "evaluation"); shown in errors and warnings.
        heartbeat_every: seconds between heartbeats while held.
        stale_after: a heartbeat older than this marks a dead holder (must exceed 2 x heartbeat_every).
    """

    def __init__(self, folder: str | os.PathLike, purpose: str, *, heartbeat_every: float = HEARTBEAT_EVERY_S,
                 stale_after: float = STALE_AFTER_S):
        if not stale_after > 2 * heartbeat_every > 0:
            raise ValueError(f"stale_after={stale_after} must exceed 2 x heartbeat_every={heartbeat_every} > 0, "
                             "or a live holder could look stale between two heartbeats")
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose
        self.heartbeat_every = heartbeat_every
        self.stale_after = stale_after
        self._me: LockHolder | None = None
        self._owner_pid: int | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- public

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release` (even if the lock was lost since)."""
        return self._me is not None

    def acquire(self) -> LockHolder | None:
        """Take the folder, or raise.

        Returns:
            None for a free folder; the previous holder when a stale lock was taken over (a warning
            naming it and the reason is logged too).

        Raises:
            FolderLockedError: a live run holds the folder (the message names it and what to do), or
                the lock file is unreadable.
            RuntimeError: already held by this object.
        """
        if self._me is not None:
            raise RuntimeError(f"{self.path}: already held by this FolderLock")
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        me = LockHolder(purpose=self.purpose, host=socket.gethostname(), pid=os.getpid(), started=now,
                        heartbeat=now, token=uuid.uuid4().hex, process=_process_identity(os.getpid()))
        deadline = time.monotonic() + _CONTENTION_S
        while time.monotonic() < deadline:
            if self._create(me):
                self._start(me)
                return None
            holder = self._read()
            if holder is None:  # released between our attempt and the read: try again
                continue
            reason = holder.stale_reason(self.stale_after)
            if reason is None:
                raise FolderLockedError(self._refusal(holder), holder)
            if self._take_over(holder, me):
                _logger.warning("%s: took over the stale lock of a %s run (%s): %s", self.folder, holder.purpose,
                                holder.describe(), reason)
                self._start(me)
                return holder
        raise FolderLockedError(f"{self.path}: other processes kept changing this lock for {_CONTENTION_S:g} s; "
                                "is something launching runs into this folder in a loop?")

    def check(self) -> None:
        """Raise LockLostError unless the lock file still names this holder (a small file read).

        Call it before writing into the folder, so that a run whose lock was taken over stops.
        """
        if self._me is None:
            raise RuntimeError(f"{self.path}: check() before acquire()")
        if self._lost is None:
            try:
                current = self._read()
            except FolderLockedError as err:
                self._lost = str(err)
            else:
                if current is None or current.token != self._me.token:
                    self._lost = self._loss(current)
        if self._lost is not None:
            raise LockLostError(f"{self.folder} is no longer this {self.purpose} run's: {self._lost}; stopping "
                                "without writing into it")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours. Idempotent; a no-op in a
        forked child of the holder."""
        if self._me is None or os.getpid() != self._owner_pid:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            current = self._read()
            if current is not None and current.token == self._me.token:
                self.path.unlink()
        except (OSError, FolderLockedError) as err:
            _logger.warning("%s: could not remove the lock file (%s); the next run will find it stale", self.path, err)
        self._me = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # ---- file operations

    def _create(self, me: LockHolder) -> bool:
        """Create the lock file holding `me`; False if it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(me)))
        return True

    def _write(self, me: LockHolder) -> None:
        """Replace the lock file's content by `me` atomically."""
        write_text_atomic(self.path, json.dumps(asdict(me)))  # its temporary file is one of is_lock_file's

    def _read(self) -> LockHolder | None:
        """The current holder; None if there is no lock file. A file still being created (empty or
        partial for microseconds) is read again; one unreadable for a second raises FolderLockedError."""
        error: Exception | None = None
        for _ in range(20):
            try:
                return _parse(self.path.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError) as err:
                error = err
                time.sleep(0.05)
        raise FolderLockedError(f"{self.path}: unreadable lock file ({error!r}); if no run is using {self.folder}, "
                                "delete this file")

    def _take_over(self, stale: LockHolder, me: LockHolder) -> bool:
        """Replace the stale holder by `me`, unless someone else changed the lock first."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE_S:
                    _logger.warning("%s: removing a takeover file left by a crash", guard)
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return False
        try:
            current = self._read()
            if current is None or current.token != stale.token:
                return False
            self._write(me)
            return True
        finally:
            guard.unlink(missing_ok=True)

    # ---- heartbeat

    def _start(self, me: LockHolder) -> None:
        self._me, self._owner_pid, self._lost = me, os.getpid(), None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"tcore-lock-heartbeat {self.folder}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Refresh the heartbeat until released; stop for good if the lock is no longer ours."""
        while not self._stop.wait(self.heartbeat_every):
            me = self._me
            if me is None:
                return
            try:
                current = self._read()
                if current is None or current.token != me.token:
                    self._lost = self._loss(current)
                    _logger.error("%s: lost the lock: %s", self.folder, self._lost)
                    return
                self._me = replace(me, heartbeat=time.time())
                self._write(self._me)
            except (OSError, FolderLockedError) as err:  # a file-system hiccup: try again at the next beat
                _logger.warning("%s: heartbeat failed (%s); retrying in %g s", self.path, err, self.heartbeat_every)

    # ---- messages

    def _loss(self, current: LockHolder | None) -> str:
        if current is None:
            return f"its lock file {self.path} was deleted"
        return f"taken over by a {current.purpose} run ({current.describe()})"

    def _refusal(self, holder: LockHolder) -> str:
        message = (f"{self.folder} is in use by another {holder.purpose} run: {holder.describe()} (lock file "
                   f"{self.path}). Let it finish, stop it")
        if holder.host == socket.gethostname():
            return message + f" (kill {holder.pid}), or use another folder."
        return message + (f" (kill {holder.pid} on {holder.host}), or use another folder. If it is dead (a crashed "
                          f"node), the next launch takes the lock over once its heartbeat is {self.stale_after:g} s "
                          "old; delete the lock file only if you are sure.")
