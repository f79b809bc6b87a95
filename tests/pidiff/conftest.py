"""Tiny random SD1.5-shaped models, built offline from configs in well under a second."""

import pytest

from idgen.pipelines.tiny import TINY_UNET, tiny_sd_pipeline, tiny_unet

__all__ = ["TINY_UNET", "tiny_sd_pipeline", "tiny_unet"]


@pytest.fixture
def sd_pipe():
    return tiny_sd_pipeline()
