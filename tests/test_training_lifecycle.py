"""training/lifecycle.py: a process dies with its launcher (prctl and the fallback thread), and a
SIGTERM releases the output lock. Small subprocesses without torch; torchrun itself is in
test_training_one_run.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcore.locks import LOCK_NAME
from training.lifecycle import die_with_launcher

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process semantics")

# launcher -> rank: the rank arms itself, says so, and would live for a minute
_RANK = """
import os, sys, time
sys.path.append(sys.argv[2])  # training from the clone, tcore installed
from training.lifecycle import _watch_parent, die_with_launcher
if sys.argv[1] == "prctl":
    assert die_with_launcher() == "prctl"
else:
    _watch_parent(os.getppid(), 0.05)
print("armed", flush=True)
time.sleep(60)
"""
_LAUNCHER = """
import os, subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]],
                        env=dict(os.environ, LOCAL_RANK="0"), start_new_session=True)  # as torchrun does
print(rank.pid, flush=True)
time.sleep(60)
"""
_HOLDER = """
import sys, time
sys.path.append(sys.argv[2])  # training from the clone, tcore installed
from tcore.locks import FolderLock
from training.lifecycle import release_on_sigterm
lock = FolderLock(sys.argv[1], "training")
lock.acquire()
release_on_sigterm(lock)
print("held", flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie left unreaped by a re-parenting init counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


@pytest.mark.parametrize("mode", [
    pytest.param("prctl", marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")),
    "watch"])
def test_a_rank_dies_when_its_launcher_is_killed(mode, tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _RANK, mode, str(REPO)], stdout=subprocess.PIPE,
                                text=True, cwd=tmp_path)
    rank = None
    try:
        rank = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == "armed"  # the rank shares the launcher's stdout
        assert _alive(rank)
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(rank), f"rank {mode}: still alive 30 s after its launcher was killed"
    finally:
        launcher.kill()
        if rank is not None and _alive(rank):
            os.kill(rank, signal.SIGKILL)


def test_a_process_not_started_by_a_launcher_is_left_alone(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert die_with_launcher() is None


def test_sigterm_releases_the_lock_then_kills_at_once(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), str(REPO)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert (tmp_path / LOCK_NAME).is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # died of the signal, as without the handler
        assert proc.stderr.read() == (
            "training: stopped by SIGTERM (a scheduler's stop or time limit, or torchrun stopping its ranks because "
            f"another rank or node failed); {tmp_path} is free: relaunch the same command to resume from its last "
            "checkpoint\n")
    finally:
        proc.kill()
    assert not (tmp_path / LOCK_NAME).exists()
