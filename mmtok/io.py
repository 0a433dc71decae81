"""Output plumbing shared by the library and the recipes: atomic writes and whether to draw progress bars.

Atomic writes: whatever mmtok writes (a JSON file, a video, a token shard, a checkpoint or export folder) is first
written under a temporary name beside its destination and then renamed onto it, so a reader, or a job killed at any
instant, sees the old output or the new one, never part of one. :func:`atomic_write` writes a whole text or bytes
file; :func:`atomic_output` hands out the temporary path for writers that produce the file or folder themselves
(PyAV, Arrow, ``save_pretrained``); :func:`replace_path` is the final rename, for the one caller whose temporary
folder is shared by several processes (distributed checkpoints). Temporaries are created like any file (``open``,
``mkdir``), so outputs get the mode the umask allows.

Progress bars: :func:`progress_enabled` reads ``MMTOK_PROGRESS``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output", "atomic_write", "progress_enabled", "replace_path"]


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically, creating its folder; returns the path.

    The data is flushed to disk before the rename, so after a crash the file holds the old content or the new.
    """
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or a folder into; it replaces ``path`` when the block
    ends without error and is removed when it raises (``path`` is then left as it was).

    The temporary is ``.<stem>.tmp<pid><suffix>`` in ``path``'s folder (created if needed): hidden, so folder
    listings skip it; unique per process, so concurrent writers never share one; on the same file system, so the
    rename is atomic; with the suffix kept, so writers that pick a format by extension still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    _remove(tmp)  # left by a killed process that had the same id
    try:
        yield tmp
        replace_path(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def replace_path(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished file or folder ``tmp`` onto ``path``.

    A file replaces a file in one atomic step. A rename cannot replace a folder that has content, so an existing
    folder at ``path`` is deleted first: between the two steps ``path`` is briefly absent (never half-written).
    """
    path = Path(path)
    if Path(tmp).is_dir() and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def progress_enabled() -> bool:
    """Whether to draw progress bars: yes unless ``MMTOK_PROGRESS`` is ``0``, ``false`` or empty (the tests set
    ``0`` to keep their logs short). Every function with a ``progress=None`` argument defaults to this."""
    return os.environ.get("MMTOK_PROGRESS", "1") not in ("0", "false", "")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
