"""Token shards: what ``recipes/tokenize_dataset.py`` writes and :mod:`mmtok.data.loader` reads.

A tokenized dataset is a folder::

    plan.json                       the job: records per shard, settings, vocabulary fingerprint (written first)
    shards/shard-00000-of-00008.arrow   Arrow IPC stream files with HF ``datasets`` features (memory-mapped)
    shards/shard-00000-of-00008.bad.json  that shard's bad-file report
    bad_files.json                  all skipped files (id, file, reason), with counts per reason
    dataset.json                    written last: shards, row counts, features, vocabulary fingerprint

One row per clip, NOT task-formatted (so the task mixture can change without re-tokenizing), local codes of each
tokenizer (not global vocabulary ids):

===============  ========================  ===================================================================
column           type                      meaning
===============  ========================  ===================================================================
``id``           string                    the record id
``split``        string                    the record's split ("" when none)
``captions``     list[string]              the captions
``text_ids``     list[list[int32]]         local text ids, one list per caption
``video_codes``  list[int32]               video codes ``[T', H', W']`` flattened in (t, h, w) order (empty: none)
``video_shape``  list[int32]               ``[T', H', W']`` (empty when there is no video)
``audio_codes``  list[int32]               audio codes ``[n_q, F]`` flattened row by row (level-major; empty: none)
``audio_shape``  list[int32]               ``[n_q, F]`` (empty when there is no audio)
``num_frames``   int32                     decoded video frames (0 without video)
``num_samples``  int32                     decoded audio samples (0 without audio)
``meta``         string                    JSON: the record's other manifest fields, start and end
===============  ========================  ===================================================================

Shard files are written to a temporary name and renamed, so a shard file that exists is complete; the bytes of a
shard are a deterministic function of its records and the tokenizers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch

from mmtok.io import atomic_output

__all__ = [
    "DATASET_FILE",
    "FEATURES",
    "PLAN_FILE",
    "TokenRow",
    "load_token_dataset",
    "make_row",
    "read_dataset_info",
    "row_codes",
    "shard_name",
    "write_shard",
]

PLAN_FILE = "plan.json"
DATASET_FILE = "dataset.json"
BAD_FILES = "bad_files.json"
SHARD_DIR = "shards"

_I32 = datasets.Value("int32")
FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "split": datasets.Value("string"),
    "captions": datasets.List(datasets.Value("string")),
    "text_ids": datasets.List(datasets.List(_I32)),
    "video_codes": datasets.List(_I32),
    "video_shape": datasets.List(_I32),
    "audio_codes": datasets.List(_I32),
    "audio_shape": datasets.List(_I32),
    "num_frames": _I32,
    "num_samples": _I32,
    "meta": datasets.Value("string"),
})

TokenRow = dict  # one row of FEATURES


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}"


def _int_list(x: Any) -> list[int]:
    if x is None:
        return []
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise ValueError("codes do not fit in int32")
    return arr.astype(np.int64).reshape(-1).tolist()


def make_row(*, id: str, split: str | None, captions: Sequence[str], text_ids: Sequence[Sequence[int]],
             video: Any = None, audio: Any = None, num_frames: int = 0, num_samples: int = 0,
             meta: dict[str, Any] | None = None) -> TokenRow:
    """One shard row from local codes: ``video`` LongTensor ``[T', H', W']``, ``audio`` ``[n_q, F]`` (or None)."""
    if video is not None and torch.as_tensor(video).dim() != 3:
        raise ValueError(f"video codes must be [T', H', W'], got shape {tuple(torch.as_tensor(video).shape)}")
    if audio is not None and torch.as_tensor(audio).dim() != 2:
        raise ValueError(f"audio codes must be [n_q, frames], got shape {tuple(torch.as_tensor(audio).shape)}")
    if len(text_ids) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(text_ids)} text id lists")
    return {
        "id": str(id), "split": split or "", "captions": list(captions),
        "text_ids": [_int_list(t) for t in text_ids],
        "video_codes": _int_list(video), "video_shape": list(torch.as_tensor(video).shape) if video is not None else [],
        "audio_codes": _int_list(audio), "audio_shape": list(torch.as_tensor(audio).shape) if audio is not None else [],
        "num_frames": int(num_frames), "num_samples": int(num_samples),
        "meta": json.dumps(meta or {}, sort_keys=True, default=str),
    }


def row_codes(row: TokenRow) -> dict[str, Any]:
    """Local codes of a shard row as tensors: ``{"text": list[list[int]], "video": LongTensor [T', H', W'] | None,
    "audio": LongTensor [n_q, F] | None}``."""
    video = audio = None
    if row["video_shape"]:
        video = torch.tensor(row["video_codes"], dtype=torch.long).reshape(*row["video_shape"])
    if row["audio_shape"]:
        audio = torch.tensor(row["audio_codes"], dtype=torch.long).reshape(*row["audio_shape"])
    return {"text": [list(t) for t in row["text_ids"]], "video": video, "audio": audio}


def write_shard(path: str | os.PathLike, rows: Sequence[TokenRow]) -> Path:
    """Write rows as one Arrow IPC stream file (the format ``datasets`` memory-maps), atomically."""
    path = Path(path)
    table = pa.Table.from_pylist(list(rows), schema=FEATURES.arrow_schema)
    with atomic_output(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return path


def read_dataset_info(root: str | os.PathLike) -> dict[str, Any]:
    """``dataset.json`` of a finished tokenization; raises ``FileNotFoundError`` naming an unfinished one."""
    path = Path(root) / DATASET_FILE
    if not path.is_file():
        plan = Path(root) / PLAN_FILE
        hint = " (a plan exists: the tokenization did not finish; rerun it to resume)" if plan.is_file() else ""
        raise FileNotFoundError(f"no {DATASET_FILE} in {root}: not a finished token dataset{hint}")
    return json.loads(path.read_text())


def _open_shard(path: str) -> datasets.Dataset:
    """One memory-mapped shard; a damaged file is an error that names it (Arrow's own says only what broke)."""
    try:
        shard = datasets.Dataset.from_file(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise ValueError(f"token shard {path} is damaged ({type(e).__name__}: {e}); re-run the tokenization into "
                         "a new folder") from e
    return shard


def load_token_dataset(root: str | os.PathLike, *, split: str | None = None, streaming: bool = False
                       ) -> datasets.Dataset | datasets.IterableDataset:
    """Open a tokenized dataset.

    Args:
        root: the output folder of ``recipes/tokenize_dataset.py``.
        split: keep rows of this split only (``None``: all).
        streaming: ``False`` -> a memory-mapped :class:`datasets.Dataset` (random access, nothing copied into RAM);
            ``True`` -> a :class:`datasets.IterableDataset` over the shard files (for corpora larger than RAM;
            split it across ranks with ``datasets.distributed.split_dataset_by_node``).
    """
    root = Path(root)
    info = read_dataset_info(root)
    files = [str(root / SHARD_DIR / s["file"]) for s in info["shards"]]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard files listed in {root / DATASET_FILE} are missing, e.g. "
                                f"{missing[0]}")
    if streaming:
        ds: Any = datasets.load_dataset("arrow", data_files=files, split="train", streaming=True, features=FEATURES)
    else:
        parts = [_open_shard(f) for f in files]
        ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if split is not None:
        if streaming:
            ds = ds.filter(lambda s: s == split, input_columns="split")
        else:  # an in-memory index list: nothing is written beside the shards
            ds = ds.select([i for i, s in enumerate(ds["split"]) if s == split])
    return ds
