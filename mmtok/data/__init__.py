"""Data for mmtok: media decoding (PyAV), ingestion of manifests and folders, token shards, the training-side
loader and its synthetic stand-in. Corpora that come with knowledge of their content (the Moving-Digits corpus) live
in :mod:`mmtok.datasets`.

Light imports only here (NumPy, PyAV, and torch for :mod:`mmtok.frames`, which importing :mod:`mmtok` loads anyway);
:mod:`mmtok.data.shards`, :mod:`mmtok.data.loader` (datasets) and :mod:`mmtok.data.synthetic` are imported on their
own.
"""

from mmtok.data import ingest, media
from mmtok.data.ingest import *  # noqa: F401,F403  (each module's __all__ is its public API)
from mmtok.data.media import *  # noqa: F401,F403

__all__ = [*ingest.__all__, *media.__all__]
