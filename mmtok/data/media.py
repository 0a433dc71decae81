"""Reading and writing media with PyAV: the one place mmtok touches FFmpeg.

Everything here works on plain NumPy arrays so that tokenizers, recipes and data workers can share it without
caring about torch (``torch.from_numpy`` turns the results into tensors without a copy):

- :func:`read_video` -> ``uint8 [T, H, W, 3]`` RGB frames, optionally resampled to a target frame rate
  (variable-frame-rate safe: each output frame is the frame *on screen* at its target time), with the shorter side
  resized and the centre cropped;
- :func:`read_audio` -> ``float32 [N]`` (mono) or ``[C, N]`` in ``[-1, 1]``, resampled with FFmpeg's resampler
  (``av.AudioResampler``); works on audio files and on the audio track of video files;
- :func:`write_video` -> an MP4 (H.264 or MPEG-4 part 2 video, PCM or AAC audio), written atomically;
- :func:`write_audio` -> a WAV file (16-bit PCM), written atomically;
- :func:`probe` -> :class:`MediaInfo` (streams, duration, frame rate, size, sample rate) without decoding;
- :func:`list_media` -> the media files under a folder, sorted;
- :class:`MediaError`: raised for every file that cannot give what was asked (missing, empty, truncated, corrupt,
  not media, no such stream, too short), with the path and the reason in its message, so that a data job can skip
  and count bad files with one ``except MediaError``.

PCM audio in MP4 is the default for :func:`write_video` because it is sample exact: AAC prepends ~1024 priming
samples (64 ms at 16 kHz) that decoders do not always trim, which would shift audio events against video frames.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from mmtok.frames import to_uint8
from mmtok.io import atomic_output

__all__ = [
    "AUDIO_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "MediaError",
    "MediaInfo",
    "list_media",
    "probe",
    "read_audio",
    "read_video",
    "resize_and_crop",
    "write_audio",
    "write_gif",
    "write_image",
    "write_video",
]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".gif", ".flv", ".wmv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".wma")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS

# A target time counts as reached by a frame whose timestamp is at most this much later (absorbs rounding in
# container time bases such as 1/16384 s).
_TIME_EPS = 1e-4


class MediaError(Exception):
    """A media file cannot give what was asked: missing, empty, truncated, corrupt, not media, lacks a stream, or is
    too short for the requested clip.

    Attributes:
        path: the offending file.
        reason: a short human-readable reason (also in ``str(error)``).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))


# ------------------------------------------------------------------------------------------------------ opening
def _open(path: str | os.PathLike) -> Any:
    """``av.open`` for reading, turning every way a file can be unusable into a :class:`MediaError`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "file not found")
    if path.is_dir():
        raise MediaError(path, "is a directory, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise MediaError(path, f"not a readable media file ({_ffmpeg_reason(e)})") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise MediaError(path, f"cannot open ({e})") from e


def _seek_or_reopen(container: Any, path: str | os.PathLike, kind: str, start: float) -> tuple[Any, Any]:
    """Seek ``container`` to the keyframe at or before ``start`` in its first ``kind`` ("video" or "audio") stream;
    return the container and that stream.

    A stream that cannot seek (an MPEG program stream without an index, for one) refuses with an error and may be
    left past its data, where decoding finds nothing; the file is then opened again and decoded from the beginning
    (the callers discard what comes before ``start``).
    """
    stream = getattr(container.streams, kind)[0]
    if start <= 0:
        return container, stream
    try:
        container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        return container, stream
    except av.FFmpegError:
        container.close()
        container = _open(path)
        return container, getattr(container.streams, kind)[0]


def _ffmpeg_reason(e: BaseException) -> str:
    strerror = getattr(e, "strerror", None)
    return str(strerror or e)


def _seconds(value: Any, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learns from a file's headers (no decoding).

    Attributes:
        path: the file.
        duration: seconds (container duration, else the longest stream's), ``None`` when unknown.
        has_video / has_audio: whether a video / audio stream exists.
        width, height: video frame size in pixels (``None`` without video).
        fps: average video frame rate (``None`` without video or when unknown; variable-rate files report a mean).
        num_frames: frame count from the header (``None`` when the container does not say).
        sample_rate, channels: of the first audio stream (``None`` without audio).
    """

    path: str
    duration: float | None
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    num_frames: int | None = None
    sample_rate: int | None = None
    channels: int | None = None


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read a file's stream headers; raises :class:`MediaError` when it is not media."""
    container = _open(path)
    try:
        vs = container.streams.video[0] if container.streams.video else None
        aus = container.streams.audio[0] if container.streams.audio else None
        if vs is None and aus is None:
            raise MediaError(path, "no video or audio stream")
        durations = []
        if container.duration is not None:
            durations.append(container.duration / av.time_base)
        for s in (vs, aus):
            if s is not None and s.duration is not None and s.time_base is not None:
                durations.append(float(s.duration * s.time_base))
        duration = max(durations) if durations else None
        fps = None
        if vs is not None:
            rate = vs.average_rate or vs.base_rate or vs.guessed_rate
            fps = float(rate) if rate else None
        return MediaInfo(
            path=str(path), duration=duration, has_video=vs is not None, has_audio=aus is not None,
            width=vs.codec_context.width if vs is not None else None,
            height=vs.codec_context.height if vs is not None else None,
            fps=fps, num_frames=(vs.frames or None) if vs is not None else None,
            sample_rate=aus.codec_context.sample_rate if aus is not None else None,
            channels=aus.codec_context.channels if aus is not None else None,
        )
    finally:
        container.close()


