import pytest
import torch

# The random encoder's output for a fixed photo, computed here and in a fresh interpreter.
# One thread on both sides: a float reduction's last bits depend on how it is split across threads.
PROBE_CODE = """
import torch
from PIL import Image
torch.set_num_threads(1)
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
    threads = torch.get_num_threads()
    scope: dict = {}
    try:
        exec(PROBE_CODE, scope)
    finally:
        torch.set_num_threads(threads)
    return scope["probe"]
