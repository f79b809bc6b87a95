"""PIDiff's photo preprocessing: FFHQ alignment from 68 landmarks, background removal, e4e W+."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idgen.errors import IdgenError, NoFaceError
from idgen.identity.base import FaceBox
from idgen.identity.wplus import ParsingBackgroundRemover, WPlusIdentityEncoder, align_face, ffhq_quad
from idgen.models.e4e import E4EConfig, E4EEncoder

FACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "faces"


def landmarks() -> np.ndarray:
    """Eyes centred at (40, 50) and (60, 50), mouth corners at (45, 70) and (55, 70)."""
    points = np.zeros((68, 2))
    points[36:42] = (40, 50)
    points[42:48] = (60, 50)
    points[48], points[54] = (45, 70), (55, 70)
    return points


def test_ffhq_quad_by_hand():
    # eye_avg (50, 50), eye_to_eye (20, 0), eye_to_mouth (0, 20): x = (40, 0) scaled to max(40, 36) = 40,
    # y = (0, 40), centre = (50, 52)
    expected = np.array([[10, 12], [10, 92], [90, 92], [90, 12]], dtype=float)
    assert np.allclose(ffhq_quad(landmarks()), expected)
    with pytest.raises(IdgenError, match="68"):
        ffhq_quad(np.zeros((5, 2)))


def test_an_upright_quad_is_a_plain_crop():
    yy, xx = np.mgrid[0:100, 0:100]
    smooth = np.stack([xx * 2.5, yy * 2.5, (xx + yy) * 1.2], axis=-1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(smooth)
    got = np.asarray(align_face(image, landmarks(), size=80), dtype=float)
    crop = np.asarray(image.crop((10, 12, 90, 92)), dtype=float)
    assert np.abs(got - crop).max() <= 3  # bicubic resampling of a linear ramp


class OneFace:
    def __init__(self, found=True):
        self.found = found

    def detect_with_landmarks(self, image):
        return [(FaceBox(30, 40, 70, 80, 1.0), landmarks())] if self.found else []


TINY_E4E = E4EConfig(w_dim=16, input_size=32, stage_channels=(8, 8, 16, 16), stage_units=(1, 2, 2, 1),
                     se_reduction=4)  # fmt: skip


def test_encoder_gives_flattened_w_plus_and_names_a_missing_face():
    torch.manual_seed(0)
    e4e = E4EEncoder(TINY_E4E)
    photo = Image.new("RGB", (100, 100), (120, 90, 60))
    features = WPlusIdentityEncoder(e4e, OneFace())(photo, what="me.jpg")
    assert features.id_embedding.shape == (1, 18 * 16) and features.vit_hidden == []
    face = align_face(photo, landmarks(), 32)
    direct = e4e(torch.from_numpy(np.asarray(face, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None])
    assert torch.allclose(features.id_embedding, direct.flatten(1))
    with pytest.raises(NoFaceError, match=r"no face found in me\.jpg"):
        WPlusIdentityEncoder(e4e, OneFace(found=False))(photo, what="me.jpg")


def test_parsing_background_remover_whitens_background_labels():
    face = Image.new("RGB", (4, 2), (10, 20, 30))

    def parse(x):
        labels = torch.ones(1, 1, 2, 4, dtype=torch.long)
        labels[..., :2] = 0  # left half is background
        return labels

    out = np.asarray(ParsingBackgroundRemover(parse)(face))
    assert (out[:, :2] == 255).all() and (out[:, 2:] == (10, 20, 30)).all()


@pytest.mark.skipif(not FACES.is_dir(), reason="needs the shared real face photos")
def test_a_real_photo_is_found_and_aligned():
    pytest.importorskip("dlib")
    torch.manual_seed(0)
    encoder = WPlusIdentityEncoder(E4EEncoder(TINY_E4E))
    photo = Image.open(FACES / "id_001.jpg").convert("RGB")
    face, box = encoder.aligned_face(photo)
    assert face.size == (32, 32) and box.area > 0
