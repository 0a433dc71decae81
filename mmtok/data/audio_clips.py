"""Mono waveforms for codec training and evaluation: a manifest and/or files and folders, decoded on first use
(PyAV) and kept in memory, with seeded random crops. Bad files are skipped and counted, never fatal."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

__all__ = ["AudioClips"]


class AudioClips:
    """Mono waveforms from a manifest and/or files and folders, decoded on first use (PyAV) and kept in memory.

    ``max_files > 0`` keeps the first ``max_files`` files; a manifest's records are then taken in turn from each
    source (:func:`mmtok.data.ingest.interleave_sources`), so a validation subset of a split sorted by id covers its
    sources. Files that fail to decode are skipped and recorded in :attr:`skipped` (``{path: reason}``).
    """

    def __init__(self, *, paths: Sequence[str] = (), manifest: str | None = None, split: str | None = None,
                 sample_rate: int, max_files: int = 0):
        from mmtok.data.ingest import interleave_sources, load_records
        from mmtok.data.media import MEDIA_EXTENSIONS, list_media

        self.sample_rate = sample_rate
        entries: list[tuple[Path, float, float | None]] = []
        if manifest:
            records = load_records(manifest, split=split)
            for rec in interleave_sources(records) if max_files else records:   # a subset spreads over sources
                src = rec.audio if rec.audio is not None else rec.video
                entries.append((Path(src), rec.start, None if rec.end is None else rec.end - rec.start))
        for p in paths:
            p = Path(p)
            if p.is_dir():
                entries.extend((f, 0.0, None) for f in list_media(p))
            elif p.suffix.lower() in MEDIA_EXTENSIONS or p.exists():
                entries.append((p, 0.0, None))
            else:
                raise FileNotFoundError(f"audio path not found: {p}")
        if max_files:
            entries = entries[:max_files]
        self.files = entries
        self._cache: dict[int, torch.Tensor | None] = {}
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> torch.Tensor | None:
        """The ``i``-th waveform ``[N]`` (float32), or ``None`` when the file is bad (recorded in ``skipped``)."""
        if i not in self._cache:
            from mmtok.data.media import MediaError, read_audio

            path, start, duration = self.files[i]
            try:
                wave = read_audio(path, sample_rate=self.sample_rate, mono=True, start=start, duration=duration)
                self._cache[i] = torch.from_numpy(wave.copy())
            except MediaError as e:
                self._cache[i] = None
                self.skipped[str(path)] = e.reason
        return self._cache[i]

    def load_all(self, progress: bool = False) -> list[torch.Tensor]:
        from tqdm import tqdm

        out = [self.get(i) for i in tqdm(range(len(self)), desc="decode audio", disable=not progress)]
        return [w for w in out if w is not None]

    def report(self) -> str:
        counts: dict[str, int] = {}
        for reason in self.skipped.values():
            counts[reason] = counts.get(reason, 0) + 1
        return ", ".join(f"{n} x {r}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))

    def random_batch(self, generator: torch.Generator, batch_size: int, num_samples: int,
                     indices: Sequence[int] | None = None, align: int = 1) -> torch.Tensor:
        """``[batch_size, 1, num_samples]`` random crops (short clips zero-padded), drawn with ``generator``; every
        crop starts at a multiple of ``align`` samples."""
        pool = list(indices) if indices is not None else list(range(len(self)))
        crops = []
        tries = 0
        while len(crops) < batch_size:
            tries += 1
            if tries > 50 * batch_size + len(pool):
                raise RuntimeError(f"no decodable audio among {len(pool)} files ({self.report()})")
            i = pool[int(torch.randint(len(pool), (1,), generator=generator))]
            wave = self.get(i)
            if wave is None or wave.numel() == 0:
                continue
            if wave.numel() > num_samples:
                off = align * int(torch.randint((wave.numel() - num_samples) // align + 1, (1,), generator=generator))
                wave = wave[off:off + num_samples]
            else:
                wave = torch.nn.functional.pad(wave, (0, num_samples - wave.numel()))
            crops.append(wave)
        return torch.stack(crops)[:, None]
