"""tcore.files.write_atomic: the one atomic writer of the project (results, Hub weights, checkpoints,
manifests, benchmark tables)."""
from __future__ import annotations

import os
import stat

import pytest

from tcore.files import write_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")

    def half(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(target, half)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_the_file_gets_the_permissions_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def test_durable_writes_create_the_folder_and_a_named_temporary_is_reused(tmp_path):
    target = tmp_path / "sub" / "ckpt.pt"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ckpt.pt.tmp").write_text("left by a killed writer")
    assert write_atomic(target, lambda tmp: open(tmp, "ab").write(b"new"), durable=True,
                        temporary=f"{target}.tmp") == target
    assert target.read_bytes() == b"new" and sorted(os.listdir(target.parent)) == ["ckpt.pt"]
    assert write_text_atomic(tmp_path / "new" / "dir" / "t.txt", "é").read_text(encoding="utf-8") == "é"


def test_a_temporary_in_another_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="temporary=.*same folder|must be in the folder"):
        write_atomic(tmp_path / "a", lambda tmp: None, temporary=tmp_path.parent / "a.tmp")
