"""Training helpers shared by the recipes: config, run folder, logs, atomic checkpoints, EMA.

Recipes keep their training loops visible; this module only holds the plumbing every loop needs. It is the one
place (with the recipes themselves) allowed to import accelerate.

Config: a recipe declares a dataclass of defaults; :func:`load_config` merges, in order, the dataclass, a YAML file
(``--config``) and dotted ``key=value`` overrides from the command line (OmegaConf), and :func:`dump_config` writes
the resolved result into the run folder. Every trainer exports its final model to ``export_dir``, by default
``<run_dir>/export`` (:func:`export_path`).

Checkpoints: :func:`save_checkpoint` writes ``<run>/checkpoints/step_XXXXXXXX`` through a temporary folder and a
rename (:func:`mmtok.io.replace_path`), then points ``<run>/checkpoints/latest`` at it with an atomic write, so a job
killed at any instant leaves either the previous checkpoint or the new one, never half of one. Nothing in a
checkpoint is unpickled: weights are safetensors, the optimizer and random states go through
``torch.load(weights_only=True)`` (accelerate's loader), loop state (the LR scheduler's included) is JSON, and custom
pickled objects (``accelerator.register_for_checkpointing``) are refused. :func:`load_checkpoint` restores every state
it saved or raises :class:`CheckpointError` naming the file (``--allow-inexact-resume`` turns missing random states
into a warning).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
from omegaconf import OmegaConf

from mmtok.io import atomic_write, replace_path

T = TypeVar("T")

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
EXPORT_DIR = "export"  # <run_dir>/export: the trainers' default export folder


# --------------------------------------------------------------------------------------------------------- config
def build_arg_parser(description: str) -> argparse.ArgumentParser:
    """The flags every recipe shares: ``--config``, ``--resume`` and free ``dotted.key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=str, default=None, help="YAML file merged over the defaults")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    parser.add_argument("--allow-inexact-resume", action="store_true",
                        help="resume even when the checkpoint's random states are missing or damaged (with a warning: "
                             "the run is then no longer reproducible)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.preset=debug")
    return parser


def load_config(defaults: type[T] | T, config_path: str | os.PathLike | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Merge dataclass defaults <- YAML file <- dotted CLI overrides; returns an instance of the dataclass.

    Unknown keys raise an error naming the key (OmegaConf structured configs are strict), so a typo in a YAML file
    or an override never trains silently with the default.
    """
    if not (is_dataclass(defaults)):
        raise TypeError(f"defaults must be a dataclass or dataclass instance, got {type(defaults).__name__}")
    base = OmegaConf.structured(defaults)
    layers = [base]
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        layers.append(OmegaConf.load(path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value, got {bad}")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    merged = OmegaConf.merge(*layers)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def dump_config(cfg: Any, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config into the run folder (atomically) and return its path."""
    path = Path(run_dir) / name
    atomic_write(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def export_path(run_dir: str | os.PathLike, *, export_dir: str | os.PathLike | None = None) -> Path:
    """Where a trainer writes its final model: ``export_dir``, else ``<run_dir>/export``.

    The one layout of the video tokenizer, audio tokenizer and LM trainers (each takes a top-level ``export_dir``
    setting), so whatever reads a run's result (the demo, the evaluation recipes) finds it in the same place.
    """
    return Path(export_dir) if export_dir else Path(run_dir) / EXPORT_DIR


# ------------------------------------------------------------------------------------------------- debug data
def demo_corpus(run_dir: str | os.PathLike, num_clips: int, *, seed: int = 0) -> Path:
    """The manifest of a small Moving-Digits corpus under ``<run_dir>/corpus``, generated on first use (``num_clips``
    clips at the generator's defaults: 9 frames of 32x32 at 8 fps with their audio): the input of the debug
    tokenizer configs, so that they run from a fresh clone. Needs the ``demo`` extra (scikit-learn, SciPy)."""
    from mmtok.datasets.moving_digits import generate_corpus

    out = Path(run_dir) / "corpus"
    manifest = out / "manifest.jsonl"   # written last: its presence marks a complete corpus
    return manifest if manifest.exists() else generate_corpus(out, num_clips=num_clips, seed=seed, num_workers=0)



# --------------------------------------------------------------------------------------------------- LR schedule
def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float, peak: float = 1.0) -> float:
    """The learning-rate schedule of every trainer, at optimizer step ``step`` (counted from 0): a linear warm-up
    ``peak * (step + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then a half cosine from ``peak`` down
    to ``peak * min_ratio`` at ``total_steps``, and ``peak * min_ratio`` after that.

    ``peak=1`` gives the factor ``torch.optim.lr_scheduler.LambdaLR`` multiplies the base learning rate by (the LM
    and audio trainers; the scheduler's state is the step, so a checkpoint restores it); the video trainer passes its
    learning rate and sets the result by hand each step. transformers' ``get_cosine_with_min_lr_schedule_with_warmup``
    has the same shape but other numbers: its warm-up starts at 0 (``step / warmup_steps``, so the first step does
    not train) and its cosine turns back up after ``total_steps``.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored exactly: a file is missing, damaged or unsafe to load (the message names it)."""


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's complete checkpoint folders (those with ``trainer_state.json``), oldest first."""
    root = checkpoint_root(run_dir)
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "trainer_state.json").is_file())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder the ``latest`` pointer names, or ``None`` when the run has no complete checkpoint.

    A missing pointer, or one naming an incomplete folder, falls back to the newest complete checkpoint (with a
    warning): the pointer is a convenience, the ``step_*`` folders are the record."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    complete = complete_checkpoints(run_dir)
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / "trainer_state.json").is_file():
            return target
        if not complete:
            raise FileNotFoundError(f"checkpoint pointer {pointer} names {target}, which is missing or incomplete, "
                                    "and the run has no other complete checkpoint")
        warnings.warn(f"checkpoint pointer {pointer} names {target}, which is missing or incomplete; using the newest "
                      f"complete checkpoint {complete[-1].name}", stacklevel=2)
    elif complete:
        warnings.warn(f"checkpoint pointer {pointer} is missing; using the newest complete checkpoint "
                      f"{complete[-1].name}", stacklevel=2)
    return complete[-1] if complete else None


