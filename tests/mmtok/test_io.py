"""Atomic writes and the progress-bar switch (mmtok.io)."""

import os

import pytest

from mmtok.io import atomic_output, atomic_write, progress_enabled, replace_path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_text_and_bytes_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"                   # the folder is created
    assert atomic_write(path, '{"step": 1}\n') == path
    assert path.read_text() == '{"step": 1}\n'
    atomic_write(path, b"\x00\x01 replaced")
    assert path.read_bytes() == b"\x00\x01 replaced"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_atomic_write_gives_the_mode_a_plain_open_gives(tmp_path):
    path = atomic_write(tmp_path / "a.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="encoder died"):
        with atomic_output(path) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".clip.tmp") and tmp.suffix == ".mp4"
            tmp.write_text("half a vid")
            raise RuntimeError("encoder died")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_atomic_output_replaces_a_folder(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.bin").write_text("from the previous export")
    with atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_replace_path_moves_a_finished_folder_over_an_older_one(tmp_path):
    (tmp_path / ".step.tmp").mkdir()
    (tmp_path / ".step.tmp" / "new").write_text("1")
    (tmp_path / "step").mkdir()
    (tmp_path / "step" / "old").write_text("0")
    replace_path(tmp_path / ".step.tmp", tmp_path / "step")
    assert [p.name for p in (tmp_path / "step").iterdir()] == ["new"]
    assert not (tmp_path / ".step.tmp").exists()


@pytest.mark.parametrize("value, on", [(None, True), ("1", True), ("yes", True), ("0", False), ("false", False),
                                       ("", False)])
def test_progress_enabled_reads_MMTOK_PROGRESS(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("MMTOK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("MMTOK_PROGRESS", value)
    assert progress_enabled() is on
