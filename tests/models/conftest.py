"""Shared settings for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Iterator[None]:
    """Run the tiny models on one CPU thread (restored after each module).

    Their ops are far too small to gain from intra-op threads, and on a busy machine the OpenMP
    workers spin-wait on each other: two threads made these tests ~15x slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
