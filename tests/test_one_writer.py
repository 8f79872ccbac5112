"""One writer per output folder, across processes: `tcore eval` (results folder, torchrun ranks
included) and `tcore propagate -o` (staged, so a killed run leaves no incomplete masks in sight).

Each test starts real processes on a tiny random model and a tiny synthetic clip; a process is
held at a known point (a file it waits for) so that the overlap is certain, not a race.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcore.locks import LOCK_NAME, FolderLock, is_lock_file
from tcore.cli import main
from tcore.demo import make_demo_clip
from tcore.io import DAVIS_PALETTE

from helpers import free_port

_TIMEOUT = 120  # seconds any process of these tests may take


def _palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette(DAVIS_PALETTE.tobytes())
    image.save(path)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory) -> Path:
    """DAVIS-2017 layout: one sequence of 4 frames, two objects."""
    root = tmp_path_factory.mktemp("davis")
    frames, masks = make_demo_clip(4, (48, 64), seed=0)
    for t in range(4):
        jpg = root / "JPEGImages" / "480p" / "blobs" / f"{t:05d}.jpg"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[t]).save(jpg, quality=95)
        _palette_png(root / "Annotations" / "480p" / "blobs" / f"{t:05d}.png", masks[t])
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("blobs\n")
    return root


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (code {proc.returncode}) before {path} appeared: "
                        f"{proc.communicate()[1].decode()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _listing(folder: Path) -> dict[str, object]:
    """Every file's size and modification time; the lock by its holder (its heartbeat rewrites it every 10 s)."""
    def state(path: Path) -> object:
        if path.name == LOCK_NAME:
            return {k: v for k, v in json.loads(path.read_text()).items() if k != "heartbeat"}
        return None if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)

    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))
            if p.name == LOCK_NAME or not is_lock_file(p.name)}  # not the heartbeat's passing temporary file


