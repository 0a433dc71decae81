"""Test-wide settings: offline hub, quiet progress bars, deterministic seeds."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MMTOK_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
