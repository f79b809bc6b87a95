import os

# Nothing may reach the network: every model in the tests is built from a config or a local file.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

from pathlib import Path

import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny random PuLID-FLUX pipeline shared by the tests (hooks are inert outside a run)."""
    import idgen

    return idgen.load("tiny-random", "tiny-random", "tiny-random", device="cpu")


# The project's shared data sits beside the repository (../shared), wherever the repository is cloned.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The folder of shared real face photos; the test is skipped where it is absent."""
    folder = SHARED_DATA / "faces"
    if not any(folder.glob("*.jpg")):
        pytest.skip(f"no face photos in {folder}")
    return folder


@pytest.fixture(scope="session")
def face_photos(faces_dir: Path) -> list[tuple[str, Image.Image]]:
    """The shared reference photos (8 IBench faces) as (file name, RGB image), loaded once."""
    from idgen.io import load_image

    return [(p.name, load_image(p)) for p in sorted(faces_dir.glob("*.jpg"))]
