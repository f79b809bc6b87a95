from pathlib import Path

import pytest
from PIL import Image

FACES_DIR = Path("/work/shared/data/faces")


@pytest.fixture(scope="session")
def face_photos() -> list[tuple[str, Image.Image]]:
    """The shared reference photos (8 IBench faces), loaded once; skipped where they are absent."""
    paths = sorted(FACES_DIR.glob("*.jpg"))
    if not paths:
        pytest.skip(f"no face photos in {FACES_DIR}")
    from idgen.io import load_image

    return [(p.name, load_image(p)) for p in paths]


# The random encoder's output for a fixed photo, computed here and in a fresh interpreter.
PROBE_CODE = """
from PIL import Image
from idgen.identity.random import RandomIdentityEncoder
image = Image.new("RGB", (20, 16))
image.putpixel((3, 4), (250, 10, 99))
f = RandomIdentityEncoder(arcface_dim=8, clip_dim=24, vit_dim=16, num_vit_tokens=5)(image)
probe = [f.id_embedding.flatten().tolist(), f.vit_hidden[4].flatten().tolist()]
"""

# Run once in a fresh interpreter (each start costs ~3 s of torch import): which heavy optional
# packages importing our modules pulls in, and the probe above.
FRESH_PROCESS_CODE = (
    """
import json, sys
import idgen.io, idgen.identity, idgen.identity.pulid, idgen.identity.faces
from idgen.identity import PuLIDIdentityEncoder, DlibFaceDetector
heavy = ['torchvision', 'timm', 'cv2', 'insightface', 'onnxruntime', 'facexlib', 'open_clip', 'dlib',
         'face_recognition_models']
loaded = sorted(m for m in heavy if m in sys.modules)
"""
    + PROBE_CODE
    + """
print(json.dumps({"heavy": loaded, "probe": probe}))
"""
)


@pytest.fixture(scope="session")
def fresh_process() -> dict:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CODE], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


@pytest.fixture
def probe_here() -> list:
    scope: dict = {}
    exec(PROBE_CODE, scope)
    return scope["probe"]
