"""How a training process ends: with its launcher, and cleanly on a scheduler's SIGTERM.

torchrun starts every rank in a session of its own, so a scheduler or a user that kills only the
launcher (`kill -KILL <torchrun pid>`, SLURM without cgroup process tracking, a lost node agent)
used to leave the ranks training and writing checkpoints. `die_with_launcher` ties each rank to the
process that started it: on Linux the kernel sends it SIGKILL when that process exits
(`prctl(PR_SET_PDEATHSIG)`); elsewhere a daemon thread polls the parent pid and kills the process
when it changes. SIGKILL, because a rank must stop at once and write nothing more: its last
complete checkpoint stays the one a requeued job resumes from. `training.prepare`'s decoding
processes die with the command the same way (`die_with_parent`), so a killed prepare leaves none
writing frames.

Standard library only: it is armed before torch is imported.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcore.locks import FolderLock

__all__ = ["die_with_parent", "die_with_launcher", "release_on_sigterm"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _set_parent_death_signal(signum: int) -> bool:
    """Linux: ask the kernel to send `signum` to this process when its parent exits. False elsewhere or on failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbol table, or no prctl in it
        return False


def _watch_parent(parent: int, every: float) -> None:
    """Start a daemon thread that kills this process once its parent is no longer `parent`."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        _die()

    threading.Thread(target=watch, name="die-with-launcher", daemon=True).start()


def die_with_launcher(poll_every: float = 1.0) -> str | None:
    """Make this process die (SIGKILL) as soon as the launcher that started it exits.

    Armed only in a process started by a launcher (torchrun, or anything that sets LOCAL_RANK); a
    plain `python training/pretrain.py` is left alone, so `nohup` and shells keep their meaning.
    Under torchrun the launcher is the parent process: torchrun runs its elastic agent in-process
    and starts the ranks with `subprocess.Popen`. Call it as early as possible: a launcher that
    dies before this call is not noticed.

    Args:
        poll_every: seconds between parent checks of the fallback thread.

    Returns:
        As `die_with_parent`; None when not started by a launcher.
    """
    if "LOCAL_RANK" not in os.environ:
        return None
    return die_with_parent(poll_every)


def die_with_parent(poll_every: float = 1.0) -> str | None:
    """Make this process die (SIGKILL) as soon as its parent exits: a rank with its launcher, a
    worker process with the command that started it (`training.prepare`'s decoders).

    Args:
        poll_every: seconds between parent checks of the fallback thread.

    Returns:
        "prctl" (Linux: the kernel delivers the signal), "watch" (a thread polls the parent pid),
        or None on Windows.
    """
    if sys.platform == "win32":
        return None
    launcher = os.getppid()
    if _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != launcher:  # the launcher exited between getppid() and prctl(): no signal will come
            _die()
        return "prctl"
    _watch_parent(launcher, poll_every)
    return "watch"


def release_on_sigterm(lock: FolderLock) -> None:
    """On SIGTERM (a scheduler's stop or time limit, torchrun shutting its ranks down) release `lock`,
    print one line saying so and how to resume, then die of the signal at once, without a checkpoint.

    The lock is then free for a requeued job on any host, which resumes from the last checkpoint.
    The handler runs in the main thread between two Python operations, which is within
    milliseconds unless a C call blocks; the launcher's or scheduler's SIGKILL comes after.
    Call from the main thread.
    """
    main_pid = os.getpid()
    line = (f"training: stopped by SIGTERM (a scheduler's stop or time limit, or torchrun stopping its ranks "
            f"because another rank or node failed); {lock.folder} is free: relaunch the same command to resume "
            "from its last checkpoint\n").encode()

    def handler(signum: int, frame: FrameType | None) -> None:
        lock.release()  # a no-op in forked children (DataLoader workers inherit this handler)
        if os.getpid() == main_pid:  # one line among the launcher's messages, from the rank that held the folder
            os.write(sys.stderr.fileno(), line)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
