"""A user's mistake ends `training/pretrain.py` with one line, `training: error: <message>`, and exit
code 1, before anything it concerns has started; a bug keeps its traceback, and `--debug` shows
the traceback always. Under torchrun (2 gloo ranks), one rank prints the line and every rank exits
by itself at once, none waiting in a collective.

In-process runs of the tiny config on CPU (each well under a second), and one torchrun launch.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.pretrain import main
from training.synthetic import make_frame_folders

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--config", "training/configs/tiny.yaml", "optim.epochs=1", "train.stop_at_step=1",
        "train.export_at_end=false", "train.tensorboard=false"]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("training: error:")]


@pytest.mark.parametrize("override,message", [
    ("optim.base_lrr=0.001", "unknown config key 'optim.base_lrr'; did you mean 'optim.base_lr'?"),
    ("optim.batch_size_per_gpu=-4", "optim.batch_size_per_gpu=-4: must be >= 2 (KoLeo needs two samples per "
                                    "micro-batch)"),
    ("optim.global_batch_size=-8", "optim.global_batch_size=-8: must be >= 1"),
    ("optim.global_batch_size=0", "optim.global_batch_size=0: must be >= 1"),
    ("optim.global_batch_size=10", "optim.global_batch_size=10: must be a multiple of optim.batch_size_per_gpu=4"),
    ("data.root=/nonexistent/frames", "data.root=/nonexistent/frames: no such folder"),
    ("train.resume=/nonexistent/ckpt.pt", "train.resume=/nonexistent/ckpt.pt: no such checkpoint file "
                                          "(train.resume=auto takes the newest of the run's own)"),
])
def test_a_config_mistake_is_one_line_before_anything_starts(override, message, tiny_frames, tmp_path,
                                                               capsys):
    out = tmp_path / "run"
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={out}", override]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"training: error: {message}\n" and captured.out == ""
    assert not out.exists()  # no lock, no log: nothing started


def test_a_data_root_without_videos_is_one_line(tmp_path, capsys):
    (tmp_path / "frames" / "class" / ".video.partial").mkdir(parents=True)  # a killed prepare's folder only
    (tmp_path / "frames" / "class" / ".video.partial" / "00000.jpg").write_bytes(b"")
    assert main([*TINY, f"data.root={tmp_path / 'frames'}", f"train.output_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert err == (f"training: error: data.root={tmp_path / 'frames'}: no video frame folders found "
                   "(data.layout=folders); extract frames first: python -m training.prepare frames VIDEOS FRAMES\n")


def test_on_ranks_but_0_a_config_mistake_prints_nothing(tiny_frames, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={tmp_path}", "optim.epochs=-1"]) == 1
    assert capsys.readouterr().err == ""


def test_debug_shows_the_traceback_of_a_users_mistake_too(tiny_frames, tmp_path, capsys):
    assert main(["--debug", *TINY, f"data.root={tiny_frames}", f"train.output_dir={tmp_path}",
                 "optim.epochs=-1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError: optim.epochs=-1: must be >= 1" in err


def test_a_bug_keeps_its_traceback(tiny_frames, tmp_path, capsys, monkeypatch):
    def broken_scan(*args, **kwargs):
        raise ZeroDivisionError("a bug in the scan")

    monkeypatch.setattr("training.pretrain.scan_videos", broken_scan)  # a step every rank agrees on
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={tmp_path / 'a'}"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: a bug in the scan" in err
    assert not _error_lines(err)
    monkeypatch.undo()

    def broken_build(*args, **kwargs):
        raise ZeroDivisionError("a bug in the model")

    monkeypatch.setattr("training.pretrain.build_training", broken_build)  # a step of each rank alone
    with pytest.raises(ZeroDivisionError, match="a bug in the model"):
        main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={tmp_path / 'b'}"])


def test_a_frame_that_does_not_decode_in_a_loader_worker_is_one_line_naming_it(tmp_path, capsys):
    root = tmp_path / "frames"
    make_frame_folders(root, [3] * 8, size=(40, 56), layout="folders")
    for video in root.iterdir():
        (video / "00001.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # the current frame of a 3-frame video
    assert main([*TINY, f"data.root={root}", f"train.output_dir={tmp_path / 'run'}", "data.num_workers=1"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(rf"training: error: {root}/video\d+/00001.jpg: cannot read this frame \(.*\); find such "
                        r"frames before a run with: python -m training.prepare check FRAMES\n", err), err


def test_under_torchrun_one_rank_prints_the_error_and_every_rank_exits_by_itself(tmp_path):
    empty = tmp_path / "frames"
    empty.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "training.pretrain", *TINY, f"data.root={empty}", f"train.output_dir={tmp_path / 'run'}"]
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    seconds = time.monotonic() - start
    print(f"torchrun with a data mistake: {seconds:.1f} s")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert _error_lines(output) == [f"training: error: data.root={empty}: no video frame folders found "
                                    "(data.layout=folders); extract frames first: python -m training.prepare "
                                    "frames VIDEOS FRAMES"]
    assert f'File "{REPO / "training"}' not in output  # no rank printed a traceback
    # torchrun's summary: each rank ended by itself with exit code 1, none was stopped by torchrun's
    # SIGTERM while it waited in a collective
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", output))
    assert codes == {"0": "1", "1": "1"}, output[-3000:]


def test_a_full_disk_during_a_save_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(
        tiny_frames, tmp_path, capsys, monkeypatch):
    import errno

    import training.checkpoint

    out = tmp_path / "run"
    save = training.checkpoint._torch_save
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={out}", "train.checkpoint_every=1"]) == 0

    def full(obj, path):
        save(obj, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training.checkpoint, "_torch_save", full)
    capsys.readouterr()
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={out}", "train.checkpoint_every=1",
                 "train.stop_at_step=2"]) == 1
    first, second = out / "checkpoints" / "ckpt_00000001.pt", out / "checkpoints" / "ckpt_00000002.pt"
    assert capsys.readouterr().err == (
        f"training: error: checkpoint {second}: cannot be written (No space left on device); free space under "
        "train.output_dir (or lower train.keep_last) and relaunch: the run resumes from the last checkpoint\n")
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no half file left


def test_a_non_finite_loss_stops_the_run_with_one_line(tiny_frames, tmp_path, capsys, monkeypatch):
    import training.pretrain

    step = training.pretrain.train_step

    def diverging(*args, **kwargs):
        terms = step(*args, **kwargs)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(training.pretrain, "train_step", diverging)
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={tmp_path}"]) == 1
    assert re.fullmatch(r"training: error: step 1: the loss is not finite \(dino_local [\d.]+, .*, total nan\); lower "
                        r"optim.base_lr or check the data \(python -m training.prepare check FRAMES\)\n",
                        capsys.readouterr().err)


def test_exporting_a_missing_or_damaged_checkpoint_is_one_line(tmp_path, capsys):
    from training.export import main as export_main

    empty = tmp_path / "checkpoints"
    empty.mkdir()
    damaged = tmp_path / "ckpt_00000001.pt"
    damaged.write_bytes(b"PK\x03\x04 cut short")
    assert export_main([str(empty), "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (f"training.export: error: {empty}: no ckpt_*.pt checkpoint in this folder; "
                                       "pass a run's checkpoints/ folder or one ckpt_*.pt file\n")
    assert export_main([str(damaged), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"training.export: error: checkpoint {damaged}: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception):  # --debug: the traceback
        export_main([str(damaged), "-o", str(tmp_path / "out"), "--debug"])


def test_a_collective_that_lost_its_peer_is_one_line_saying_how_to_go_on(tiny_frames, tmp_path, capsys, monkeypatch):
    import training.pretrain
    from training.dist import lost_peer_message

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:31939: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")
    assert lost_peer_message(gloo).startswith("lost contact with another rank ([../third_party/gloo/")
    assert lost_peer_message(RuntimeError("Connection reset by peer")) is None  # not from a collective
    assert lost_peer_message(RuntimeError("gloo: shapes differ")) is None  # a collective's other failure: a bug

    def lost(*args, **kwargs):
        raise gloo

    monkeypatch.setattr(training.pretrain, "train", lost)
    assert main([*TINY, f"data.root={tiny_frames}", f"train.output_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("training: error: lost contact with another rank (") and err.count("\n") == 1
    assert err.endswith("Relaunch every node with the same command: the run resumes from the last checkpoint\n")