def _refuse_pickled_objects(accelerator: Any) -> None:
    if getattr(accelerator, "_custom_objects", None):
        raise CheckpointError("objects registered with accelerator.register_for_checkpointing are saved as pickles "
                              "and unpickled on load; mmtok keeps such state in trainer_state.json (JSON) instead")


def save_checkpoint(accelerator: Any, run_dir: str | os.PathLike, step: int, trainer_state: dict[str, Any],
                    keep: int = 2, extra: dict[str, Any] | None = None) -> Path | None:
    """Save an ``accelerator.save_state`` checkpoint atomically and move the ``latest`` pointer to it.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (models, optimizers, schedulers and RNG states registered
            with ``prepare``/``register_for_checkpointing`` are saved by it).
        run_dir: the run folder; checkpoints go to ``run_dir/checkpoints``.
        step: the optimizer step the checkpoint is taken after.
        trainer_state: JSON-serializable loop state (step, epoch, data position, ...), restored by
            :func:`load_checkpoint`.
        keep: how many complete checkpoints to keep (older ones are deleted after the pointer moved).
        extra: objects with ``state_dict()`` to save beside (e.g. an EMA), as ``<name>.pt`` files.

    Every process must call this (DeepSpeed saves shards from every rank); only the main process renames.
    """
    _refuse_pickled_objects(accelerator)
    root = checkpoint_root(run_dir)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp"  # one name for every rank: each writes its own files into it
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Every rank writes its own files (DeepSpeed optimizer shards, per-process RNG states); none may be renamed
    # away before the slowest rank is done.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for key, obj in (extra or {}).items():
            torch.save(obj.state_dict(), tmp / f"{key}.pt")
        atomic_write(tmp / "trainer_state.json", json.dumps({**trainer_state, "step": step}, indent=1))
        replace_path(tmp, final)
        atomic_write(root / LATEST, name)
        complete = sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").is_file())
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_checkpoint_files(accelerator: Any, ckpt: Path, allow_inexact: bool = False) -> None:
    """Raise :class:`CheckpointError` naming the first file of ``ckpt`` that ``accelerator.load_state`` needs and
    that is missing or damaged. accelerate itself only logs (at INFO) random states it cannot read and goes on, which
    would make a resumed run silently differ; with ``allow_inexact`` that case is a warning instead."""
    from accelerate.utils import DistributedType
    from accelerate.utils import load as safe_torch_load  # torch.load(weights_only=True) with numpy arrays allowed

    from mmtok.pretrained import check_safetensors_file

    needed = []
    if accelerator.distributed_type != DistributedType.DEEPSPEED:  # DeepSpeed checks its own shard files
        needed += [ckpt / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
                   for i in range(len(accelerator._models))]
        needed += [ckpt / ("optimizer.bin" if i == 0 else f"optimizer_{i}.bin")
                   for i in range(len(accelerator._optimizers))]
    needed += [ckpt / ("scheduler.bin" if i == 0 else f"scheduler_{i}.bin")
               for i in range(len(accelerator._schedulers))]
    for path in needed:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is missing {path.name}; resume from another checkpoint or start "
                                  "the run again")
        if path.suffix == ".safetensors":
            try:
                check_safetensors_file(path)
            except ValueError as e:
                raise CheckpointError(str(e)) from e
    planted = sorted(p.name for p in ckpt.glob("custom_checkpoint_*.pkl"))
    if planted:  # accelerate would unpickle these with weights_only=False
        raise CheckpointError(f"checkpoint {ckpt} holds pickled custom state ({', '.join(planted)}), which mmtok "
                              "never loads (unpickling can run code). A checkpoint of an older mmtok keeps its LR "
                              "schedule there, which mmtok rebuilds from the step: delete the file(s) to resume")
    rng = ckpt / f"random_states_{accelerator.process_index}.pkl"
    problem = None
    if not rng.is_file():
        problem = f"checkpoint {ckpt} is missing {rng.name}"
    else:
        try:
            states = safe_torch_load(rng)
            if not isinstance(states, dict) or "torch_manual_seed" not in states:
                problem = f"{rng} does not hold random states"
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            problem = f"{rng} is damaged or unsafe to load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    if problem is not None:
        if not allow_inexact:
            raise CheckpointError(f"{problem}: the run cannot resume exactly. Pass --allow-inexact-resume to go on "
                                  "with fresh random states (the run is then no longer reproducible)")
        warnings.warn(f"{problem}; resuming with the current random states: the run is no longer reproducible",
                      stacklevel=2)


