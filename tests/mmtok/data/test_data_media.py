"""PyAV helpers: round trips, frame-rate resampling (also variable frame rate), resize/crop, audio, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from mmtok.data.media import (
    MediaError,
    list_media,
    probe,
    read_audio,
    read_video,
    resize_and_crop,
    write_audio,
    write_video,
)

SR = 16000


def ramp_frames(t: int = 17, h: int = 48, w: int = 80) -> np.ndarray:
    """Frame i is a flat grey of level 12 * i: the frame index is readable after lossy coding."""
    return np.stack([np.full((h, w, 3), 12 * i, np.uint8) for i in range(t)])


def frame_index(frames: np.ndarray) -> list[int]:
    return [int(round(float(f.mean()) / 12)) for f in frames]


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    n = int(round(seconds * SR))
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_video(path, ramp_frames(), 8, audio=tone(17 / 8), sample_rate=SR)
    return path


def test_round_trip_video_and_audio(clip):
    info = probe(clip)
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.fps, info.sample_rate, info.channels) == (80, 48, 8.0, SR, 1)
    assert info.duration == pytest.approx(17 / 8, abs=1e-3)
    frames = read_video(clip)
    assert frames.dtype == np.uint8 and frames.shape == (17, 48, 80, 3)
    assert frame_index(frames) == list(range(17))
    np.testing.assert_allclose(frames.astype(float), ramp_frames().astype(float), atol=4)
    audio = read_audio(clip, sample_rate=SR)
    assert audio.dtype == np.float32 and audio.shape == (34000,)
    np.testing.assert_allclose(audio, tone(17 / 8), atol=1e-3)  # PCM in MP4 is sample exact


def test_fps_resampling_start_and_num_frames(clip):
    assert frame_index(read_video(clip, fps=4)) == list(range(0, 17, 2))
    # 16 fps doubles each frame; start=0.5 s is source frame 4
    assert frame_index(read_video(clip, fps=16, start=0.5, num_frames=6)) == [4, 4, 5, 5, 6, 6]
    assert frame_index(read_video(clip, start=1.0, end=1.5)) == [8, 9, 10, 11]
    assert len(read_video(clip, num_frames=5)) == 5


def test_too_short_raises_or_pads(clip):
    with pytest.raises(MediaError, match="too short"):
        read_video(clip, fps=8, num_frames=30)
    padded = read_video(clip, fps=8, num_frames=20, pad=True)
    assert frame_index(padded) == list(range(17)) + [16, 16, 16]


def test_variable_frame_rate(tmp_path):
    path = tmp_path / "vfr.mp4"
    times = [0.0, 0.1, 0.15, 0.5, 0.6]
    write_video(path, ramp_frames(5), 10, timestamps=times)
    native = read_video(path)
    assert frame_index(native) == [0, 1, 2, 3, 4]
    # at 20 fps the frame on screen at t = 0, .05, .10, ..., .65
    expected = [0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 4, 4]
    assert frame_index(read_video(path, fps=20)) == expected


def test_resize_crop_and_odd_sizes(tmp_path):
    # a frame whose left third is red, middle green, right blue: a centre crop keeps only green
    frames = np.zeros((3, 31, 93, 3), np.uint8)
    frames[:, :, :31, 0] = 255
    frames[:, :, 31:62, 1] = 255
    frames[:, :, 62:, 2] = 255
    path = tmp_path / "odd.mp4"
    write_video(path, frames, 8)
    assert read_video(path).shape == (3, 31, 93, 3)
    square = read_video(path, size=16)
    assert square.shape == (3, 16, 16, 3)
    assert square[..., 1].mean() > 200 and square[..., 0].mean() < 40 and square[..., 2].mean() < 40
    assert read_video(path, size=(10, 20)).shape == (3, 10, 20, 3)
    assert resize_and_crop(frames, 8).shape == (3, 8, 8, 3)


def test_audio_resample_start_duration_and_pad(clip, tmp_path):
    low = read_audio(clip, sample_rate=8000)
    assert abs(low.shape[0] - 17000) <= 2
    part = read_audio(clip, sample_rate=SR, start=1.0, duration=0.5)
    np.testing.assert_allclose(part, tone(17 / 8)[SR:SR + SR // 2], atol=1e-3)
    tail = read_audio(clip, sample_rate=SR, start=2.0, duration=1.0, pad=True)
    assert tail.shape == (SR,) and np.all(tail[SR // 8 + 10:] == 0)
    stereo = np.stack([tone(0.5, 300), tone(0.5, 600)])
    wav = tmp_path / "st.wav"
    write_audio(wav, stereo, SR)
    both = read_audio(wav, sample_rate=SR, mono=False)
    assert both.shape == (2, SR // 2)
    np.testing.assert_allclose(both, stereo, atol=1e-3)
    assert read_audio(wav, sample_rate=SR).shape == (SR // 2,)


def test_mpeg4_and_aac(tmp_path):
    path = tmp_path / "m4.mp4"
    write_video(path, ramp_frames(9), 8, audio=tone(9 / 8), sample_rate=SR, video_codec="mpeg4", audio_codec="aac")
    assert frame_index(read_video(path)) == list(range(9))
    audio = read_audio(path, sample_rate=SR)
    assert abs(audio.shape[0] - 9 * SR // 8) < 2048 and np.abs(audio).max() > 0.3


@pytest.fixture()
def bad_files(tmp_path, clip):
    data = clip.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    return tmp_path


@pytest.mark.parametrize("name,reason", [
    ("empty.mp4", "empty"), ("text.mp4", "not a readable media"), ("truncated.mp4", "truncated|not a readable|decode"),
    ("garbage.mp4", "not a readable|decode"), ("missing.mp4", "not found")])
def test_bad_files_raise_media_error(bad_files, name, reason):
    for reader in (lambda p: read_video(p, num_frames=17), lambda p: read_audio(p, sample_rate=SR)):
        with pytest.raises(MediaError, match=reason) as info:
            reader(bad_files / name)
        assert name in str(info.value) and info.value.reason


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video(path, ramp_frames(4), 8)
    assert not probe(path).has_audio
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(path, sample_rate=SR)
    wav = tmp_path / "a.wav"
    write_audio(wav, tone(0.1), SR)
    with pytest.raises(MediaError, match="no video stream"):
        read_video(wav)


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8), np.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.int32), 8)
    with pytest.raises(ValueError, match="sample_rate"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.uint8), 8, audio=tone(0.5))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 9, 8, 3), np.uint8), 8, video_codec="mpeg4")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_list_media(tmp_path):
    for name in ["b.mp4", "a.WAV", "sub/c.avi", "notes.txt", ".hidden.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_media(tmp_path)] == ["a.WAV", "b.mp4", "sub/c.avi"]
    assert [p.name for p in list_media(tmp_path, recursive=False)] == ["a.WAV", "b.mp4"]
    with pytest.raises(FileNotFoundError, match="not found"):
        list_media(tmp_path / "nope")


def test_truncated_faststart_file_decodes_up_to_the_cut(tmp_path):
    path = tmp_path / "fs.mp4"
    noise = np.random.default_rng(0).integers(0, 256, (17, 48, 64, 3), dtype=np.uint8)  # incompressible frames
    write_video(path, noise, 8, faststart=True)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # index first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames = read_video(cut)
    assert 0 < len(frames) < 17
    np.testing.assert_allclose(frames.mean(), noise[: len(frames)].mean(), atol=3)
    with pytest.raises(MediaError, match="too short"):
        read_video(cut, num_frames=17)


def test_write_video_takes_a_decoded_float_clip_in_minus_one_to_one(tmp_path):
    import torch

    frames = ramp_frames(9)                                                     # uint8 [T, H, W, 3], 0 .. 96
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0   # [3, T, H, W] in [-1, 1]
    path = write_video(tmp_path / "float.mp4", clip, 8)
    np.testing.assert_allclose(read_video(path).astype(float), frames.astype(float), atol=4)   # not read as [0, 1]


def test_write_gif_round_trip(tmp_path):
    from mmtok.data.media import read_video, write_gif

    frames = np.zeros((5, 16, 24, 3), np.uint8)
    for t in range(5):
        frames[t, :, t * 4:t * 4 + 4] = 255  # a white bar moving right
    path = write_gif(tmp_path / "bar.gif", frames, fps=8)
    back = np.asarray(read_video(path))
    assert back.shape == (5, 16, 24, 3)
    assert [int(np.argmax(f.mean(axis=(0, 2)))) // 4 for f in back] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_gif(tmp_path / "bad.gif", frames[..., 0], fps=8)


def test_write_image_round_trip_and_shape_error(tmp_path):
    from mmtok.data.media import read_video, write_image

    image = np.zeros((12, 20, 3), np.uint8)
    image[:, :10, 0] = 200                                   # left half red
    back = np.asarray(read_video(write_image(tmp_path / "img.png", image)))
    assert back.shape == (1, 12, 20, 3)
    np.testing.assert_array_equal(back[0], image)            # PNG is lossless
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        write_image(tmp_path / "bad.png", image[..., 0])
    with pytest.raises(ValueError, match=r"must end in \.png"):
        write_image(tmp_path / "img.jpg", image)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from mmtok.data.media import read_video, write_video

    frames = np.full((3, 16, 16, 3), 100, np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=8)
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_video(path, frames, fps=8, video_codec="no_such_codec")   # fails inside the open container
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    assert read_video(path).shape == (3, 16, 16, 3)


def test_audio_with_nan_samples_is_a_media_error(tmp_path):
    """A float WAV holding NaN: an error naming the file, never a waveform."""
    import struct

    samples = np.zeros(1600, np.float32)
    samples[100] = np.nan
    data = samples.tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)  # IEEE float, mono, 16 kHz
    wav = (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
           + fmt + b"data" + struct.pack("<I", len(data)) + data)
    (tmp_path / "nan.wav").write_bytes(wav)
    with pytest.raises(MediaError, match=r"nan\.wav: audio holds NaN or infinite samples"):
        read_audio(tmp_path / "nan.wav", sample_rate=16000)


def test_a_file_that_refuses_to_seek_is_decoded_from_the_start(clip, monkeypatch):
    """Some MPEG program streams refuse every seek and are left past their data by the attempt (pygame's blue.mpg
    in Debian): the reader opens the file again and decodes from the beginning."""
    import errno

    import av

    from mmtok.data import media

    class Unseekable:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def seek(self, *args, **kwargs):
            for _ in self._container.demux():   # the failed seek leaves the demuxer at the end
                pass
            raise av.error.PermissionError(errno.EPERM, "Operation not permitted")

    real_open, opened = media._open, []

    def open_first_unseekable(path):
        opened.append(path)
        container = real_open(path)
        return Unseekable(container) if len(opened) == 1 else container

    monkeypatch.setattr(media, "_open", open_first_unseekable)
    assert frame_index(read_video(clip, start=0.5, num_frames=3)) == [4, 5, 6]
    assert len(opened) == 2
    opened.clear()
    np.testing.assert_allclose(read_audio(clip, sample_rate=SR, start=1.0, duration=0.5), tone(17 / 8)[SR:SR + SR // 2],
                               atol=1e-3)
    assert len(opened) == 2
