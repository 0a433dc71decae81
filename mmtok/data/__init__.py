"""Data for mmtok: media decoding (PyAV), ingestion of manifests and folders, token shards, the training-side
loader and its synthetic stand-in. Corpora that come with knowledge of their content (the Moving-Digits corpus) live
in :mod:`mmtok.datasets`.

Light imports only here (NumPy, PyAV, and torch for :mod:`mmtok.frames`, which importing :mod:`mmtok` loads anyway);
:mod:`mmtok.data.shards`, :mod:`mmtok.data.loader` (datasets) and :mod:`mmtok.data.synthetic` are imported on their
own.
"""

from mmtok.data.ingest import (
    BadFileReport,
    Clip,
    ClipConfig,
    ClipRecord,
    ManifestError,
    iter_clips,
    load_clip,
    load_records,
    read_manifest,
    scan_folder,
)
from mmtok.data.media import (
    AUDIO_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    MediaError,
    MediaInfo,
    list_media,
    probe,
    read_audio,
    read_video,
    resize_and_crop,
    write_audio,
    write_gif,
    write_image,
    write_video,
)

__all__ = [
    "BadFileReport",
    "Clip",
    "ClipConfig",
    "ClipRecord",
    "ManifestError",
    "iter_clips",
    "load_clip",
    "load_records",
    "read_manifest",
    "scan_folder",
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
