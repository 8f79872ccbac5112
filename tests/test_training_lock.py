"""tcore.locks.FolderLock: one writer per folder (atomic creation, heartbeat, stale takeover, loss),
and tcore.distributed.claim_folder, through which evaluation and training take it.

In-process and fast; the end-to-end behaviour under torchrun is in test_training_one_run.py.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace

import pytest

from tcore.locks import LOCK_NAME, FolderLock, FolderLockedError, LockHolder, LockLostError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(folder, **fields) -> LockHolder:
    """Write a lock file as another run would have (defaults: a live-looking run of this host)."""
    now = time.time()
    holder = LockHolder(**{"purpose": "training", "host": socket.gethostname(), "pid": os.getpid(), "started": now,
                           "heartbeat": now, "token": "other", **fields})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(asdict(holder)))
    return holder


def _on_disk(folder) -> dict:
    return json.loads((folder / LOCK_NAME).read_text())


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_acquire_records_the_holder_and_release_removes_the_file(tmp_path):
    folder = tmp_path / "new" / "run"  # created
    lock = FolderLock(folder, "training")
    assert lock.acquire() is None and lock.held
    data = _on_disk(folder)
    assert data["purpose"] == "training" and data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert abs(data["started"] - time.time()) < 60 and data["heartbeat"] >= data["started"]
    lock.check()
    lock.release()
    assert not (folder / LOCK_NAME).exists() and not lock.held
    lock.release()  # idempotent
    with FolderLock(folder, "evaluation"):
        assert _on_disk(folder)["purpose"] == "evaluation"
    assert list(folder.iterdir()) == []


def test_a_live_holder_is_refused_with_host_pid_since_and_what_to_do(tmp_path):
    with FolderLock(tmp_path, "training"):  # this process: alive
        with pytest.raises(FolderLockedError) as err:
            FolderLock(tmp_path, "evaluation").acquire()
    message = str(err.value)
    assert f"{tmp_path} is in use by another training run: pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "started 20" in message and "last heartbeat 0 s ago" in message and str(tmp_path / LOCK_NAME) in message
    assert f"kill {os.getpid()}" in message and "use another folder" in message
    assert err.value.holder.pid == os.getpid()


def test_another_hosts_lock_is_refused_until_its_heartbeat_is_stale(tmp_path, caplog):
    now = time.time()
    _plant(tmp_path, host="gpu-node-17", pid=4242, heartbeat=now - 100)
    with pytest.raises(FolderLockedError, match="kill 4242 on gpu-node-17.*once its heartbeat is 120 s old"):
        FolderLock(tmp_path, "training").acquire()
    stale = _plant(tmp_path, host="gpu-node-17", pid=4242, started=now - 7200, heartbeat=now - 121)
    lock = FolderLock(tmp_path, "training")
    with caplog.at_level(logging.WARNING, logger="tcore.locks"):
        assert lock.acquire() == stale
    assert "took over the stale lock of a training run (pid 4242 on host gpu-node-17" in caplog.text
    assert "its last heartbeat is 2 min old (stale after 120 s)" in caplog.text
    assert _on_disk(tmp_path)["pid"] == os.getpid()
    lock.release()


def test_a_dead_process_of_this_host_is_taken_over_whatever_its_heartbeat(tmp_path, caplog):
    stale = _plant(tmp_path, pid=_dead_pid())  # heartbeat: now
    with caplog.at_level(logging.WARNING, logger="tcore.locks"):
        with FolderLock(tmp_path, "training") as lock:
            assert _on_disk(tmp_path)["token"] == lock._me.token
    assert f"process {stale.pid} is gone" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process identity needs /proc")
def test_a_pid_reused_by_another_process_is_taken_over(tmp_path, caplog):
    _plant(tmp_path, process="another-boot:12345")  # this live pid, but not the process that wrote the lock
    with caplog.at_level(logging.WARNING, logger="tcore.locks"):
        with FolderLock(tmp_path, "training"):
            pass
    assert f"pid {os.getpid()} now belongs to another process" in caplog.text


def test_the_heartbeat_is_refreshed_while_held(tmp_path):
    with FolderLock(tmp_path, "training", heartbeat_every=0.02, stale_after=1.0):
        first = _on_disk(tmp_path)["heartbeat"]
        _wait_for(lambda: _on_disk(tmp_path)["heartbeat"] > first)


def test_a_holder_taken_over_stops_beating_and_check_raises(tmp_path):
    lock = FolderLock(tmp_path, "training", heartbeat_every=0.02, stale_after=1.0)
    lock.acquire()
    other = _plant(tmp_path, host="gpu-node-17", pid=4242, token="newer")  # a takeover by another run
    _wait_for(lambda: lock._lost is not None)
    with pytest.raises(LockLostError, match="no longer this training run's: taken over by a training run "
                                            r"\(pid 4242 on host gpu-node-17"):
        lock.check()
    time.sleep(0.1)
    assert _on_disk(tmp_path) == asdict(other)  # never overwritten by the old holder
    lock.release()
    assert _on_disk(tmp_path) == asdict(other)  # nor deleted


def test_check_notices_a_deleted_lock_file(tmp_path):
    with FolderLock(tmp_path, "training") as lock:
        (tmp_path / LOCK_NAME).unlink()
        with pytest.raises(LockLostError, match="was deleted"):
            lock.check()


@pytest.mark.parametrize("start", ["free", "stale"])
def test_racing_launches_get_the_folder_exactly_once(tmp_path, start):
    if start == "stale":
        _plant(tmp_path, pid=_dead_pid())
    locks = [FolderLock(tmp_path, "training") for _ in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(locks))

    def launch(lock: FolderLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("held")
        except FolderLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=launch, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held"] + ["refused"] * 7
    (winner,) = [lock for lock in locks if lock.held]
    assert _on_disk(tmp_path)["token"] == winner._me.token
    winner.release()


def test_a_takeover_file_left_by_a_crash_is_removed(tmp_path):
    _plant(tmp_path, pid=_dead_pid())
    guard = tmp_path / (LOCK_NAME + ".takeover")
    guard.touch()
    os.utime(guard, (time.time() - 60, time.time() - 60))
    with FolderLock(tmp_path, "training"):
        assert not guard.exists()


def test_an_unreadable_lock_file_is_a_clear_error(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(FolderLockedError, match="unreadable lock file.*if no run is using .* delete this file"):
        FolderLock(tmp_path, "training").acquire()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_releases_its_parents_lock(tmp_path):
    with FolderLock(tmp_path, "training") as lock:
        pid = os.fork()
        if pid == 0:  # a DataLoader worker, say
            lock.release()
            os._exit(0)
        os.waitpid(pid, 0)
        lock.check()


def test_settings_are_checked_and_acquire_is_not_reentrant(tmp_path):
    with pytest.raises(ValueError, match="stale_after=1.* must exceed 2 x heartbeat_every=1"):
        FolderLock(tmp_path, "training", heartbeat_every=1, stale_after=1)
    with FolderLock(tmp_path, "training") as lock:
        with pytest.raises(RuntimeError, match="already held"):
            lock.acquire()


def test_describe_and_stale_reason_of_a_holder():
    holder = LockHolder("training", "gpu-node-17", 4242, started=0.0, heartbeat=1000.0, token="t")
    assert holder.stale_reason(120, now=1100.0) is None
    assert holder.stale_reason(120, now=1180.0) == "its last heartbeat is 3 min old (stale after 120 s)"
    assert holder.describe(now=1000.0 + 3 * 3600).endswith("(3.3 h ago), last heartbeat 3.0 h ago")
    assert replace(holder, host=socket.gethostname(), pid=_dead_pid()).stale_reason(120, now=1000.0).endswith("gone")


def test_the_lock_module_imports_no_torch():
    code = "import sys, tcore.locks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_claim_folder_takes_the_lock_or_names_the_folder_in_its_error(tmp_path):
    from tcore.distributed import DistInfo, claim_folder
    from tcore.errors import FileAccessError

    lock = claim_folder(tmp_path / "run", "training", DistInfo(), name="train.output_dir=run")
    try:
        assert lock.held and (tmp_path / "run" / LOCK_NAME).is_file()
        with pytest.raises(FolderLockedError, match=r"^train.output_dir=run: .* is in use by another training run"):
            claim_folder(tmp_path / "run", "training", DistInfo(), name="train.output_dir=run")
    finally:
        lock.release()
    (tmp_path / "file").write_text("")
    with pytest.raises(FileAccessError, match=r"^out_dir: cannot create .*file/run/tcore.lock \(Not a directory\); "
                                              "pick a folder you can write to$"):
        claim_folder(tmp_path / "file" / "run", "evaluation", DistInfo(), name="out_dir")
