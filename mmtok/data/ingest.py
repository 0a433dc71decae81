"""Ingestion of real media: a JSON Lines manifest or a folder -> decoded clips with captions, bad files skipped.

Manifest format (one JSON object per line; blank lines and lines starting with ``#`` are ignored)::

    {"id": "clip1", "video": "videos/a.mp4", "caption": "a dog runs"}
    {"id": "clip2", "video": "b.mkv", "audio": "b.wav", "captions": ["...", "..."], "start": 3.0, "end": 5.5}
    {"id": "clip3", "audio": "speech.flac", "caption": "someone says hello"}

- ``id`` (required, unique), ``video`` and/or ``audio`` (at least one; relative paths resolve against the manifest's
  folder), ``caption`` (string) or ``captions`` (list of strings; both may be given, ``caption`` first), optional
  ``caption_file`` (a UTF-8 text file, one caption per line, read with the media), ``start`` / ``end`` in seconds
  and ``split``. Other keys are kept in :attr:`ClipRecord.meta`.
- The Moving-Digits ``manifest.jsonl`` (:mod:`mmtok.datasets.moving_digits.corpus`) is such a manifest.

A folder is scanned with :func:`mmtok.data.media.list_media`; a caption comes from a sidecar text file with the same
stem (``clip.mp4`` + ``clip.txt``, one caption per line) when present. Sidecars are read when the clip is decoded,
so an unreadable or non-UTF-8 one is a bad file of that record (skipped, counted, reported), like broken media.

Decoding (:func:`load_clip`) samples ``num_frames`` frames at ``fps`` from ``start``, resizes the shorter side and
centre-crops, and reads the audio from the ``audio`` file or else from the video's own audio track, resampled to
``sample_rate``, mono, covering the same time span as the frames. A video without an audio track yields
``audio=None`` (or a :class:`MediaError` with ``require_audio=True``).

Bad media never stop a job: :func:`iter_clips` skips every record whose decoding raises :class:`MediaError`, and
records it in a :class:`BadFileReport` (id, file, reason) that can be written as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mmtok.data.media import VIDEO_EXTENSIONS, MediaError, list_media, read_audio, read_video
from mmtok.io import atomic_write, progress_enabled

__all__ = [
    "BadFileReport",
    "Clip",
    "ClipConfig",
    "ClipRecord",
    "ManifestError",
    "interleave_sources",
    "iter_clips",
    "load_clip",
    "load_records",
    "read_manifest",
    "record_to_json",
    "scan_folder",
]

_KNOWN_KEYS = {"id", "video", "audio", "caption", "captions", "caption_file", "start", "end", "split"}


class ManifestError(ValueError):
    """A manifest is malformed (bad JSON, missing or duplicate id, no media path, bad types); names file and line."""


@dataclass
class ClipRecord:
    """One entry of a manifest or a folder scan (nothing decoded yet).

    Attributes:
        id: unique identifier.
        video: video file, or ``None`` for an audio-only record.
        audio: separate audio file, or ``None`` (then the video's own audio track is used, if any).
        captions: zero or more captions.
        start, end: seconds within the media (``end=None``: to the end / as many frames as asked).
        split: optional split name (``"train"``, ``"validation"``, ``"test"``, ...).
        meta: any other manifest keys (kept and carried into the token shards).
        caption_file: a sidecar text file (one caption per line, UTF-8) read with the media by :func:`load_clip`,
            so an unreadable one makes this record a bad file rather than stopping a folder scan.
    """

    id: str
    video: Path | None = None
    audio: Path | None = None
    captions: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    caption_file: Path | None = None

    @property
    def path(self) -> Path:
        """The record's main file (video if any, else audio), for reports."""
        return self.video if self.video is not None else self.audio  # type: ignore[return-value]


def _record_from_json(obj: Any, base: Path, where: str) -> ClipRecord:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj or not isinstance(obj["id"], (str, int)) or str(obj["id"]) == "":
        raise ManifestError(f"{where}: missing or empty 'id'")
    video, audio = obj.get("video"), obj.get("audio")
    if not video and not audio:
        raise ManifestError(f"{where}: record {obj['id']!r} has neither 'video' nor 'audio'")
    for key in ("video", "audio"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ManifestError(f"{where}: '{key}' must be a path string, got {type(obj[key]).__name__}")
    captions: list[str] = []
    if obj.get("caption") is not None:
        if not isinstance(obj["caption"], str):
            raise ManifestError(f"{where}: 'caption' must be a string")
        captions.append(obj["caption"])
    if obj.get("captions") is not None:
        caps = obj["captions"]
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ManifestError(f"{where}: 'captions' must be a list of strings")
        captions.extend(c for c in caps if c not in captions)
    try:
        start = float(obj.get("start") or 0.0)
        end = None if obj.get("end") is None else float(obj["end"])
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{where}: 'start'/'end' must be numbers ({e})") from e
    if start < 0 or (end is not None and end <= start):
        raise ManifestError(f"{where}: need 0 <= start < end, got start={start}, end={end}")

    def resolve(p: str | None) -> Path | None:
        if not p:
            return None
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else base / q

    if obj.get("caption_file") is not None and not isinstance(obj["caption_file"], str):
        raise ManifestError(f"{where}: 'caption_file' must be a path (a string)")
    return ClipRecord(id=str(obj["id"]), video=resolve(video), audio=resolve(audio), captions=captions,
                      start=start, end=end, split=obj.get("split"), caption_file=resolve(obj.get("caption_file")),
                      meta={k: v for k, v in obj.items() if k not in _KNOWN_KEYS})


def read_manifest(path: str | os.PathLike, *, split: str | Sequence[str] | None = None) -> list[ClipRecord]:
    """Parse a JSON Lines manifest (format in the module docstring), optionally keeping only ``split``.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ManifestError: a malformed line (with file and line number) or a duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    keep = None if split is None else ({split} if isinstance(split, str) else set(split))
    records: list[ClipRecord] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ManifestError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from e
            if not line or line.startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: invalid JSON ({e.msg})") from e
            rec = _record_from_json(obj, path.parent, where)
            if rec.id in seen:
                raise ManifestError(f"{where}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
            seen[rec.id] = lineno
            if keep is None or rec.split in keep:
                records.append(rec)
    return records


def scan_folder(folder: str | os.PathLike, *, recursive: bool = True) -> list[ClipRecord]:
    """One record per media file under ``folder`` (sorted), id = relative path without suffix; captions from a
    sidecar ``<stem>.txt`` (one caption per line, read by :func:`load_clip`) when present."""
    folder = Path(folder)
    records = []
    seen: set[str] = set()
    for p in list_media(folder, recursive=recursive):
        rel = p.relative_to(folder).with_suffix("").as_posix()
        rid = rel if rel not in seen else p.relative_to(folder).as_posix()  # a.mp4 + a.wav: keep both
        seen.add(rid)
        sidecar = p.with_suffix(".txt")
        is_video = p.suffix.lower() in VIDEO_EXTENSIONS
        records.append(ClipRecord(id=rid, video=p if is_video else None, audio=None if is_video else p,
                                  caption_file=sidecar if sidecar.exists() or sidecar.is_symlink() else None))
    return records


def load_records(source: str | os.PathLike, *, split: str | Sequence[str] | None = None) -> list[ClipRecord]:
    """A manifest file (``.jsonl``/``.json``) or a media folder -> records."""
    source = Path(source)
    if source.is_dir():
        if split is not None:
            raise ValueError("split filtering needs a manifest; a folder has no splits")
        return scan_folder(source)
    return read_manifest(source, split=split)


def interleave_sources(records: Sequence[ClipRecord]) -> list[ClipRecord]:
    """``records`` reordered so that every prefix spreads over their sources: the first record of each source (in
    order of first appearance), then the second of each, and so on.

    The source is the manifest's ``source`` field (the real-media manifests, :mod:`mmtok.datasets.real_media`); a
    record without one is its own source, so a manifest without the field keeps its order. Evaluations that score
    the first ``n`` records of a split use it, so that ``n`` clips of a split sorted by id cover its sources instead
    of the first one's clips.
    """
    by_source: dict[Any, list[ClipRecord]] = {}
    for i, r in enumerate(records):
        by_source.setdefault(r.meta.get("source", ("record", i)), []).append(r)
    queues = list(by_source.values())
    out: list[ClipRecord] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        out.extend(q[depth] for q in queues if depth < len(q))
    return out


# --------------------------------------------------------------------------------------------------- decoding
@dataclass
class ClipConfig:
    """How records are decoded into clips.

    Attributes:
        fps: frame rate frames are sampled at (``None``: the source's own frames).
        num_frames: frames per clip (``None``: all frames from ``start`` to ``end``).
        size: shorter side resized to ``size`` and centre-cropped to a square (``None``: source size).
        sample_rate: audio rate (``None``: no audio is read).
        require_audio: raise :class:`MediaError` for a video without an audio track (else ``audio=None``), or whose
            audio ends more than ``audio_tolerance`` seconds before its frames do.
        audio_tolerance: seconds of audio a clip may lack at its end before it counts as short (its shortfall is
            then recorded in ``Clip.meta["audio_missing_seconds"]``, and the audio zero-padded).
        pad: pad a clip that ends early (repeat the last frame, zero audio) instead of rejecting it.
        video: decode frames (``False``: audio only, e.g. when no video tokenizer will read them).
    """

    fps: float | None = 8.0
    num_frames: int | None = 17
    size: int | None = 64
    sample_rate: int | None = 16000
    require_audio: bool = False
    audio_tolerance: float = 0.1
    pad: bool = False
    video: bool = True


@dataclass
class Clip:
    """A decoded record: ``frames`` uint8 ``[T, H, W, 3]`` (``None`` for audio-only), ``audio`` float32 ``[N]``
    (``None`` without audio), the captions and the record's metadata."""

    id: str
    frames: np.ndarray | None
    audio: np.ndarray | None
    captions: list[str]
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_clip(record: ClipRecord, cfg: ClipConfig | None = None) -> Clip:
    """Decode one record. Raises :class:`MediaError` (naming the file and the reason) when it cannot."""
    cfg = cfg if cfg is not None else ClipConfig()
    extra_meta: dict[str, Any] = {}
    captions = list(record.captions)
    if record.caption_file is not None:
        captions += [c for c in read_caption_file(record.caption_file) if c not in captions]
    frames = None
    if record.video is not None and cfg.video:
        frames = read_video(record.video, fps=cfg.fps, num_frames=cfg.num_frames, size=cfg.size,
                            start=record.start, end=record.end, pad=cfg.pad)
    audio = None
    if cfg.sample_rate is not None:
        source = record.audio if record.audio is not None else record.video
        # The audio covers the frames' time span when the clip length is known, else the record's span.
        if frames is not None and cfg.fps is not None:
            duration: float | None = len(frames) / cfg.fps
        elif cfg.num_frames is not None and cfg.fps is not None and record.video is not None:
            duration = cfg.num_frames / cfg.fps
        elif record.end is not None:
            duration = record.end - record.start
        else:
            duration = None
        try:
            audio = read_audio(source, sample_rate=cfg.sample_rate, mono=True, start=record.start,
                               duration=duration)
        except MediaError as e:
            no_track = e.reason == "no audio stream" and record.audio is None and record.video is not None
            if not no_track or cfg.require_audio:
                raise
        if audio is not None and duration is not None and (cfg.pad or record.video is not None):
            # Audio that ends before the frames is zero-padded to their span; beyond the tolerance that is a
            # shortfall worth knowing, and a bad clip when audio is required.
            wanted = int(round(duration * cfg.sample_rate))
            missing = (wanted - len(audio)) / cfg.sample_rate
            if missing > cfg.audio_tolerance:
                if cfg.require_audio:
                    raise MediaError(source, f"audio too short (it covers {len(audio) / cfg.sample_rate:.2f}s of "
                                             f"{duration:.2f}s)")
                extra_meta["audio_missing_seconds"] = round(missing, 3)
            if len(audio) < wanted:
                audio = np.pad(audio, (0, wanted - len(audio)))
    if frames is None and audio is None:
        raise MediaError(record.path, "nothing to decode (no video wanted and no audio)")
    meta = dict(record.meta)
    meta.update(start=record.start, end=record.end, **extra_meta)
    return Clip(id=record.id, frames=frames, audio=audio, captions=captions, split=record.split, meta=meta)


def read_caption_file(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a UTF-8 caption file; :class:`MediaError` naming the file when it cannot be read."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise MediaError(path, f"caption file is not UTF-8 (byte at offset {e.start})") from e
    except OSError as e:
        raise MediaError(path, f"caption file unreadable ({e.strerror or type(e).__name__})") from e
    return [c.strip() for c in text.splitlines() if c.strip()]


@dataclass
class BadFileReport:
    """Files skipped by a job, with reasons. ``len(report)`` counts them; :meth:`write` saves JSON.

    ``notes`` lists files that were kept but are worth a look (e.g. audio shorter than the frames, zero-padded)."""

    entries: list[dict[str, str]] = field(default_factory=list)
    total: int = 0
    notes: list[dict[str, str]] = field(default_factory=list)

    def add(self, record_id: str, path: str | os.PathLike | None, reason: str) -> None:
        self.entries.append({"id": str(record_id), "file": str(path), "reason": reason})

    def note(self, record_id: str, path: str | os.PathLike | None, what: str) -> None:
        self.notes.append({"id": str(record_id), "file": str(path), "note": what})

    def note_clip(self, clip: "Clip", path: str | os.PathLike | None) -> None:
        """Record what :func:`load_clip` flagged on a kept clip."""
        missing = clip.meta.get("audio_missing_seconds")
        if missing:
            self.note(clip.id, path, f"audio shorter than the frames by {missing:g}s (zero-padded)")

    def extend(self, other: "BadFileReport | Iterable[dict[str, str]]") -> None:
        if isinstance(other, BadFileReport):
            self.entries.extend(other.entries)
            self.notes.extend(other.notes)
        else:
            self.entries.extend(other)

    def __len__(self) -> int:
        return len(self.entries)

    def reasons(self) -> Counter:
        """Counts per reason (the text before any parenthesized detail)."""
        return Counter(e["reason"].split(" (")[0] for e in self.entries)

    def summary(self) -> str:
        if not self.entries:
            noted = f"; {len(self.notes)} kept with notes (see the report)" if self.notes else ""
            return (f"no bad files (of {self.total})" if self.total else "no bad files") + noted
        kinds = ", ".join(f"{n} {r}" for r, n in self.reasons().most_common())
        of = f" of {self.total}" if self.total else ""
        noted = f"; {len(self.notes)} kept with notes (see the report)" if self.notes else ""
        return f"skipped {len(self.entries)}{of} files: {kinds}{noted}"

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "skipped": len(self.entries), "reasons": dict(self.reasons()),
                "files": sorted(self.entries, key=lambda e: e["id"]),
                "notes": sorted(self.notes, key=lambda e: e["id"])}

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> "BadFileReport":
        data = json.loads(Path(path).read_text())
        return cls(entries=list(data.get("files", [])), total=int(data.get("total", 0)),
                   notes=list(data.get("notes", [])))


def _load_or_error(args: tuple[ClipRecord, ClipConfig]) -> Clip | tuple[str, str, str]:
    record, cfg = args
    try:
        return load_clip(record, cfg)
    except MediaError as e:
        return (record.id, e.path, e.reason)


def iter_clips(records: Sequence[ClipRecord], cfg: ClipConfig | None = None, *, num_workers: int = 0,
               report: BadFileReport | None = None, progress: bool | None = None) -> Iterator[Clip]:
    """Decode records in order, skipping (and reporting) bad ones.

    Args:
        records: from :func:`read_manifest` / :func:`scan_folder`.
        cfg: decoding settings.
        num_workers: decoding processes (0: in this process).
        report: filled with one entry per skipped record (``report.total`` counts every record seen).
        progress: tqdm bar (default: :func:`mmtok.io.progress_enabled`).
    """
    from tqdm import tqdm

    if progress is None:
        progress = progress_enabled()
    cfg = cfg if cfg is not None else ClipConfig()
    jobs = [(r, cfg) for r in records]
    bar = tqdm(total=len(jobs), desc="decode", unit="clip", disable=not progress)
    pool = None
    try:
        if num_workers > 0:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(num_workers)
            results: Iterable[Any] = pool.imap(_load_or_error, jobs, chunksize=4)
        else:
            results = map(_load_or_error, jobs)
        for out in results:
            bar.update()
            if report is not None:
                report.total += 1
            if isinstance(out, Clip):
                if report is not None:
                    report.note_clip(out, None)
                yield out
            elif report is not None:
                report.add(*out)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def record_to_json(record: ClipRecord, base: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest line of a record (paths relative to ``base`` when given)."""
    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        return os.path.relpath(p, base) if base is not None else str(p)

    out = {k: v for k, v in asdict(record).items() if k not in ("video", "audio", "caption_file", "meta")}
    out.update(video=rel(record.video), audio=rel(record.audio), caption_file=rel(record.caption_file),
               **record.meta)
    return {k: v for k, v in out.items() if v is not None}

