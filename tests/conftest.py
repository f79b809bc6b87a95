import os

# Nothing may reach the network: every model in the tests is built from a config or a local file.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny random PuLID-FLUX pipeline shared by the tests (hooks are inert outside a run)."""
    import idgen

    return idgen.load("tiny-random", "tiny-random", "tiny-random", device="cpu")
