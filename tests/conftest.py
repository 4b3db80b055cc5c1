"""Shared pytest setup: every test runs in fast mode unless it says otherwise."""

import os

os.environ.setdefault("LLM_COURSE_FAST", "1")

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids thread-pool overhead (and contention on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
