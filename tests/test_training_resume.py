"""Resume: from the newest checkpoint that loads safely and passes its checks (a broken one is
renamed `<name>.broken`, never deleted), and with a changed config only by decision: a key that
changes the training refuses the resume, one line per key, until train.resume_changes names it;
bookkeeping keys never block.

In-process runs of the tiny config (2 steps with a checkpoint after each, then a relaunch to 3).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint, newest_good_checkpoint
from training.pretrain import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--config", "training/configs/tiny.yaml", "optim.epochs=1", "train.checkpoint_every=1", "train.keep_last=3",
        "train.export_at_end=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def runs(tiny_frames, tmp_path_factory, one_torch_thread):
    """A run stopped after 2 of 3 steps (checkpoints 1 and 2), and the same run straight to 3."""
    base = tmp_path_factory.mktemp("runs")
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={base / 'stopped'}",
                 "train.stop_at_step=2"]) == 0
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={base / 'straight'}"]) == 0
    return base


def _copy(runs: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs / "stopped", run)
    return run


def _relaunch(frames: Path, run: Path, *overrides: str) -> int:
    return main([*TINY, f"data.root={frames}", f"train.output_dir={run}", *overrides])


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    return all(torch.equal(sa[part][k], sb[part][k]) for part in ("student", "teacher") for k in sa[part])


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        runs, tiny_frames, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    newest = run / "checkpoints" / "ckpt_00000002.pt"
    cut = newest.read_bytes()[: newest.stat().st_size // 3]  # an interrupted copy, a full disk
    newest.write_bytes(cut)
    assert _relaunch(tiny_frames, run) == 0
    out = capsys.readouterr()
    log = (run / "log.txt").read_text()
    assert (f"checkpoint {newest}: not a complete checkpoint file (cut short, e.g. by a full disk or an "
            "interrupted copy: PytorchStreamReader failed reading zip archive") in log
    assert "renamed to ckpt_00000002.pt.broken (kept), trying the previous checkpoint" in log
    assert f"resumed from {run / 'checkpoints' / 'ckpt_00000001.pt'} at step 1" in log
    assert (run / "checkpoints" / "ckpt_00000002.pt.broken").read_bytes() == cut  # kept as it was
    assert _steps(run) == [1, 2, 3]
    for step in (2, 3):  # redone exactly
        assert _same_weights(run / "checkpoints" / f"ckpt_{step:08d}.pt",
                             runs / "straight" / "checkpoints" / f"ckpt_{step:08d}.pt")
    assert "weights_only=False" not in out.out + out.err + log and "weights_only` set to `False" not in log


def test_checkpoints_that_fail_their_checks_are_set_aside_too(runs, tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    shutil.copytree(runs / "straight" / "checkpoints", folder)  # 1, 2, 3
    state = load_checkpoint(folder / "ckpt_00000003.pt")
    next(iter(state["teacher"].values())).fill_(float("nan"))
    torch.save(state, folder / "ckpt_00000003.pt")
    torch.save({**state, "extra": object()}, folder / "ckpt_00000004.pt")  # not loadable with weights_only
    torch.save({**state, "step": 5}, folder / "ckpt_00000002.pt")  # its name says 2
    with caplog.at_level("WARNING", logger="training.checkpoint"):
        path, loaded = newest_good_checkpoint(folder)
    assert path.name == "ckpt_00000001.pt" and loaded["step"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        "ckpt_00000001.pt", "ckpt_00000002.pt.broken", "ckpt_00000003.pt.broken", "ckpt_00000004.pt.broken"]
    reasons = [r.getMessage() for r in caplog.records]
    assert "holds objects other than tensors and plain containers, which safe (weights_only) loading refuses" \
        in reasons[0]
    assert "teacher.backbone.cls_token is not a finite tensor" in reasons[1]
    assert "holds step 5, its name says 2" in reasons[2]
    assert not any("weights_only=False" in r for r in reasons)


def test_only_broken_checkpoints_stop_the_run_with_their_names(runs, tiny_frames, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.write_bytes(b"garbage")
    assert _relaunch(tiny_frames, run) == 1
    assert capsys.readouterr().err == (
        f"training: error: train.resume=auto: {run / 'checkpoints'} holds no usable checkpoint, only "
        "ckpt_00000001.pt.broken, ckpt_00000002.pt.broken (the log says why each is broken); to start this run "
        "again from step 0, set train.resume=\"\"\n")


def test_a_config_that_changes_the_training_refuses_to_resume_one_line_per_key(runs, tiny_frames, tmp_path,
                                                                              capsys):
    run = _copy(runs, tmp_path)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert _relaunch(tiny_frames, run, "optim.base_lr=0.004", "augment.global_scale=[0.5, 1.0]",
                     "model.drop_path_rate=0.2", "train.log_every=2") == 1
    assert capsys.readouterr().err == (
        f"training: error: train.resume: {run / 'checkpoints' / 'ckpt_00000002.pt'} was trained with another "
        "config, and these keys change the training:\n"
        "  model.drop_path_rate: 0.1 -> 0.2\n"
        "  augment.global_scale: [0.32, 1.0] -> [0.5, 1.0]\n"
        "  optim.base_lr: 0.002 -> 0.004\n"
        "to resume with them anyway, add train.resume_changes=model.drop_path_rate,augment.global_scale,"
        "optim.base_lr (or train in another train.output_dir)\n")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before and _steps(run) == [1, 2]


def test_named_changes_are_accepted_and_logged_and_bookkeeping_never_blocks(runs, tiny_frames, tmp_path):
    run = _copy(runs, tmp_path)
    assert _relaunch(tiny_frames, run, "optim.base_lr=0.004", "train.resume_changes=optim.base_lr",
                     "train.keep_last=5", "data.num_workers=0", "train.log_every=3") == 0
    log = (run / "log.txt").read_text()
    assert "resuming with a changed optim.base_lr: 0.002 -> 0.004 (accepted by train.resume_changes)" in log
    assert "resuming with a changed train.keep_last: 3 -> 5 (bookkeeping)" in log
    assert load_checkpoint(run / "checkpoints" / "ckpt_00000003.pt")["config"]["optim"]["base_lr"] == 0.004
    assert not _same_weights(run / "checkpoints" / "ckpt_00000003.pt",
                             runs / "straight" / "checkpoints" / "ckpt_00000003.pt")