def load_checkpoint(accelerator: Any, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None,
                    allow_inexact: bool = False) -> dict[str, Any] | None:
    """Restore the latest checkpoint of ``run_dir`` into the accelerator; returns its trainer state (or ``None``).

    Every file the checkpoint needs is checked first (:func:`check_checkpoint_files`); errors name the file."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    _refuse_pickled_objects(accelerator)
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt / 'trainer_state.json'} is damaged: {e}") from e
    check_checkpoint_files(accelerator, ckpt, allow_inexact)
    for key in extra or {}:
        if not (ckpt / f"{key}.pt").is_file():
            raise CheckpointError(f"checkpoint {ckpt} has no {key}.pt (saved without {key}?)")
    try:
        accelerator.load_state(str(ckpt))
    except Exception as e:  # noqa: BLE001 - name the checkpoint whatever failed inside accelerate
        raise CheckpointError(f"could not restore checkpoint {ckpt}: {type(e).__name__}: {e}") from e
    for key, obj in (extra or {}).items():
        path = ckpt / f"{key}.pt"
        try:
            obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path} is damaged or unsafe to load: {type(e).__name__}: {e}") from e
    return state


# ------------------------------------------------------------------------------------------------------------ logs
class RunLogger:
    """Metrics to ``<run>/metrics.jsonl`` (one JSON object a line) and, when available, TensorBoard.

    Only the main process writes; other ranks get a logger that does nothing. A resumed run appends and drops
    rows at or past the resume step first, so the file never holds a step twice.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", -1) <= resume_step]
            atomic_write(self.path, "".join(r + "\n" for r in rows))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but logging must never kill a run
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().float().item()
            row[key] = value
            if self._tb is not None and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ------------------------------------------------------------------------------------------------------------- EMA
class ModelEMA:
    """Exponential moving average of a model's parameters (and a copy of its buffers), kept on the model's device.

    ``update(model)`` after each optimizer step; ``ema.module`` is the averaged model to evaluate or export.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        # Warm up the decay so early averages are not dominated by the random initialisation.
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        ema_params = dict(self.module.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach(), 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            ema_buffers[name].copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])


def cpu_accelerator_kwargs() -> dict[str, Any]:
    """Extra ``Accelerator`` kwargs so multi-process runs work on CPU (gloo, since nccl needs GPUs).

    Empty for a plain single-process run: a backend handler there makes accelerate expect a process group that no
    launcher created ("Default process group has not been initialized").
    """
    from accelerate.utils import InitProcessGroupKwargs

    if torch.cuda.is_available():
        return {}
    launched = (int(os.environ.get("WORLD_SIZE", "1")) > 1
                or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true")
    if not launched:
        return {}
    return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
