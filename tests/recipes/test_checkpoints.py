"""recipes/common.py checkpoints: atomic folders, the ``latest`` pointer, pruning, and no rename while a rank writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipes.common import latest_checkpoint, load_checkpoint, save_checkpoint


class SlowRankAccelerator:
    """A main process whose peer rank finishes writing its own files into the checkpoint folder only when the
    main process reaches the next barrier (what DeepSpeed shards and per-process RNG states do)."""

    is_main_process = True
    process_index = 1  # checks the files of rank 1, the slow one
    distributed_type = "MULTI_CPU"
    _models = _optimizers = _schedulers = ()

    def __init__(self):
        self._writing: Path | None = None
        self.loaded: str | None = None

    def save_state(self, path: str) -> None:
        Path(path, "model.safetensors").write_text("weights")
        self._writing = Path(path)

    def wait_for_everyone(self) -> None:
        if self._writing is not None:  # fails if the folder was renamed away
            torch.save({"torch_manual_seed": torch.get_rng_state()}, self._writing / "random_states_1.pkl")
            self._writing = None

    def load_state(self, path: str) -> None:
        self.loaded = path


def test_checkpoint_holds_every_rank_files_and_moves_the_pointer(tmp_path):
    acc = SlowRankAccelerator()
    final = save_checkpoint(acc, tmp_path, 10, {"epoch": 1})
    assert final.name == "step_00000010"
    assert {p.name for p in final.iterdir()} == {"model.safetensors", "random_states_1.pkl", "trainer_state.json"}
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    assert latest_checkpoint(tmp_path) == final
    assert load_checkpoint(acc, tmp_path) == {"epoch": 1, "step": 10}
    assert acc.loaded == str(final)


def test_checkpoints_are_pruned_to_keep_and_a_broken_pointer_falls_back(tmp_path):
    acc = SlowRankAccelerator()
    for step in (1, 2, 3):
        save_checkpoint(acc, tmp_path, step, {}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert json.loads((root / "step_00000003" / "trainer_state.json").read_text())["step"] == 3
    (root / "step_00000003" / "trainer_state.json").unlink()
    with pytest.warns(UserWarning, match="missing or incomplete; using the newest complete checkpoint step_00000002"):
        assert latest_checkpoint(tmp_path) == root / "step_00000002"
    (root / "step_00000002" / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        latest_checkpoint(tmp_path)


def test_damaged_checkpoint_files_are_named(tmp_path):
    from recipes.common import CheckpointError

    acc = SlowRankAccelerator()
    final = save_checkpoint(acc, tmp_path, 5, {})
    (final / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="trainer_state.json is damaged"):
        load_checkpoint(acc, tmp_path)
    final = save_checkpoint(acc, tmp_path, 6, {})
    (final / "random_states_1.pkl").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="random_states_1.pkl is damaged"):
        load_checkpoint(acc, tmp_path)
    assert acc.loaded is None  # nothing was restored from a damaged checkpoint
    acc._custom_objects = [object()]
    with pytest.raises(CheckpointError, match="register_for_checkpointing"):
        save_checkpoint(acc, tmp_path, 7, {})


def test_no_checkpoint_loads_as_none(tmp_path):
    assert load_checkpoint(SlowRankAccelerator(), tmp_path) is None