# ------------------------------------------------------------------------------------------------------- video
def _output_geometry(width: int, height: int, size: int | Sequence[int] | None) -> tuple[int, int, int, int, int, int]:
    """(resize_w, resize_h, crop_x, crop_y, out_w, out_h) for 'shorter side to size, then centre crop'."""
    if size is None:
        return width, height, 0, 0, width, height
    if isinstance(size, (int, np.integer)):
        out_h = out_w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int (square) or (height, width), got {size!r}")
        out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    # Scale so the frame covers the target box (for a square target: shorter side -> size), then crop the centre.
    scale = max(out_h / height, out_w / width)
    rw, rh = max(out_w, round(width * scale)), max(out_h, round(height * scale))
    return rw, rh, (rw - out_w) // 2, (rh - out_h) // 2, out_w, out_h


def resize_and_crop(frames: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` frames so the shorter side equals ``size`` and centre-crop (``size`` int) or
    cover-and-crop to ``(height, width)``. Uses FFmpeg's area/bilinear scaler, as :func:`read_video` does."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    reformatter = VideoReformatter()
    out = [_to_rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"), size, reformatter)
           for f in frames]
    return np.stack(out) if out else frames


def _to_rgb(frame: Any, size: int | Sequence[int] | None, reformatter: Any = None) -> np.ndarray:
    """One decoded frame -> ``uint8 [H, W, 3]`` RGB, resized and centre-cropped.

    Pass one ``VideoReformatter`` for all frames of a video: it keeps FFmpeg's scaler context between frames, which
    makes the colour conversion ~2.5x cheaper than ``frame.to_ndarray(format="rgb24")`` building one per frame.
    """
    reformatter = reformatter if reformatter is not None else VideoReformatter()
    rw, rh, x0, y0, ow, oh = _output_geometry(frame.width, frame.height, size)
    # AREA averages when shrinking (no aliasing of small glyphs); BILINEAR when enlarging or keeping the size.
    interp = "AREA" if rw < frame.width else "BILINEAR"
    img = reformatter.reformat(frame, width=rw, height=rh, format="rgb24", interpolation=interp).to_ndarray()
    if (ow, oh) == (rw, rh):
        return img
    return np.ascontiguousarray(img[y0:y0 + oh, x0:x0 + ow])


def _iter_video_frames(container: Any, stream: Any, path: Any, start: float) -> Iterator[tuple[float, Any]]:
    """Decoded frames as (presentation time in seconds, frame), from where :func:`_seek_or_reopen` left the
    container (the keyframe at or before ``start``, or the beginning)."""
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    index = 0
    last = -math.inf
    try:
        for frame in container.decode(stream):
            t = frame.time
            if t is None:  # no timestamps: count frames at the nominal rate
                t = index / float(rate)
            t = max(float(t), last)  # never let a broken timestamp run backwards
            last = t
            index += 1
            yield t, frame
    except av.FFmpegError as e:
        # Truncated or corrupt packet: stop here; the caller decides whether what was decoded is enough.
        if index == 0:
            raise MediaError(path, f"cannot decode video ({_ffmpeg_reason(e)})") from e


def read_video(path: str | os.PathLike, *, fps: float | None = None, num_frames: int | None = None,
               size: int | Sequence[int] | None = None, start: float = 0.0, end: float | None = None,
               pad: bool = False, threads: int = 1) -> np.ndarray:
    """Decode RGB frames from a video file.

    Args:
        path: any file FFmpeg reads (MP4, AVI, MKV, WebM, GIF, ...).
        fps: target frame rate. Output frame ``k`` is the source frame on screen at ``start + k / fps`` (the latest
            frame whose timestamp is ``<=`` that time), so variable-frame-rate input and rate changes in both
            directions are handled. ``None`` keeps the source frames as they are.
        num_frames: how many frames to return; ``None`` returns all frames up to ``end`` (or the end of the video).
        size: ``int`` -> resize the shorter side to ``size`` and centre-crop a ``size x size`` square;
            ``(height, width)`` -> scale to cover the box and centre-crop; ``None`` keeps the source size.
        start: seconds from the beginning of the video.
        end: seconds; frames at or after ``end`` are not returned.
        pad: when the video ends before ``num_frames`` frames, repeat the last frame instead of raising.
        threads: decoder threads (1 suits data workers that already run one per core; 0 lets FFmpeg decide).

    Returns:
        ``uint8`` array ``[T, H, W, 3]``.

    Raises:
        MediaError: the file is missing, empty, not media, has no video stream, cannot be decoded, or holds fewer than
            ``num_frames`` frames from ``start`` (without ``pad``).
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    container = _open(path)
    try:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        container, stream = _seek_or_reopen(container, path, "video", start)
        stream.codec_context.thread_count = threads
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        limit = num_frames if num_frames is not None else math.inf
        stop = end if end is not None else math.inf
        out: list[np.ndarray] = []
        reformatter = VideoReformatter()
        if fps is None:
            for t, frame in _iter_video_frames(container, stream, path, start):
                if t >= stop - _TIME_EPS:
                    break
                if t < start - _TIME_EPS:
                    continue
                out.append(_to_rgb(frame, size, reformatter))
                if len(out) >= limit:
                    break
        else:
            out = _resample_frames(container, stream, path, fps=fps, start=start, stop=stop, limit=limit, size=size,
                                   reformatter=reformatter)
    finally:
        container.close()
    if not out:
        raise MediaError(path, f"no decodable video frames from {start:g}s")
    if num_frames is not None and len(out) < num_frames:
        if not pad:
            rate = f" at {fps:g} fps" if fps else ""
            raise MediaError(path, f"too short: {len(out)} frames from {start:g}s{rate}, {num_frames} requested")
        out.extend([out[-1]] * (num_frames - len(out)))
    return np.stack(out)


def _resample_frames(container: Any, stream: Any, path: Any, *, fps: float, start: float, stop: float,
                     limit: float, size: Any, reformatter: Any) -> list[np.ndarray]:
    """Pick, for each target time ``start + k / fps``, the frame on screen at that time."""
    out: list[np.ndarray] = []
    k = 0
    prev: Any = None          # the last decoded frame whose time is <= the next target
    prev_rgb: np.ndarray | None = None
    prev_t = None
    frame_gap = None          # typical spacing of source frames, to know where the last frame stops being shown

    def target(i: int) -> float:
        return start + i / fps

    def emit(frame: Any, is_prev: bool) -> None:
        nonlocal prev_rgb
        if is_prev:
            if prev_rgb is None:
                prev_rgb = _to_rgb(frame, size, reformatter)
            out.append(prev_rgb)
        else:
            out.append(_to_rgb(frame, size, reformatter))

    for t, frame in _iter_video_frames(container, stream, path, start):
        # Targets strictly before this frame are shown by the previous frame (or by this one if none came before:
        # the video starts a little after ``start``).
        while k < limit and target(k) < stop - _TIME_EPS and target(k) < t - _TIME_EPS:
            emit(prev if prev is not None else frame, prev is not None)
            k += 1
        if k >= limit or target(k) >= stop - _TIME_EPS:
            return out
        if prev_t is not None and t > prev_t:
            frame_gap = t - prev_t
        prev, prev_rgb, prev_t = frame, None, t
    if prev is None:
        return out
    # The stream ended: the last frame stays on screen for about one frame interval.
    if frame_gap is None:
        rate = stream.average_rate or stream.guessed_rate
        frame_gap = 1.0 / float(rate) if rate else 1.0 / fps
    while k < limit and target(k) < stop - _TIME_EPS and target(k) < prev_t + frame_gap - _TIME_EPS:
        emit(prev, True)
        k += 1
    return out


# ------------------------------------------------------------------------------------------------------- audio
def read_audio(path: str | os.PathLike, *, sample_rate: int, mono: bool = True, start: float = 0.0,
               duration: float | None = None, pad: bool = False) -> np.ndarray:
    """Decode and resample the first audio stream of an audio or video file.

    Args:
        path: any file FFmpeg reads with an audio stream (WAV, FLAC, MP3, the audio track of an MP4, ...).
        sample_rate: output rate in Hz (FFmpeg's resampler converts).
        mono: downmix to one channel (returns ``[N]``); ``False`` keeps the channels (returns ``[C, N]``).
        start: seconds from the beginning of the file. If the audio stream starts later than ``start`` (audio that
            begins after the video), the gap is filled with silence so that audio stays aligned with video time.
        duration: seconds to return; ``None`` reads to the end.
        pad: zero-pad to exactly ``round(duration * sample_rate)`` samples when the file ends early.

    Returns:
        ``float32`` array in ``[-1, 1]``: ``[N]`` when ``mono`` else ``[C, N]``.

    Raises:
        MediaError: missing/empty/non-media file, no audio stream, undecodable audio, or no samples after ``start``.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate}")
    if start < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"need start >= 0 and duration > 0, got start={start}, duration={duration}")
    container = _open(path)
    try:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        container, stream = _seek_or_reopen(container, path, "audio", start)
        layout = "mono" if mono else None
        resampler = None
        chunks: list[np.ndarray] = []
        have = 0
        first_time = None
        wanted = None if duration is None else int(round(duration * sample_rate))
        skip = 0
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    if layout is None:
                        layout = frame.layout.name
                    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
                    first_time = float(frame.time) if frame.time is not None else 0.0
                    skip = int(round((start - first_time) * sample_rate))
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()
                    chunks.append(arr)
                    have += arr.shape[1]
                if wanted is not None and have >= skip + wanted:
                    break
        except av.FFmpegError as e:
            if resampler is None:
                raise MediaError(path, f"cannot decode audio ({_ffmpeg_reason(e)})") from e
        if resampler is None:
            raise MediaError(path, "no decodable audio frames")
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    finally:
        container.close()
    channels = chunks[0].shape[0] if chunks else (1 if mono else 2)
    wave = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    if skip > 0:
        wave = wave[:, skip:]
    elif skip < 0:  # the audio track starts after ``start``: keep it aligned with silence
        wave = np.concatenate([np.zeros((wave.shape[0], -skip), np.float32), wave], axis=1)
    if wanted is not None:
        wave = wave[:, :wanted]
        if pad and wave.shape[1] < wanted:
            wave = np.pad(wave, ((0, 0), (0, wanted - wave.shape[1])))
    if wave.shape[1] == 0:
        raise MediaError(path, f"no audio samples from {start:g}s")
    if not np.isfinite(wave).all():
        raise MediaError(path, "audio holds NaN or infinite samples")
    wave = np.clip(wave.astype(np.float32, copy=False), -1.0, 1.0)
    return wave[0] if mono else wave


# ------------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def _atomic_container(path: Path, **open_kwargs: Any) -> Iterator[Any]:
    """A PyAV output container on a temporary file beside ``path``, renamed onto ``path`` once closed without error;
    on any error the temporary file is removed and ``path`` is left as it was (:func:`mmtok.io.atomic_output`)."""
    with atomic_output(path) as tmp:
        container = av.open(str(tmp), mode="w", **open_kwargs)
        try:
            yield container
        finally:
            container.close()


def _as_frames(frames: Any) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` from uint8 frames or a float clip ``[3, T, H, W]`` in [-1, 1] (NumPy or torch)."""
    frames = np.ascontiguousarray(to_uint8(frames if hasattr(frames, "detach") else np.asarray(frames)).numpy())
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty (T = 0)")
    return frames


def _as_wave(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise ValueError(f"audio must be [N] or [C, N] with C in (1, 2) and N > 0, got shape {tuple(audio.shape)}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float in [-1, 1], got {audio.dtype}")
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0).astype(np.float32))


def _encode_audio(container: Any, stream: Any, wave: np.ndarray, sample_rate: int) -> None:
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    # Convert to whatever sample format the encoder takes (s16 for PCM, fltp for AAC, ...).
    resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=sample_rate)
    for converted in list(resampler.resample(frame)) + list(resampler.resample(None)):
        for packet in stream.encode(converted):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_video(path: str | os.PathLike, frames: Any, fps: float, *, audio: Any = None,
                sample_rate: int | None = None, video_codec: str = "libx264", audio_codec: str = "pcm_s16le",
                crf: int = 18, preset: str = "veryfast", timestamps: Sequence[float] | None = None,
                threads: int = 1, faststart: bool = False) -> Path:
    """Write frames (and optionally audio) to a video file, atomically (a temporary file, then a rename).

    Args:
        path: output file; its suffix picks the container (``.mp4`` recommended; ``.mkv``, ``.mov``, ``.avi`` work).
        frames: RGB, uint8 ``[T, H, W, 3]`` or a float clip ``[3, T, H, W]`` in ``[-1, 1]`` (what the video
            tokenizer decodes; :mod:`mmtok.frames`), NumPy array or torch tensor.
        fps: frame rate (nominal rate when ``timestamps`` is given).
        audio: optional ``float`` waveform in ``[-1, 1]``, ``[N]`` (mono) or ``[C, N]`` with ``C`` in (1, 2).
        sample_rate: audio rate in Hz; required with ``audio``.
        video_codec: ``"libx264"`` (H.264) or ``"mpeg4"`` (MPEG-4 part 2). H.264 writes ``yuv420p`` for even frame
            sizes and ``yuv444p`` for odd ones (4:2:0 needs even sizes) or with ``crf=0``; MPEG-4 requires even
            sizes.
        audio_codec: ``"pcm_s16le"`` (lossless, sample exact; default) or ``"aac"`` (small; adds encoder delay).
            Browsers do not play PCM in MP4: for web pages use ``audio_codec="aac", faststart=True``.
        crf: H.264 constant rate factor (lower is better quality; 18 is visually lossless; 0 is lossless and keeps
            full-resolution chroma, so a frame decodes to the same pixels wherever its content sits: 4:2:0 would
            average each 2x2 block's colour and blur it differently at the frame's edges).
        preset: H.264 speed preset.
        timestamps: optional per-frame presentation times in seconds (increasing) to write variable-frame-rate video.
        threads: encoder threads.
        faststart: MP4/MOV: put the index (``moov``) before the data, so browsers start playing before the whole file
            arrived (web pages); a truncated faststart file still decodes up to the cut.

    Returns:
        the path written.
    """
    path = Path(path)
    frames = _as_frames(frames)
    t, h, w, _ = frames.shape
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    wave = None
    if audio is not None:
        if sample_rate is None or sample_rate < 1:
            raise ValueError("sample_rate (a positive int) is required when audio is given")
        wave = _as_wave(audio)
    if timestamps is not None:
        timestamps = [float(x) for x in timestamps]
        if len(timestamps) != t or any(b <= a for a, b in zip(timestamps, timestamps[1:])) or timestamps[0] < 0:
            raise ValueError(f"timestamps must be {t} increasing non-negative seconds, got {len(timestamps)} values")
    if video_codec in ("mpeg4",) and (h % 2 or w % 2):
        raise ValueError(f"{video_codec} needs even frame sizes, got {h}x{w}; use libx264 or crop a pixel")
    rate = Fraction(fps).limit_denominator(1001000)
    options = {"movflags": "faststart"} if faststart and path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    with _atomic_container(path, options=options) as container:
        vstream = container.add_stream(video_codec, rate=rate)
        vstream.width, vstream.height = w, h
        lossless = video_codec in ("libx264", "h264") and crf == 0
        vstream.pix_fmt = "yuv420p" if (h % 2 == 0 and w % 2 == 0 and not lossless) else "yuv444p"
        vstream.codec_context.thread_count = threads
        if video_codec in ("libx264", "h264"):
            vstream.options = {"crf": str(crf), "preset": preset}
        elif video_codec == "mpeg4":
            vstream.options = {"qscale": "2"}
            vstream.codec_context.qmin = 1
        time_base = Fraction(1, 90000) if timestamps is not None else 1 / rate
        vstream.codec_context.time_base = time_base
        astream = None
        if wave is not None:
            astream = container.add_stream(audio_codec, rate=sample_rate)
            astream.layout = "mono" if wave.shape[0] == 1 else "stereo"
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = int(round(timestamps[i] / time_base)) if timestamps is not None else i
            frame.time_base = time_base
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, wave, sample_rate)
    return path


def write_gif(path: str | os.PathLike, frames: Any, fps: float) -> Path:
    """Write frames (uint8 ``[T, H, W, 3]`` or a float clip ``[3, T, H, W]`` in [-1, 1], as :func:`write_video`) as a
    looping GIF with PyAV (FFmpeg's GIF encoder, ``rgb8`` palette), atomically."""
    path = Path(path)
    frames = _as_frames(frames)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with _atomic_container(path, format="gif") as container:
        stream = container.add_stream("gif", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "rgb8"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_image(path: str | os.PathLike, image: Any) -> Path:
    """Write one uint8 ``[H, W, 3]`` image as a PNG file (the path must end in ``.png``) with PyAV, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_image writes PNG: the path must end in .png, got {path.name!r}")
    image = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got shape {image.shape}")
    with _atomic_container(path, format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = int(image.shape[1]), int(image.shape[0]), "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_audio(path: str | os.PathLike, audio: Any, sample_rate: int) -> Path:
    """Write a float waveform (``[N]`` or ``[C, N]`` in ``[-1, 1]``) as a 16-bit PCM WAV file, atomically."""
    path = Path(path)
    wave = _as_wave(audio)
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate}")
    wav = path.suffix.lower() == ".wav"
    with _atomic_container(path, format="wav" if wav else None) as container:
        stream = container.add_stream("pcm_s16le" if wav else "flac", rate=sample_rate)
        stream.layout = "mono" if wave.shape[0] == 1 else "stereo"
        _encode_audio(container, stream, wave, sample_rate)
    return path


# ----------------------------------------------------------------------------------------------------- listing
def list_media(folder: str | os.PathLike, *, recursive: bool = True,
               extensions: Iterable[str] = MEDIA_EXTENSIONS) -> list[Path]:
    """Media files under ``folder`` (by extension, case-insensitive), sorted, skipping hidden files and our own
    temporary files. Raises ``FileNotFoundError`` / ``NotADirectoryError`` naming the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"media folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    pattern = "**/*" if recursive else "*"
    # A dangling symlink stays in the list: reading it fails, so a job counts it as a bad file instead of losing it.
    found = [p for p in folder.glob(pattern)
             if (p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in exts
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)
