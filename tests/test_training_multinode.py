"""Several nodes, verified on one machine: two launchers `torchrun --nnodes 2 --node-rank 0|1
--nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:<port>` (gloo, CPU, 2 DataLoader
workers per rank) train the tiny config to the same checkpoints and metrics, bit for bit, as one
`torchrun --nproc-per-node 2`; SIGKILL of one node's launcher makes the other node's exit within
seconds; and relaunching both resumes exactly, even when the newest checkpoint was cut short
(it is set aside as `.broken`, every rank resumes from the one before, and the metrics lines of
the steps redone are replaced).

The reference and the first multi-node run start together (they share the machine's cores).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, descendants, free_port, process_alive, process_parent

from training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")]
STEPS = 5


def _training(frames: Path, out: Path, stop: int) -> list[str]:
    """The shared schedule (30 epochs of 3 steps, a checkpoint every step), stopped after `stop` steps (0: never)."""
    return ["-m", "training.pretrain", "--config", "training/configs/tiny.yaml", f"data.root={frames}",
            f"train.output_dir={out}", "data.num_workers=2", "optim.epochs=30", "train.checkpoint_every=1",
            "train.keep_last=10", f"train.stop_at_step={stop}", "train.export_at_end=false"]


def _start(launcher: list[str], training: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, *training], cwd=REPO,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


def _nodes(frames: Path, out: Path, stop: int, logs: Path) -> list[subprocess.Popen]:
    """Two one-process "nodes" meeting at a c10d rendezvous on this machine."""
    port = free_port()
    return [_start(["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tcore-test"],
                   _training(frames, out, stop), logs / f"{out.name}-node{node}.log") for node in (0, 1)]


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("samples_per_s")
    return lines


def _log(logs: Path, name: str) -> str:
    return "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob(f"{name}*.log")))


def test_two_nodes_equal_one_node_and_survive_a_lost_node(tiny_frames, tmp_path):
    frames = tiny_frames
    one, two = tmp_path / "one", tmp_path / "two"
    reference = _start(["--standalone", "--nproc-per-node", "2"], _training(frames, one, STEPS), tmp_path / "one.log")
    nodes = _nodes(frames, two, 0, tmp_path)  # would train for 90 steps
    everything = [reference, *nodes]
    try:
        deadline = time.monotonic() + 300
        while not (two / "checkpoints" / "ckpt_00000002.pt").exists():
            assert all(p.poll() is None for p in nodes), _log(tmp_path, "two")
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
        rank0 = json.loads((two / "tcore.lock").read_text())["pid"]
        survivor = next(p for p in nodes if p.pid == process_parent(rank0))
        victim = next(p for p in nodes if p is not survivor)
        ranks = descendants(victim.pid) | descendants(survivor.pid)
        victim.kill()  # SIGKILL: a lost node
        killed_at = time.monotonic()
        survivor.wait(timeout=120)
        survivor_s = time.monotonic() - killed_at
        victim.wait(timeout=30)
        print(f"the other node's launcher exited {survivor_s:.1f} s after the kill")
        assert survivor.returncode != 0 and survivor_s < 60
        # rank 0 says what happened in one line, whichever saw it first: a collective (gloo's lost
        # connection) or torchrun's SIGTERM; torchrun's own messages come around it
        said = (tmp_path / f"two-node{nodes.index(survivor)}.log").read_text()
        assert re.search(r"^training: (error: lost contact with another rank|stopped by SIGTERM)", said, re.M), said[-3000:]
        assert f'File "{REPO / "training"}' not in said, said[-3000:]  # no traceback of ours
        deadline = time.monotonic() + 30
        while any(process_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in ranks if process_alive(pid)], "processes outlived the lost node"
        assert not (two / "tcore.lock").exists()  # rank 0 stopped with an error and released the folder
        assert reference.wait(timeout=300) == 0, _log(tmp_path, "one")
    finally:
        for proc in everything:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    written = sorted((two / "checkpoints").glob("ckpt_*.pt"))
    assert 2 <= len(written) < STEPS
    newest = written[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # the newest checkpoint is cut short too
    logged = [m["step"] for m in _metrics(two)]
    assert logged[-1] >= int(newest.stem[5:])  # its step was logged: that line is redone

    relaunch = _nodes(frames, two, STEPS, tmp_path)
    try:
        assert [p.wait(timeout=300) for p in relaunch] == [0, 0], _log(tmp_path, "two")
    finally:
        for proc in relaunch:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert (two / "checkpoints" / f"{newest.name}.broken").is_file()
    assert f"resumed from {written[-2]}" in (two / "log.txt").read_text()
    assert _metrics(two) == _metrics(one) and [m["step"] for m in _metrics(one)] == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        name = f"ckpt_{step:08d}.pt"
        if not (two / "checkpoints" / name).exists():
            continue  # cut short above
        a, b = load_checkpoint(one / "checkpoints" / name), load_checkpoint(two / "checkpoints" / name)
        for part in ("student", "teacher", "centers"):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (step, part)
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa), step
