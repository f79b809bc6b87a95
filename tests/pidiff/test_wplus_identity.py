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


# --- e4e's alignment, against a re-statement of e4e's align_face (tests/pidiff/e4e_reference.py) --------


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colours plus fine noise, nowhere black (so black fill would show)."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([60 + 150 * xx, 60 + 150 * yy, 120 + 60 * np.sin(9 * xx * yy)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 30, 255).astype(np.uint8))


def face_points(centre: tuple[float, float], eye_distance: float, angle_deg: float) -> np.ndarray:
    """68 landmarks whose eyes and mouth corners (all e4e uses) form an upright face turned by angle."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    d = eye_distance
    points = np.zeros((68, 2))
    points[36:42] = np.array([-d / 2, 0]) + np.random.default_rng(0).normal(0, d / 20, (6, 2))
    points[42:48] = np.array([d / 2, 0]) + np.random.default_rng(1).normal(0, d / 20, (6, 2))
    points[48], points[54] = (-0.4 * d, 1.1 * d), (0.42 * d, 1.1 * d)
    return points @ rot.T + centre


ALIGN_CASES = {  # photo size, face centre, eye distance, angle, output size
    "centred": ((240, 200), (120, 90), 40, 5, 64),
    "left edge": ((240, 200), (25, 100), 44, -8, 64),
    "top-right corner": ((300, 260), (285, 15), 50, 20, 64),
    "bottom edge": ((200, 240), (100, 225), 36, 0, 48),
    "large, shrunk": ((700, 640), (350, 300), 190, 12, 64),
    "large, at the edge": ((700, 640), (640, 320), 170, -15, 64),
    "photo smaller than the quad": ((90, 80), (45, 35), 40, 3, 64),
}


@pytest.mark.parametrize("case", list(ALIGN_CASES))
def test_align_face_matches_e4e(case: str) -> None:
    from tests.pidiff import e4e_reference as R

    size, centre, eye_distance, angle, out = ALIGN_CASES[case]
    image = photo(np.random.default_rng(len(case)), *size)
    points = face_points(centre, eye_distance, angle)
    got = np.asarray(align_face(image, points, out), dtype=int)
    expected = np.asarray(R.align_face(image, points.copy(), out), dtype=int)
    assert got.shape == (out, out, 3)
    assert np.abs(got - expected).max() <= 1
    assert got.min() >= 20  # no black fill: the padding is the blurred reflection


def test_gaussian_blur_is_scipys() -> None:
    from idgen.identity.wplus import gaussian_blur
    from tests.pidiff import e4e_reference as R

    rng = np.random.default_rng(5)
    img = rng.uniform(0, 255, (37, 29, 3)).astype(np.float32)
    for sigma in (0.7, 2.5, 9.0):  # 9.0: radius 36, wider than the image (mirrored again)
        got = gaussian_blur(img, sigma)
        assert got.dtype == np.float32
        assert np.abs(got - R._gaussian_filter_direct(img, [sigma, sigma, 0])).max() < 1e-3
        scipy_ndimage = pytest.importorskip("scipy.ndimage")
        assert np.abs(got - scipy_ndimage.gaussian_filter(img, [sigma, sigma, 0])).max() < 1e-3


def test_large_faces_are_shrunk_with_antialiasing() -> None:
    # A fine checkerboard: shrinking with Lanczos averages it to grey; point sampling would alias.
    board = (np.indices((800, 800)).sum(0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([board] * 3, axis=-1))
    face = np.asarray(align_face(image, face_points((400, 380), 200, 0), 64), dtype=float)
    assert np.abs(face[16:48, 16:48] - 127.5).max() < 20
