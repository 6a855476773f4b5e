"""Fixtures for the measure tests: the tiny BERT classifier and its fixed batches (see measure_models.py)."""

from __future__ import annotations

import pytest
import torch
from measure_models import make_bert_batches, make_tiny_bert


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one thread is fastest and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture
def bert_batches():
    return make_bert_batches()