# The first run, held before it predicts its first video until the test creates the file `go`.
_HELD_EVAL = """
import sys, time
from pathlib import Path
import tcore.evaluation.runner as runner
go, predict = Path(sys.argv[1]), runner._predict
def held(*args, **kwargs):
    while not go.exists():
        time.sleep(0.05)
    return predict(*args, **kwargs)
runner._predict = held
from tcore.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_eval_into_the_same_results_folder_stops_at_once_naming_the_first(davis_root, tiny_model, tmp_path,
                                                                                    capsys):
    out, go = tmp_path / "results", tmp_path / "go"
    argv = ["eval", "davis", "--root", str(davis_root), "--model", str(tiny_model), "-o", str(out), "--size", "64",
            "96", "--device", "cpu", "--quiet"]
    first = subprocess.Popen([sys.executable, "-c", _HELD_EVAL, str(go), *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        _wait_for(out / "davis" / "manifest.json", first)  # it holds the folder and has loaded its model
        before = _listing(out)
        assert main(argv) == 1  # the second run, in this process: another process than the first
        second = capsys.readouterr().err
        assert "Traceback" not in second
        assert second.startswith(f"tcore: error: out_dir: {out / 'davis'} is in use by another evaluation "
                                 f"run: pid {first.pid} on host {socket.gethostname()}")
        assert _listing(out) == before  # the second run wrote nothing, deleted nothing
        assert first.poll() is None  # and the first is still waiting, untouched
        go.touch()
        stdout, stderr = first.communicate(timeout=_TIMEOUT)
    finally:
        first.kill()
    assert first.returncode == 0, stderr.decode()[-3000:]
    assert "J&F-Mean" in stdout.decode()
    assert sorted(p.name for p in (out / "davis" / "blobs").iterdir()) == [f"{t:05d}.png" for t in range(4)]
    assert not (out / "davis" / LOCK_NAME).exists() and not (out / "davis" / ".partial").exists()


_RANK = """
import sys
from tcore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_under_torchrun_every_rank_stops_when_the_results_folder_is_in_use(davis_root, tiny_model, tmp_path):
    port = free_port()
    out = tmp_path / "results"
    argv = ["eval", "davis", "--root", str(davis_root), "--model", str(tiny_model), "-o", str(out), "--size", "64",
            "96", "--device", "cpu", "--quiet"]
    with FolderLock(out / "davis", "evaluation"):  # another live run (this process) holds the folder
        procs = [subprocess.Popen([sys.executable, "-c", _RANK, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                                           RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1"))
                 for rank in range(2)]
        errors = [p.communicate(timeout=_TIMEOUT)[1].decode() for p in procs]
        assert sorted(p.name for p in (out / "davis").iterdir()) == [LOCK_NAME]  # nothing written by either rank
    assert [p.returncode for p in procs] == [1, 1], errors
    for err in errors:  # each rank names the holder, none hangs or shows a traceback
        assert f"is in use by another evaluation run: pid {os.getpid()}" in err and "Traceback" not in err


# The run, killed (SIGKILL) after it has written two of the five masks.
_KILLED_PROPAGATE = """
import sys, time
from pathlib import Path
import tcore.io
ready, write_mask, written = Path(sys.argv[1]), tcore.io.write_mask, []
def write_then_hang(*args, **kwargs):
    path = write_mask(*args, **kwargs)
    written.append(path)
    if len(written) == 2:
        ready.write_text(str(path))
        time.sleep(600)
    return path
tcore.io.write_mask = write_then_hang
from tcore.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _five_frames_and_a_first_mask(tmp_path: Path) -> Path:
    """`tmp_path/frames/` (five 48x64 PNG frames of the demo clip) and `tmp_path/first.png`; returns the folder."""
    frames, masks = make_demo_clip(5, (48, 64), seed=1)
    video = tmp_path / "frames"
    video.mkdir()
    for t in range(5):
        Image.fromarray(frames[t]).save(video / f"{t:05d}.png")
    _palette_png(tmp_path / "first.png", masks[0])
    return video


def test_a_killed_propagate_leaves_no_incomplete_masks_in_sight_and_the_next_run_completes(tiny_model, tmp_path,
                                                                                          caplog):
    video = _five_frames_and_a_first_mask(tmp_path)
    out, ready = tmp_path / "masks", tmp_path / "ready"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    argv = ["propagate", str(video), str(tmp_path / "first.png"), "-o", str(out), "--model", str(tiny_model),
            "--size", "64", "96", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PROPAGATE, str(ready), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for(ready, proc)
        assert Path(ready.read_text()).parent == out / ".partial"  # written, but out of sight
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=_TIMEOUT)
    finally:
        proc.kill()
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["notes.txt", LOCK_NAME]  # no PNG: nothing incomplete looks finished
    with caplog.at_level("WARNING", logger="tcore.locks"):
        assert main(argv) == 0  # the next run takes the dead run's lock over and clears its leftovers
    assert any("took over the stale lock of a propagation run" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png", "00004.png",
                                                     "notes.txt"]


def test_a_staged_folder_shows_files_only_when_complete_and_never_touches_a_new_holders_files(tmp_path):
    import dataclasses

    from tcore.locks import LockHolder, LockLostError
    from tcore._outputs import PARTIAL_DIR, staged_folder

    out = tmp_path / "new" / "masks"
    with pytest.raises(KeyError):
        with staged_folder(out, "propagation") as staging:
            (staging / "00000.png").write_bytes(b"x")
            raise KeyError("a failure midway")
    assert not (tmp_path / "new").exists()  # nothing shown, and the folders it made are gone again
    with staged_folder(out, "propagation") as staging:
        (staging / "00000.png").write_bytes(b"x")
        assert list(out.glob("*.png")) == []
    assert sorted(p.name for p in out.iterdir()) == ["00000.png"]
    with pytest.raises(LockLostError):
        with staged_folder(out, "propagation") as staging:
            (staging / "00001.png").write_bytes(b"x")
            holder = json.loads((out / LOCK_NAME).read_text())  # a frozen run: another takes the folder over
            (out / LOCK_NAME).write_text(json.dumps(dataclasses.asdict(LockHolder(**{**holder, "token": "new"}))))
    assert (out / PARTIAL_DIR / "00001.png").exists() and (out / LOCK_NAME).exists()  # the new holder's now
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png"]


# The run, held in the main thread while it draws the overlay's third frame (masks and overlay half written).
_HELD_OVERLAY = """
import sys, time
from pathlib import Path
import tcore.io
module = sys.modules["tcore.io.overlay"]  # (tcore.io.overlay is also the name of the function)
ready, draw, drawn = Path(sys.argv[1]), module.overlay, []
def draw_then_hang(*args, **kwargs):
    drawn.append(1)
    if len(drawn) == 3:
        ready.touch()
        time.sleep(600)
    return draw(*args, **kwargs)
module.overlay = draw_then_hang
from tcore.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_stops_a_propagate_like_ctrl_c_removing_its_partial_files(tiny_model, tmp_path):
    pytest.importorskip("av")
    video = _five_frames_and_a_first_mask(tmp_path)
    out, overlay, ready = tmp_path / "masks", tmp_path / "overlay.mp4", tmp_path / "ready"
    argv = ["propagate", str(video), str(tmp_path / "first.png"), "-o", str(out), "--overlay", str(overlay),
            "--model", str(tiny_model), "--size", "64", "96", "--batch-size", "1", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", _HELD_OVERLAY, str(ready), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for(ready, proc)
        partial = list(tmp_path.glob(f".overlay.partial-{proc.pid}.mp4"))
        assert partial and any((out / ".partial").iterdir())  # the overlay and masks it was writing
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr.decode()[-3000:]
    assert stderr.decode().splitlines() == ["tcore: terminated (SIGTERM); partial outputs were removed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.png", "frames", "ready"]  # nothing left behind
