"""Frame extraction (PyAV, parallel, resumable), its check of frame folders, and manifests.

A generated tree of 40 tiny videos, 8 of them broken in 7 ways (no stream at all, an audio stream
only, a video stream without frames, a faststart .mp4 cut short, garbage bytes, an empty file, a
decode error mid-stream, and a file this user cannot read, or when run as root an .mp4 cut before
its index): every video ends done, already done or failed with its reason, and training then runs
on the rest. A prepare SIGKILLed in the middle of a long video and run again gives the same
frames folder, byte for byte, as an uninterrupted run.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from training.prepare import extract_all, main, select_frames, too_few_decoded
from training.synthetic import make_frame_folders, make_video
from training.videos import scan_videos

REPO = Path(__file__).resolve().parents[1]


def test_select_fixed_number_of_frames():
    times = [i / 10 for i in range(30)]
    assert select_frames(times, num_frames=3) == [5, 15, 25]  # centres of 3 equal segments
    assert select_frames(times[:7], num_frames=20) == list(range(7))  # short videos keep every frame
    assert select_frames([], num_frames=5) == []


def test_select_frames_at_a_rate():
    times = [i / 10 for i in range(30)]  # 10 fps, 2.9 s
    # the frame nearest to each k/4 s; on a tie (0.25 s between 0.2 and 0.3) the earlier one
    assert select_frames(times, fps=4) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27]
    assert select_frames(times, fps=100) == list(range(30))  # never the same frame twice
    with pytest.raises(ValueError, match="fps"):
        select_frames(times)


def test_far_fewer_frames_than_declared_is_10_percent_with_2_frames_of_slack():
    assert too_few_decoded(8, 60) and not too_few_decoded(54, 60) and too_few_decoded(53, 60)
    assert not too_few_decoded(4, 6) and too_few_decoded(3, 6)
    assert not too_few_decoded(5, 0)  # a container that declares no count is not checked


# ------------------------------------------------------------------------------ the generated tree

def _noise_video(path: Path, frames: int, size: int, options: dict | None = None, codec: str = "mpeg4") -> Path:
    """Random frames (packets of realistic size); `options` go to the muxer (e.g. faststart)."""
    rng = np.random.default_rng(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _broken_videos(folder: Path) -> dict[str, str]:
    """Eight broken videos in `folder`: file name -> the reason prepare must give (a regex)."""
    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(folder / "no_streams.mp4"), "w") as container:  # a video stream without frames: the
        stream = container.add_stream("mpeg4", rate=10)          # mp4 muxer drops it, no stream is left
        stream.width = stream.height = 32
        container.start_encoding()
    with av.open(str(folder / "no_frames.avi"), "w") as container:  # AVI keeps the empty video stream
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        container.start_encoding()
    with av.open(str(folder / "audio_only.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    fast = _noise_video(folder / "full.mp4", 60, 32, {"movflags": "faststart"}).read_bytes()
    (folder / "full.mp4").unlink()
    (folder / "cut_faststart.mp4").write_bytes(fast[: len(fast) // 3])  # the index at the front survives
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    png = _noise_video(folder / "decode_error.mov", 8, 32, codec="png")
    with av.open(str(png)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(png.read_bytes())
    pos, size = packets[4]
    data[pos:pos + size] = bytes(size)  # frame 4 is zeros: the PNG decoder refuses it
    png.write_bytes(bytes(data))
    reasons = {
        "no_streams.mp4": r"no video stream \(streams: none\)",
        "no_frames.avi": r"no frame decoded \(the video stream holds no frame\)",
        "audio_only.mp4": r"no video stream \(streams: audio\)",
        "cut_faststart.mp4": r"far fewer frames decoded than the container declares: \d of 60 \(a file cut short\?\)",
        "garbage.mp4": r"not a video file FFmpeg can read \(Invalid data found when processing input\)",
        "empty.mp4": r"empty file \(0 bytes\)",
        "decode_error.mov": r"decode error at frame 4 \(Invalid data found when processing input\)",
    }
    if os.geteuid() != 0:  # root reads any file
        unreadable = make_video(folder / "unreadable.mp4", num_frames=6, size=(32, 32))
        unreadable.chmod(0)
        reasons["unreadable.mp4"] = r"cannot be read \(Permission denied\)"
    else:
        slow = _noise_video(folder / "slow.mp4", 60, 32).read_bytes()  # the index at the end is lost
        (folder / "slow.mp4").unlink()
        (folder / "cut_before_index.mp4").write_bytes(slow[: len(slow) // 3])
        reasons["cut_before_index.mp4"] = reasons["garbage.mp4"]
    return reasons


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """videos/train/class<k>/: 32 good 32x32 videos of 6 frames and 8 broken ones (in class0)."""
    root = tmp_path_factory.mktemp("tree") / "videos"
    for i in range(32):
        make_video(root / "train" / f"class{i % 4}" / f"good{i:02d}.mp4", num_frames=6, size=(32, 32))
    reasons = _broken_videos(root / "train" / "class0")
    yield root, reasons
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # let pytest clean up


def test_every_video_ends_done_already_done_or_failed_with_its_reason(tree, tmp_path, capsys,
                                                                   one_torch_thread):
    videos, reasons = tree
    frames = tmp_path / "frames"
    assert main(["frames", str(videos), str(frames), "--num-frames", "4", "--workers", "2"]) == 1
    failed = frames / "failed.txt"
    assert capsys.readouterr().out == f"40 videos: 32 done, 0 already done, 8 failed (reasons in {failed})\n"
    lines = failed.read_text().splitlines()
    assert len(lines) == 8
    for line, name in zip(lines, sorted(reasons)):
        assert re.fullmatch(rf"{videos / 'train' / 'class0' / name}: ({reasons[name]})", line), line
    good = scan_videos(frames, "kinetics")
    assert len(good) == 32 and all(len(os.listdir(frames / v)) == 4 for v in good)

    assert main(["frames", str(videos), str(frames), "--num-frames", "4", "--workers", "2"]) == 1  # a rerun
    assert capsys.readouterr().out == f"40 videos: 0 done, 32 already done, 8 failed (reasons in {failed})\n"
    assert failed.read_text().splitlines() == lines

    from training.pretrain import main as train  # training runs on the rest

    out = tmp_path / "run"
    assert train(["--config", "training/configs/tiny.yaml", f"data.root={frames}", "data.layout=kinetics",
                  f"train.output_dir={out}", "train.stop_at_step=1", "train.export_at_end=false"]) == 0
    assert len((out / "manifest.txt").read_text().split()) == 32


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_prepare_killed_in_a_long_video_and_rerun_equals_an_uninterrupted_one(tmp_path):
    videos = tmp_path / "videos"
    _noise_video(videos / "a" / "long.mp4", 400, 64)
    make_video(videos / "a" / "short.mp4", num_frames=6, size=(32, 32))
    (videos / "b").mkdir()
    (videos / "b" / "broken.mp4").write_bytes(b"not a video")
    cmd = [sys.executable, "-m", "training.prepare", "frames", str(videos), "--fps", "100", "--workers", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    assert subprocess.run([*cmd, str(tmp_path / "straight")], cwd=REPO, env=env, capture_output=True).returncode == 1

    frames = tmp_path / "frames"
    partial = frames / "a" / ".long.partial"
    killed = subprocess.Popen([*cmd, str(frames)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (partial.is_dir() and len(os.listdir(partial)) >= 20):
            assert killed.poll() is None and time.monotonic() < deadline, "the long video was never caught"
            time.sleep(0.005)
        killed.kill()  # SIGKILL, in the middle of the long video
    finally:
        killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL and partial.is_dir() and not (frames / "a" / "long").exists()
    rerun = subprocess.run([*cmd, str(frames)], cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 1 and "took over the stale lock" in rerun.stderr
    straight = _files(tmp_path / "straight")
    assert len(straight) == 400 + 6 + 1 and _files(frames) == straight  # frames and failed.txt, byte for byte


def test_a_crashing_decoder_fails_its_video_alone(tree, tmp_path, monkeypatch):
    import training.prepare as prepare

    extract = prepare.extract_frames

    def crash_on_good05(video, *args):  # forked workers run this one
        if video.name == "good05.mp4":
            os._exit(11)
        return extract(video, *args)

    monkeypatch.setattr(prepare, "extract_frames", crash_on_good05)
    videos, _ = tree
    done, skipped, failures = extract_all(videos, tmp_path / "frames", num_frames=2, workers=2)
    assert (done, skipped, len(failures)) == (31, 0, 9)
    assert f"{videos / 'train' / 'class1' / 'good05.mp4'}: the decoder crashed (its worker process died)" in failures


def test_check_lists_folders_with_too_few_frames_and_frames_that_do_not_decode(tmp_path, capsys):
    frames = tmp_path / "frames"
    folders = make_frame_folders(frames, [20, 7, 3, 12], size=(16, 16))  # train/class<i%3>/video<i>
    (folders[0] / "00005.jpg").write_bytes(b"\xff\xd8 cut")
    (frames / "train" / "class0" / ".video0009.partial").mkdir()  # a prepare's temporary folder: no video
    assert main(["check", str(frames), "--workers", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"{folders[1]}: 7 frames, too few for sandwich sampling with these windows (every sample "
                       "would be one frame three times)",
                       f"{folders[2]}: 3 frames, too few for sandwich sampling with these windows (every sample "
                       "would be one frame three times)"]
    assert out[2].startswith(f"{folders[0] / '00005.jpg'}: does not decode (")
    assert out[3:] == ["4 videos checked: 3 problems"]
    assert main(["check", str(frames), "--config", "training/configs/vits16_k400.yaml", "--workers", "1"]) == 1
    assert capsys.readouterr().out.splitlines() == out  # the recipe's windows, layout and split
    assert main(["check", str(frames), "--min-frames", "15", "--workers", "1"]) == 1
    assert f"{folders[3]}: 12 frames, fewer than --min-frames 15" in capsys.readouterr().out
    (folders[0] / "00005.jpg").unlink()
    for folder in folders[1:3]:
        for frame in folder.iterdir():
            frame.unlink()
        folder.rmdir()
    assert main(["check", str(frames), "--workers", "1"]) == 0


def test_prepare_starts_without_torch():
    code = "import sys, training.prepare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"  # a prepare (and each of its workers) starts in a fraction of a second


@pytest.mark.parametrize("layout", ["kinetics", "folders"])
def test_hidden_and_partial_folders_are_never_videos(layout, tmp_path):
    videos = [Path("train/c/v1"), Path("train/c/.v2.partial"), Path("train/c/v3.partial"), Path("train/.c/v4"),
              Path("train/c/.hidden")]
    for video in videos:
        (tmp_path / video).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / video / "00000.jpg")
    assert scan_videos(tmp_path, layout) == ["train/c/v1"]


@pytest.fixture
def videos(tmp_path):
    make_video(tmp_path / "videos" / "train" / "a" / "v1.mp4", num_frames=30)
    make_video(tmp_path / "videos" / "train" / "b" / "v2.mp4", num_frames=7)
    return tmp_path / "videos"


def test_extract_mirrors_the_tree_and_resumes(videos, tmp_path):
    out = tmp_path / "frames"
    assert extract_all(videos, out, num_frames=20, workers=2) == (2, 0, [])
    v1 = sorted((out / "train" / "a" / "v1").iterdir())
    assert [p.name for p in v1] == [f"{i:05d}.jpg" for i in range(20)]
    assert len(list((out / "train" / "b" / "v2").iterdir())) == 7
    brightness = [np.asarray(Image.open(p)).mean() for p in v1]
    assert brightness[0] < brightness[10] < brightness[19]  # frames in time order (brightness 8 t)
    assert extract_all(videos, out, num_frames=20, workers=2) == (0, 2, [])  # second run: all done


def test_interrupted_video_is_redone(videos, tmp_path):
    out = tmp_path / "frames"
    partial = out / "train" / "a" / ".v1.partial"
    partial.mkdir(parents=True)
    (partial / "00000.jpg").write_bytes(b"truncated")
    assert extract_all(videos, out, fps=5, short_side=24, workers=2) == (2, 0, [])
    assert not partial.exists() and Image.open(out / "train" / "a" / "v1" / "00000.jpg").size == (32, 24)


def test_cli_frames_and_manifest(videos, tmp_path, capsys):
    out = tmp_path / "frames"
    assert main(["frames", str(videos), str(out), "--num-frames", "4", "--workers", "1"]) == 0
    assert main(["manifest", str(out), "-o", str(tmp_path / "m.txt")]) == 0
    assert (tmp_path / "m.txt").read_text().split() == ["train/a/v1", "train/b/v2"]
    assert main(["frames", str(tmp_path / "nope"), str(out), "--fps", "1"]) == 1
    assert capsys.readouterr().err == f"training.prepare: error: {tmp_path / 'nope'}: no such folder of videos\n"
    with pytest.raises(SystemExit):
        main(["frames", str(videos), str(out)])  # --fps or --num-frames is required
