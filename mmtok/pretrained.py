"""Strict, file-checked ``from_pretrained`` for mmtok's transformers models (the LM, the video and audio tokenizers).

transformers loads a folder with a missing tensor by initialising it at random and printing a table, and reports a
truncated weights file or a missing ``config.json`` in terms of files the folder never had. mmtok models are loaded
strictly instead: :class:`StrictLoadingMixin` checks the folder first (``config.json`` readable, every
``.safetensors`` file complete) and refuses missing or unexpected weights, with errors that name the file. Pass
``strict=False`` to ``from_pretrained`` to accept a partial load on purpose (e.g. adding a new head).

It also makes exports readable as the umask allows: safetensors writes its files with mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


class WeightsMismatchError(ValueError):
    """A checkpoint's tensors do not match the model: some are missing, unexpected or of another shape."""


def check_model_folder(path: str | os.PathLike) -> None:
    """Raise naming the file when a local ``save_pretrained`` folder cannot load: no folder, no or unreadable
    ``config.json``, no weights, or a ``.safetensors`` file that is empty, truncated or not safetensors. Anything that
    is not a local path (a hub id) is left to transformers."""
    folder = Path(path)
    if not folder.exists():
        if _looks_like_hub_id(str(path)):
            return
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a model folder (save_pretrained output): {folder}")
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: {CONFIG_NAME} is missing (not a save_pretrained folder, or an incomplete "
                                "copy of one)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config} is damaged (not valid JSON: {e})") from e
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is damaged ({type(e).__name__}: {e})") from e
    elif (folder / WEIGHTS_NAME).exists():
        shards = [WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"{folder}: {WEIGHTS_NAME} is missing (mmtok loads weights from safetensors only)")
    for name in shards:
        check_safetensors_file(folder / name)


def check_safetensors_file(path: Path) -> None:
    """Raise naming ``path`` unless it is a complete safetensors file (header and every tensor's bytes present)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    try:
        with safe_open(str(path), framework="pt") as f:  # checks the header against the file's length
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for each kind of damage
        raise ValueError(f"{path} is damaged or truncated ({type(e).__name__}: {e})") from e


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name``: what transformers would look up on a model hub rather than on disk."""
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def readable_as_umask_allows(folder: str | os.PathLike) -> None:
    """Give the files directly in ``folder`` the mode a plain ``open()`` would (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in Path(folder).iterdir():
        if p.is_file() and not p.is_symlink():
            p.chmod(0o666 & ~umask)


class StrictLoadingMixin:
    """``from_pretrained`` that checks the folder's files and refuses missing or unexpected weights (``strict``),
    and ``save_pretrained`` that leaves files readable as the umask allows. Put it before ``PreTrainedModel``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, strict: bool = True,
                        **kwargs: Any) -> Any:
        """transformers' ``from_pretrained`` plus the checks above.

        Args:
            strict: raise :class:`WeightsMismatchError` (naming the tensors) when the checkpoint lacks weights the
                model has, holds weights it does not have, or has them at another shape. ``False`` accepts such a
                load (transformers initialises what is missing) and leaves the details in ``output_loading_info``.
        """
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            check_model_folder(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        # transformers swaps layers for Hub kernels on load by default (`kernels`), fetching code on a GPU machine;
        # mmtok models load offline and run the layers they were trained with unless a caller asks otherwise.
        kwargs.setdefault("use_kernels", False)
        new_parts = tuple(cls._new_weight_prefixes(kwargs))
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args,  # type: ignore[misc]
                                              output_loading_info=True, **kwargs)
        problems = {kind: sorted(str(k) for k in info.get(key) or () if not (kind == "missing" and new_parts
                                                                             and str(k).startswith(new_parts)))
                    for kind, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                                      ("of another shape", "mismatched_keys"))}
        if strict and any(problems.values()):
            listed = "; ".join(f"{kind}: {', '.join(keys[:8])}" + (f" and {len(keys) - 8} more" if len(keys) > 8
                                                                     else "")
                               for kind, keys in problems.items() if keys)
            raise WeightsMismatchError(f"{pretrained_model_name_or_path}: the weights do not match {cls.__name__} "
                                       f"({listed}); pass strict=False to load it anyway")
        return (model, info) if want_info else model

    @classmethod
    def _new_weight_prefixes(cls, kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Parameter-name prefixes of parts that ``from_pretrained(**kwargs)`` adds to the saved model (and so
        starts fresh); a model class with such options overrides this."""
        return ()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        out = super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        if Path(save_directory).is_dir():
            readable_as_umask_allows(save_directory)
        return out
