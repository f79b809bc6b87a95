"""PuLID's identity-photo preprocessing against a re-statement of the reference (pulid_reference.py)."""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idgen.errors import NoFaceError
from idgen.identity import FaceBox
from idgen.identity import pulid as P

cv2 = pytest.importorskip("cv2")
from tests.identity import pulid_reference as R  # noqa: E402  (needs cv2)


def smooth_photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A uint8 RGB photo with detail at several scales (so resampling differences would show)."""
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    base = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + fine, 0, 255).astype(np.uint8)


def face_landmarks(rng: np.random.Generator, width: int, height: int, noise: float) -> np.ndarray:
    """The 512 template under a random similarity inside the photo, plus Gaussian noise, float32."""
    scale = rng.uniform(0.3, 0.7) * min(width, height) / 512
    a = np.deg2rad(rng.uniform(-30, 30))
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = rng.uniform(0.4, 0.6, 2) * (width, height)
    points = (R.TEMPLATE_512 - 256) @ rot.T + centre
    return (points + rng.normal(0, noise, points.shape)).astype(np.float32)


def det_rows(*landmark_sets: np.ndarray, pad: float = 30.0) -> np.ndarray:
    rows = [[*lm.min(0) - pad, *lm.max(0) + pad, 0.99, *lm.flatten()] for lm in landmark_sets]
    return np.array(rows, dtype=np.float32)


# --- resize ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 700), (1024, 700)),
        ((800, 300), (800, 300)),
        ((3000, 2001), (1024, 683)),
        ((997, 1999), (510, 1023)),
    ],
)
def test_resize_long_side_matches_pulid(size: tuple[int, int], expected: tuple[int, int]) -> None:
    photo = smooth_photo(np.random.default_rng(sum(size)), *size)
    got = P.resize_long_side(photo)
    ref = R.resize_numpy_image_long(photo, 1024)
    # Sizes are truncated: int(2001 * 1024 / 3000) = 683, and 1999 * (1024 / 1999) = 1023.999... -> 1023.
    assert (got.shape[1], got.shape[0]) == expected
    assert got.dtype == np.uint8 and np.array_equal(got, ref)
    if max(size) <= 1024:
        assert got is photo  # never enlarged, not even copied


def test_resize_is_lanczos4() -> None:
    photo = smooth_photo(np.random.default_rng(3), 1500, 1200)
    got = P.resize_long_side(photo)
    area = cv2.resize(photo, (1024, 819), interpolation=cv2.INTER_AREA)
    assert got.shape == area.shape and not np.array_equal(got, area)


# --- alignment ---------------------------------------------------------------------------------------


def test_template_is_facexlibs_scaled() -> None:
    assert np.array_equal(P.face_template(512), R.TEMPLATE_512)
    assert np.allclose(P.face_template(256), R.TEMPLATE_512 / 2, atol=0, rtol=0)


@pytest.mark.parametrize("noise", [0.0, 0.5, 1.5])
def test_align_matches_reference_on_synthetic_photos(noise: float) -> None:
    rng = np.random.default_rng(int(noise * 10))
    for _ in range(12):
        width, height = (int(v) for v in rng.integers(300, 900, 2))
        bgr = smooth_photo(rng, width, height)
        landmarks = face_landmarks(rng, width, height, noise)
        ref_crop, ref_affine = R.align_warp_face(bgr, det_rows(landmarks))
        crop, affine = P.align_face(bgr, landmarks)
        assert np.abs(affine - ref_affine).max() <= 1e-6
        assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
        assert np.abs(crop.astype(int) - ref_crop.astype(int)).max() <= 1


def test_noise_free_landmarks_give_the_exact_similarity() -> None:
    # Landmarks made by a known similarity: the estimated affine is its inverse (float32 precision).
    a, s, t = np.deg2rad(12.0), 0.8, np.array([140.0, 95.0])
    forward = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    landmarks = (R.TEMPLATE_512 @ forward.T + t).astype(np.float32)
    affine = P.alignment_affine(landmarks, P.face_template())
    inverse = np.linalg.inv(forward)
    assert np.allclose(affine[:, :2], inverse, atol=1e-5)
    assert np.allclose(affine[:, 2], -inverse @ t, atol=2e-3)


def test_lmeds_not_ransac() -> None:
    # The nose 1 px off (2 px in the crop): RANSAC (threshold 3 px) keeps it as an inlier and fits
    # all five; LMEDS (facexlib's method) sets it aside. The two crops differ by several pixels.
    landmarks = (R.TEMPLATE_512 * 0.5 + 100).astype(np.float32)
    landmarks[2] += (1.0, 0.0)
    template = P.face_template()
    ransac = cv2.estimateAffinePartial2D(landmarks, template)[0]
    ours = P.alignment_affine(landmarks, template)
    ref = cv2.estimateAffinePartial2D(landmarks, template, method=cv2.LMEDS)[0]
    assert np.array_equal(ours, ref)
    assert np.abs(ours - ransac).max() > 0.1


def test_border_is_facexlibs_grey() -> None:
    bgr = np.full((100, 100, 3), 255, np.uint8)
    landmarks = (R.TEMPLATE_512 * 0.1 - 10).astype(np.float32)  # at the corner: the crop runs off
    crop, _ = P.align_face(bgr, landmarks)
    assert crop[0, 0].tolist() == [135, 133, 132] and crop[256, 256].tolist() == [255, 255, 255]


def test_degenerate_landmarks_give_none() -> None:
    assert P.align_face(np.zeros((50, 50, 3), np.uint8), np.zeros((5, 2), np.float32)) is None


def test_face_choices_match_the_reference() -> None:
    # Centre face (facexlib), first on equal distances; largest face (PuLID's sort), LAST on equal areas.
    boxes = np.array([[0, 0, 60, 60], [45, 40, 65, 60], [70, 70, 90, 90], [10, 10, 70, 70]], dtype=np.float32)
    assert P.center_face_index(boxes, 100, 100) == R.center_face(boxes, 100, 100) == 1
    assert P.center_face_index(boxes[[0, 2]], 100, 100) == R.center_face(boxes[[0, 2]], 100, 100) == 0
    assert P.largest_face_index(boxes) == R.largest_antelope_face(boxes) == 3  # 0 and 3 tie: the last
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = rng.integers(0, 50, (6, 4)).astype(np.float32)
        b[:, 2:] += b[:, :2] + rng.integers(1, 4, (6, 2)) * 10  # many equal areas
        assert P.largest_face_index(b) == R.largest_antelope_face(b)
        assert P.center_face_index(b, 120, 90) == R.center_face(b, 90, 120)


# --- the encoder's whole preprocessing path, with stand-in detectors --------------------------------


class _Detector:
    """Stands in for SCRFD / RetinaFace: records the photo it is given, answers fixed rows."""

    def __init__(self, rows: np.ndarray, kps: bool = False) -> None:
        self.rows, self.kps, self.seen = rows, kps, []

    def detect(self, bgr, max_num=0, metric="default"):
        self.seen.append(bgr)
        kps = self.rows[:, 5:15].reshape(-1, 5, 2) if len(self.rows) else None
        return self.rows[:, :5], kps

    def detect_faces(self, bgr, threshold):
        self.seen.append(bgr)
        return self.rows


class _Recogniser:
    def get(self, bgr, face):
        return np.full(512, float(face.bbox[0]), np.float32)

    def get_feat(self, crop):
        return np.full((1, 512), -1.0, np.float32)


class _Vision(torch.nn.Module):
    """Records its input; its 'hidden states' are what the hooks would capture."""

    def __init__(self, owner) -> None:
        super().__init__()
        self.owner, self.inputs = owner, []

    def forward(self, x):
        self.inputs.append(x)
        self.owner._hidden.extend([x.flatten(2)] * 5)
        return torch.ones(1, 768)


def _stand_in_encoder(antelope_rows: np.ndarray, retina_rows: np.ndarray) -> P.PuLIDIdentityEncoder:
    enc = P.PuLIDIdentityEncoder.__new__(P.PuLIDIdentityEncoder)
    enc.device, enc.dtype, enc._hidden = torch.device("cpu"), torch.float32, []
    enc._det, enc._rec = _Detector(antelope_rows), _Recogniser()
    enc._face_cls = lambda bbox, kps, det_score: types.SimpleNamespace(
        bbox=bbox, kps=kps, det_score=det_score
    )
    enc._retinaface = _Detector(retina_rows)
    enc._bisenet = lambda x: (torch.zeros(1, 19, *x.shape[2:]).index_fill_(1, torch.tensor([1]), 1.0),)
    enc._vision = _Vision(enc)
    return enc


def test_encoder_crops_as_pulid_does() -> None:
    rng = np.random.default_rng(7)
    rgb = smooth_photo(rng, 2048, 1536)  # resized to 1024 x 768 first
    landmarks = face_landmarks(rng, 1024, 768, 0.8)  # as a detector finds them on the resized photo
    small = det_rows(landmarks * 0.5 + 10)
    rows = np.concatenate([det_rows(landmarks), small])
    enc = _stand_in_encoder(rows, rows)
    features = enc(Image.fromarray(rgb), what="me.jpg")

    ref_crop, _ = R.crop_of_photo(rgb, rows)
    assert enc._det.seen[0].shape == (768, 1024, 3)
    assert np.array_equal(
        enc._retinaface.seen[0], cv2.cvtColor(R.resize_numpy_image_long(rgb), cv2.COLOR_RGB2BGR)
    )
    # The CLIP input: every pixel is face (label 1), so it is the grey crop, resized and normalised.
    crop = torch.from_numpy(ref_crop[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    expected = torch.nn.functional.interpolate(P.to_gray(crop), size=(336, 336), mode="bicubic")
    expected = P.normalize_image(expected, P.OPENAI_CLIP_MEAN, P.OPENAI_CLIP_STD)
    assert torch.allclose(enc._vision.inputs[0], expected, atol=1e-5)
    # ArcFace of the largest face; its box given back in the photo's own pixels (x2).
    assert features.id_embedding[0, 0].item() == pytest.approx(float(rows[0, 0]))
    box = features.face_box
    assert box == FaceBox(
        *(float(v) * s for v, s in zip(rows[0, :4], (2, 2, 2, 2), strict=True)), float(rows[0, 4])
    )
    assert features.id_embedding.shape == (1, 1280) and len(features.vit_hidden) == 5


def test_encoder_fallback_and_no_face() -> None:
    rng = np.random.default_rng(8)
    rgb = smooth_photo(rng, 400, 300)
    rows = det_rows(face_landmarks(rng, 400, 300, 0.5))
    features = _stand_in_encoder(rows[:0], rows)(Image.fromarray(rgb))
    assert (features.id_embedding[0, :512] == -1).all()  # glintr100 on the aligned crop
    with pytest.raises(NoFaceError) as info:
        _stand_in_encoder(rows, rows[:0])(Image.fromarray(rgb), what="photos/me.jpg")
    assert str(info.value) == "no face found in photos/me.jpg"


# --- facexlib itself, where its source is installed ----------------------------------------------------


def _facexlib_helper_module(monkeypatch: pytest.MonkeyPatch):
    """facexlib's face_restoration_helper.py, its model-loading imports stubbed out (no weights)."""
    try:
        spec = importlib.util.find_spec("facexlib")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facexlib is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "utils" / "face_restoration_helper.py"
    stubs = {  # parent packages too, so that neither facexlib's __init__ nor torchvision runs
        "facexlib": types.ModuleType("facexlib"),
        "facexlib.utils": types.ModuleType("facexlib.utils"),
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.transforms": types.ModuleType("torchvision.transforms"),
        "facexlib.detection": types.SimpleNamespace(init_detection_model=lambda *a, **k: None),
        "facexlib.parsing": types.SimpleNamespace(init_parsing_model=lambda *a, **k: None),
        "facexlib.utils.misc": types.SimpleNamespace(img2tensor=None, imwrite=None),
        "torchvision.transforms.functional": types.SimpleNamespace(normalize=None),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    module_spec = importlib.util.spec_from_file_location("facexlib_restoration_helper_under_test", source)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_against_facexlib_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    helper_module = _facexlib_helper_module(monkeypatch)
    rng = np.random.default_rng(11)
    for noise in (0.3, 1.0, 2.0):
        bgr = smooth_photo(rng, 640, 480)
        rows = det_rows(face_landmarks(rng, 640, 480, noise), face_landmarks(rng, 640, 480, noise))
        helper = helper_module.FaceRestoreHelper(1, face_size=512, crop_ratio=(1, 1), device="cpu")
        helper.face_det = types.SimpleNamespace(detect_faces=lambda img, threshold, rows=rows: rows)
        helper.read_image(bgr)
        helper.get_face_landmarks_5(only_center_face=True)
        helper.align_warp_face()
        i = P.center_face_index(rows[:, :4], 640, 480)
        crop, affine = P.align_face(bgr, rows[i, 5:15].reshape(5, 2))
        assert np.abs(affine - helper.affine_matrices[0]).max() <= 1e-6
        assert np.abs(crop.astype(int) - helper.cropped_faces[0].astype(int)).max() <= 1


def test_opencv_aligns_as_the_4x_series_the_reference_used() -> None:
    # Numbers from OpenCV 4.10-4.12 (identical there); OpenCV 5 estimates LMEDS and warps slightly
    # differently (matrices ~1e-5 apart, crops up to several grey levels), so it is not PuLID's crop.
    version = cv2.__version__
    landmarks = np.array(
        [[101.3, 150.2], [160.9, 148.1], [131.7, 185.4], [106.2, 214.9], [159.8, 212.3]], dtype=np.float32
    )
    expected = np.array(
        [
            [2.0619864986338485, -0.060260641929180438, -4.5889858448367704],
            [0.060260641929180438, 2.0619864986338485, -76.261567418309710],
        ]
    )
    affine = P.alignment_affine(landmarks, P.face_template())
    assert np.abs(affine - expected).max() < 1e-9, f"OpenCV {version}: install opencv-python-headless<5"
    yy, xx = np.mgrid[0:300, 0:300]
    pattern = np.stack([(xx * 7 + yy * 13) % 256, (xx * 3) % 256, (yy * 5) % 256], -1).astype(np.uint8)
    crop = P.warp_face(pattern, np.array([[1.7, 0.3, -120.3], [-0.3, 1.7, -150.7]]), 64)
    assert int(crop.astype(np.int64).sum()) == 1720144, f"OpenCV {version}: install opencv-python-headless<5"
