"""Test-wide settings: offline hub, quiet progress bars, one torch thread, deterministic seeds."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MMTOK_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    """The tests run debug-size models, whose small kernels are dominated by per-op overhead: one thread is faster,
    and far faster (10-100x) when other jobs share the cores. Every test also starts from the same seed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
