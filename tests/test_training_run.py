"""End-to-end training runs of the tiny config on synthetic frames (subprocesses, CPU).

Covers the script launch form (`python training/pretrain.py`), the EMA teacher, the export, and a
crash during a save. Exact resume with 2 ranks and 2 DataLoader workers (`torchrun -m
training.pretrain`) is in test_training_multinode.py, and after a SIGKILL of torchrun in
test_training_one_run.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import json
import os
import signal
import subprocess

import torch

import tcore
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import load_config
from training.export import main as export_main
from training.optim import build_schedules

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("samples_per_s")
    return lines


def test_single_process_run_ema_teacher_and_export(tiny_frames, tmp_path):
    run = tmp_path / "run"
    _run([sys.executable, "training/pretrain.py", "--config", "training/configs/tiny.yaml",
          f"data.root={tiny_frames}",
          f"train.output_dir={run}", "optim.epochs=1", "train.checkpoint_every=1", "train.keep_last=5",
          "augment.device=gpu"])  # the batched augmentation path, on CPU tensors
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(v)) for m in metrics for k, v in m.items() if k != "step")
    c1, c2 = (load_checkpoint(run / "checkpoints" / f"ckpt_0000000{i}.pt") for i in (1, 2))
    momentum = build_schedules(load_config("training/configs/tiny.yaml", ["optim.epochs=1"]), 3).at(1)["momentum"]
    for key, t2 in c2["teacher"].items():
        expected = momentum * c1["teacher"][key] + (1 - momentum) * c2["student"][key]
        assert torch.allclose(t2, expected, atol=1e-6), key
    assert any(not torch.equal(c2["teacher"][k], c2["student"][k]) for k in c2["teacher"])

    # the export: both formats load into the tiny tcore architecture and give the trained teacher's features
    exported = run / "export"
    final = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    reference = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2)
    reference.load_state_dict({k[9:]: v for k, v in final["teacher"].items() if k.startswith("backbone.")})
    x = torch.randn(2, 3, 32, 48)
    for source in (exported, exported / "teacher_checkpoint.pth"):
        model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=str(source))
        with torch.no_grad():
            assert torch.equal(model.patch_tokens(x), reference.patch_tokens(x))
    assert export_main([str(run / "checkpoints"), "-o", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()


_CRASHING_SAVER = """
import sys, time, torch
from training.checkpoint import save_checkpoint
folder = sys.argv[1]
save_checkpoint(folder, {"format_version": 1, "step": 1, "w": torch.ones(3)}, 1, 3)
def stalled_save(obj, f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
torch.save = stalled_save
save_checkpoint(folder, {"format_version": 1, "step": 2, "w": torch.zeros(3)}, 2, 3)
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_SAVER, str(tmp_path)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert (tmp_path / "ckpt_00000002.pt.tmp").is_file() and not (tmp_path / "ckpt_00000002.pt").exists()
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "ckpt_00000001.pt"
    assert torch.equal(torch.load(latest, weights_only=True)["w"], torch.ones(3))
    save_checkpoint(tmp_path, {"format_version": 1, "step": 2, "w": torch.zeros(3)}, 2, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000002.pt"]  # stale .tmp and old ckpt removed
