"""One run per output folder, and no rank outlives its launcher: the tiny config under torchrun
(2 gloo ranks, CPU), end to end.

Four launches in all, sharing one schedule (30 epochs of 3 steps, a checkpoint every step, stopped
after 9 steps but for the killed run, which would train for a minute more):
* the first run takes over a stale lock left by a crashed node (another host, old heartbeat), and
  while it trains, a second launch into its folder is refused; the first then runs to its end;
* a run whose torchrun is SIGKILLed after its first checkpoint: every rank is gone at once and
  nothing more is written; its relaunch takes over the dead run's lock and ends bit-exactly equal
  to the first run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from helpers import descendants, process_alive

from tcore.locks import LOCK_NAME, LockHolder
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 9
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")


def _torchrun(frames: Path, out: Path, stop: bool = True) -> list[str]:
    """The shared schedule (30 epochs of 3 steps); each run but the killed one stops after STEPS steps."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
            "training.pretrain", "--config", "training/configs/tiny.yaml", f"data.root={frames}",
            f"train.output_dir={out}", "optim.epochs=30", "train.checkpoint_every=1", f"train.keep_last={STEPS}",
            f"train.stop_at_step={STEPS if stop else 0}"]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """torchrun in a session of its own (a scheduler's job), stdout and stderr into `log`."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_all(proc: subprocess.Popen, pids: set[int]) -> None:
    """Clean up after a failure: the launcher and every process it started."""
    for pid in {proc.pid} | pids | (descendants(proc.pid) if proc.poll() is None else set()):
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before writing {path}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("samples_per_s")
    return lines


@pytest.fixture(scope="module")
def first_run(tiny_frames, tmp_path_factory):
    """The first run (over a crashed node's stale lock) and a second launch refused while it trains."""
    run = tmp_path_factory.mktemp("first") / "run"
    run.mkdir()
    long_ago = time.time() - 10 * 3600
    crashed = LockHolder("training", "gpu-node-17", 4242, started=long_ago - 7200, heartbeat=long_ago, token="crashed")
    (run / LOCK_NAME).write_text(json.dumps(asdict(crashed)))

    log, second_log = run.parent / "first.log", run.parent / "second.log"
    first = _start(_torchrun(tiny_frames, run), log)
    rank0 = stopped = None
    try:
        deadline = time.monotonic() + 300
        while (rank0 := json.loads((run / LOCK_NAME).read_text())["pid"]) == crashed.pid:
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        t0 = time.monotonic()
        second = _start(_torchrun(tiny_frames, run), second_log)
        # The second launch takes many seconds to start: hold the first run's rank 0 still (alive, lock
        # held) before its last step if need be, so that the first run is surely running meanwhile.
        while second.poll() is None:
            if stopped is None and (run / "checkpoints" / f"ckpt_{STEPS - 1:08d}.pt").exists():
                os.kill(rank0, signal.SIGSTOP)
                stopped = rank0
            assert time.monotonic() < deadline, "the second launch did not stop"
            time.sleep(0.05)
        second_s = time.monotonic() - t0
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
            stopped = None
        first.wait(timeout=300)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if first.poll() is None:
            _kill_all(first, set())
    return {"run": run, "rank0": rank0, "first": (first.returncode, log.read_text()),
            "second": (second.returncode, second_log.read_text()), "second_s": second_s}


def test_a_second_launch_into_a_folder_in_use_stops_with_one_clear_error(first_run):
    rc, output = first_run["second"]
    print(f"refused launch: {first_run['second_s']:.1f} s from start to exit")
    assert rc != 0
    errors = [line for line in output.splitlines() if line.startswith("training: error:")]
    assert len(errors) == 1, output[-3000:]  # from rank 0 only
    assert (f"is in use by another training run: pid {first_run['rank0']} on host {socket.gethostname()}, "
            f"started 20") in errors[0]
    assert f"kill {first_run['rank0']}), or use another folder" in errors[0]
    assert "training INFO" not in output  # no rank logged, trained or wrote anything


def test_the_first_run_took_over_a_crashed_nodes_lock_and_ends_intact(first_run):
    rc, output = first_run["first"]
    run = first_run["run"]
    assert rc == 0, output[-3000:]
    assert "took over the stale lock of a training run (pid 4242 on host gpu-node-17" in output
    assert "its last heartbeat is 10.0 h old (stale after 120 s)" in output
    assert [m["step"] for m in _metrics(run)] == list(range(1, STEPS + 1))  # each step logged once
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"ckpt_{s:08d}.pt" for s in range(1, STEPS + 1)]
    for step in range(1, STEPS + 1):
        assert load_checkpoint(run / "checkpoints" / f"ckpt_{step:08d}.pt")["step"] == step
    assert output.count("training INFO: config:") == 1
    assert (run / "log.txt").read_text().count("training INFO: config:") == 1  # one run wrote into the folder
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_killing_torchrun_kills_every_rank_and_a_relaunch_resumes_exactly(first_run, tiny_frames, tmp_path):
    run, log = tmp_path / "run", tmp_path / "killed.log"
    launcher = _start(_torchrun(tiny_frames, run, stop=False), log)
    ranks: set[int] = set()
    try:
        _wait_for(run / "checkpoints" / "ckpt_00000001.pt", launcher, log)
        ranks = descendants(launcher.pid)
        rank0 = json.loads((run / LOCK_NAME).read_text())["pid"]
        assert rank0 in ranks and len(ranks) >= 2
        os.kill(launcher.pid, signal.SIGKILL)  # torchrun only: its ranks live in sessions of their own
        launcher.wait(timeout=30)
        at_kill = _files(run)
        deadline = time.monotonic() + 30
        while any(process_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [pid for pid in ranks if process_alive(pid)], "ranks outlived torchrun"
        time.sleep(0.5)
        assert _files(run) == at_kill, "written after the kill"
    finally:
        _kill_all(launcher, ranks)
    written = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert written[0] == "ckpt_00000001.pt" and written[-1] < f"ckpt_{STEPS:08d}.pt"  # killed mid-run
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == rank0  # the dead run's lock is left behind

    relaunch = subprocess.run(_torchrun(tiny_frames, run), cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"took over the stale lock of a training run (pid {rank0} on host {socket.gethostname()}" in relaunch.stderr
    assert f"process {rank0} " in relaunch.stderr  # "is gone" (or "has exited": an unreaped zombie)
    reference = first_run["run"]
    assert _metrics(run) == _metrics(reference)
    a = load_checkpoint(reference / "checkpoints" / f"ckpt_{STEPS:08d}.pt")
    b = load_checkpoint(run / "checkpoints" / f"ckpt_{STEPS:08d}.pt")
    for part in ("student", "teacher", "centers"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
