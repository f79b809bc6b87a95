import sys

import numpy as np
import pytest
from PIL import Image

from idgen.errors import IdgenError
from idgen.identity import FaceDetector, RandomIdentityEncoder
from idgen.identity.faces import DlibFaceDetector, face_recognition_model_path


def test_missing_dlib_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(IdgenError) as info:
        DlibFaceDetector()
    assert str(info.value) == "dlib is not installed: pip install 'idgen[faces]'"


def test_missing_face_recognition_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # find_spec -> None
    with pytest.raises(
        IdgenError, match=r"face_recognition_models is not installed: pip install 'idgen\[faces\]'"
    ):
        face_recognition_model_path("shape_predictor_68_face_landmarks.dat")


@pytest.fixture(scope="module")
def detector() -> DlibFaceDetector:
    pytest.importorskip("dlib")
    return DlibFaceDetector()


def test_finds_one_face_in_each_reference_photo(detector: DlibFaceDetector, face_photos) -> None:
    assert isinstance(detector, FaceDetector)
    found = {}
    for name, photo in face_photos:
        boxes = detector(photo)
        width, height = photo.size
        for box in boxes:
            assert 0 <= box.left < box.right <= width
            assert 0 <= box.top < box.bottom <= height
            assert isinstance(box.score, float)
        if boxes:
            found[name] = boxes
    # dlib's HOG detector (upsample 0) finds exactly one face in each of the 8 IBench photos.
    assert sorted(found) == [name for name, _ in face_photos]
    for name, boxes in found.items():
        assert len(boxes) == 1, name
        photo = dict(face_photos)[name]
        assert boxes[0].area > 0.02 * photo.size[0] * photo.size[1], name


def test_no_face_in_blank_images(detector: DlibFaceDetector) -> None:
    assert detector(Image.new("RGB", (200, 200), (255, 255, 255))) == []
    assert detector(Image.new("RGB", (200, 150), (90, 90, 90))) == []
    assert detector(Image.new("L", (64, 64), 0)) == []  # any mode is accepted


def test_boxes_sorted_by_score(detector: DlibFaceDetector, face_photos) -> None:
    # Two photos side by side: two faces, best score first.
    (_, a), (_, b) = face_photos[2], face_photos[3]
    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    boxes = detector(canvas)
    assert len(boxes) == 2
    assert boxes[0].score >= boxes[1].score
    assert sorted(box.left < a.width for box in boxes) == [False, True]


def test_landmarks(face_photos) -> None:
    pytest.importorskip("dlib")
    try:
        face_recognition_model_path("shape_predictor_68_face_landmarks.dat")
    except IdgenError:
        pytest.skip("face_recognition_models is not installed")
    photo = face_photos[0][1]
    # The 5-point model (9 MB) loads fast; the 68-point one (100 MB) takes ~2 s and the same code path.
    det = DlibFaceDetector(landmarks=True, landmark_points=5)
    [(box, marks)] = det.detect_with_landmarks(photo)
    assert marks.shape == (5, 2)
    assert ((marks[:, 0] >= box.left) & (marks[:, 0] <= box.right)).all()
    assert ((marks[:, 1] >= box.top) & (marks[:, 1] <= box.bottom)).all()
    # dlib's 5 points: eye corners (0-3) and the nose (4); the eyes lie above the nose.
    assert marks[:4, 1].max() < marks[4, 1]
    assert det(photo) == [box]


def test_landmarks_need_the_flag(detector: DlibFaceDetector) -> None:
    with pytest.raises(IdgenError, match="landmarks=True"):
        detector.detect_with_landmarks(Image.new("RGB", (10, 10)))
    with pytest.raises(ValueError):
        DlibFaceDetector(upsample=-1)


def test_model_path_lookup() -> None:
    pytest.importorskip("dlib")
    try:
        path = face_recognition_model_path("shape_predictor_5_face_landmarks.dat")
    except IdgenError:
        pytest.skip("face_recognition_models is not installed")
    assert path.is_file() and path.parent.name == "models"
    assert "face_recognition_models" not in sys.modules  # located, not imported
    with pytest.raises(IdgenError, match=r"no_such\.dat not found in face_recognition_models"):
        face_recognition_model_path("no_such.dat")


def test_random_encoder_with_dlib(detector: DlibFaceDetector, face_photos) -> None:
    photo = face_photos[1][1]
    encoder = RandomIdentityEncoder(arcface_dim=8, clip_dim=8, vit_dim=8, num_vit_tokens=3, detector=detector)
    features = encoder(photo)
    assert features.face_box == detector(photo)[0]
    # The features come from the face crop: padding the photo with white leaves them unchanged.
    padded = Image.new("RGB", (photo.width + 300, photo.height), (255, 255, 255))
    padded.paste(photo, (0, 0))
    again = encoder(padded)
    assert np.allclose(features.id_embedding.numpy(), again.id_embedding.numpy())
