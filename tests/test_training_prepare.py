"""Frame extraction (PyAV, parallel, resumable) and manifests."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")

from training.prepare import extract_all, main, select_frames
from training.synthetic import make_video


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


def test_interrupted_video_is_redone_and_bad_files_are_reported(videos, tmp_path):
    out = tmp_path / "frames"
    partial = out / "train" / "a" / ".v1.partial"
    partial.mkdir(parents=True)
    (partial / "00000.jpg").write_bytes(b"truncated")
    (videos / "train" / "b" / "broken.mp4").write_bytes(b"not a video")
    done, skipped, failures = extract_all(videos, out, fps=5, short_side=24, workers=2)
    assert (done, skipped) == (2, 0) and len(failures) == 1 and "broken.mp4" in failures[0]
    assert not partial.exists() and Image.open(out / "train" / "a" / "v1" / "00000.jpg").size == (32, 24)
    assert (out / "failed.txt").read_text().startswith(str(videos / "train" / "b" / "broken.mp4"))


def test_cli_frames_and_manifest(videos, tmp_path):
    out = tmp_path / "frames"
    assert main(["frames", str(videos), str(out), "--num-frames", "4", "--workers", "1"]) == 0
    assert main(["manifest", str(out), "-o", str(tmp_path / "m.txt")]) == 0
    assert (tmp_path / "m.txt").read_text().split() == ["train/a/v1", "train/b/v2"]
    with pytest.raises(SystemExit):
        main(["frames", str(videos), str(out)])  # --fps or --num-frames is required
