"""Training helpers shared by the recipes: config, run folder, logs, atomic checkpoints, EMA.

Recipes keep their training loops visible; this module only holds the plumbing every loop needs. It is the one
place (with the recipes themselves) allowed to import accelerate.

Config: a recipe declares a dataclass of defaults; :func:`load_config` merges, in order, the dataclass, a YAML file
(``--config``) and dotted ``key=value`` overrides from the command line (OmegaConf), and :func:`dump_config` writes
the resolved result into the run folder.

Checkpoints: :func:`save_checkpoint` writes ``<run>/checkpoints/step_XXXXXXXX`` through a temporary folder and an
``os.replace``, then points ``<run>/checkpoints/latest`` at it with another atomic rename, so a job killed at any
instant leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
from omegaconf import OmegaConf

T = TypeVar("T")

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


# --------------------------------------------------------------------------------------------------------- config
def build_arg_parser(description: str) -> argparse.ArgumentParser:
    """The flags every recipe shares: ``--config``, ``--resume`` and free ``dotted.key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=str, default=None, help="YAML file merged over the defaults")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
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
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


# ---------------------------------------------------------------------------------------------------------- files
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder the ``latest`` pointer names, or ``None`` when the run has no complete checkpoint."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    if not (target / "trainer_state.json").is_file():
        raise FileNotFoundError(f"checkpoint pointer {pointer} names {target}, which is missing or incomplete")
    return target


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
    root = checkpoint_root(run_dir)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp"
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
        atomic_write_text(tmp / "trainer_state.json", json.dumps({**trainer_state, "step": step}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, name)
        complete = sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").is_file())
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, run_dir: str | os.PathLike,
                    extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Restore the latest checkpoint of ``run_dir`` into the accelerator; returns its trainer state (or ``None``)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    accelerator.load_state(str(ckpt))
    for key, obj in (extra or {}).items():
        path = ckpt / f"{key}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} has no {path.name} (saved without {key}?)")
        obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return json.loads((ckpt / "trainer_state.json").read_text())


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
            atomic_write_text(self.path, "".join(r + "\n" for r in rows))
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


def progress_enabled() -> bool:
    """Progress bars are on unless ``MMTOK_PROGRESS=0`` (tests set it to keep their logs short)."""
    return os.environ.get("MMTOK_PROGRESS", "1") not in ("0", "", "false")
