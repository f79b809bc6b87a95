import pytest
import torch
from PIL import Image

from idgen.errors import NoFaceError
from idgen.identity import FaceBox, IdentityEncoder, RandomIdentityEncoder
from idgen.identity.random import crop_to_box

SMALL = dict(arcface_dim=8, clip_dim=24, vit_dim=16, num_vit_tokens=5, num_vit_features=3)


def _gradient(width: int = 40, height: int = 30, flip: bool = False) -> Image.Image:
    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(height):
            v = (x * 255) // (width - 1)
            image.putpixel((x, y), (255 - v, y * 8 % 256, 0) if flip else (v, y * 8 % 256, 0))
    return image


class FixedDetector:
    def __init__(self, boxes: list[FaceBox]) -> None:
        self.boxes = boxes
        self.calls = 0

    def __call__(self, image: Image.Image) -> list[FaceBox]:
        self.calls += 1
        return list(self.boxes)


def test_real_sized_shapes_norms_and_protocol() -> None:
    encoder = RandomIdentityEncoder()
    assert isinstance(encoder, IdentityEncoder)
    assert (encoder.id_dim, encoder.vit_dim) == (1280, 1024)
    features = encoder(_gradient())
    assert features.id_embedding.shape == (1, 1280)
    assert features.id_embedding.dtype == torch.float32
    assert len(features.vit_hidden) == 5
    assert all(h.shape == (1, 577, 1024) and h.dtype == torch.float32 for h in features.vit_hidden)
    arcface, clip = features.id_embedding[:, :512], features.id_embedding[:, 512:]
    assert torch.allclose(arcface.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert torch.allclose(clip.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert features.face_box is None
    # Hidden features differ between layers and are not degenerate.
    assert not torch.equal(features.vit_hidden[0], features.vit_hidden[1])
    assert all(0.1 < h.std().item() < 10 for h in features.vit_hidden)


def test_projection_weights_stay_small_at_real_sizes() -> None:
    encoder = RandomIdentityEncoder()
    n = sum(v.numel() for v in vars(encoder).values() if isinstance(v, torch.Tensor))
    assert n < 250_000  # vs 577 * 1024 * 5 ~ 3M for one dense output-sized matrix


def test_custom_dims() -> None:
    encoder = RandomIdentityEncoder(**SMALL, image_size=8)
    assert encoder.id_dim == 32
    features = encoder(_gradient())
    assert features.id_embedding.shape == (1, 32)
    assert [tuple(h.shape) for h in features.vit_hidden] == [(1, 5, 16)] * 3
    with pytest.raises(ValueError, match="rank"):
        RandomIdentityEncoder(rank=0)


def test_same_photo_bit_identical_different_photos_differ(face_photos) -> None:
    a, b = RandomIdentityEncoder(**SMALL), RandomIdentityEncoder(**SMALL)
    first = a(face_photos[0][1])
    again = b(face_photos[0][1].copy())
    assert torch.equal(first.id_embedding, again.id_embedding)
    assert all(torch.equal(x, y) for x, y in zip(first.vit_hidden, again.vit_hidden, strict=True))

    embeddings = torch.cat([a(photo).id_embedding for _, photo in face_photos])
    cos = embeddings @ embeddings.T / 2  # two unit-norm parts -> |row|^2 = 2
    off_diagonal = cos[~torch.eye(len(face_photos), dtype=torch.bool)]
    assert off_diagonal.max().item() < 0.999
    # A different seed is a different (random) encoder.
    other = RandomIdentityEncoder(**SMALL, seed=1)(face_photos[0][1])
    assert not torch.allclose(other.id_embedding, first.id_embedding)


def test_flipped_and_uniform_images() -> None:
    encoder = RandomIdentityEncoder(**SMALL)
    left, right = encoder(_gradient()), encoder(_gradient(flip=True))
    assert not torch.allclose(left.id_embedding, right.id_embedding)
    grey = encoder(Image.new("RGB", (10, 10), (128, 128, 128)))  # zero-ish pixels: the bias keeps it finite
    assert torch.isfinite(grey.id_embedding).all()
    assert all(torch.isfinite(h).all() for h in grey.vit_hidden)


def test_deterministic_across_processes(fresh_process: dict, probe_here: list) -> None:
    # Bit-identical (floats round-trip exactly through JSON) in another interpreter.
    assert fresh_process["probe"] == probe_here


def test_detector_crops_to_largest_face() -> None:
    photo = _gradient(60, 40)
    small, big = FaceBox(0, 0, 5, 5, score=0.9), FaceBox(10.5, 4.2, 40.0, 30.9, score=0.5)
    detector = FixedDetector([small, big])
    encoder = RandomIdentityEncoder(**SMALL, detector=detector)
    features = encoder(photo)
    assert detector.calls == 1
    assert features.face_box == big
    # Same as encoding the crop (floor/ceil of the box) with no detector.
    crop = photo.crop((10, 4, 40, 31))
    assert crop_to_box(photo, big).size == crop.size == (30, 27)
    plain = RandomIdentityEncoder(**SMALL)(crop)
    assert torch.equal(features.id_embedding, plain.id_embedding)


def test_crop_to_box_clamps_to_image() -> None:
    photo = _gradient(20, 10)
    assert crop_to_box(photo, FaceBox(-5, -3, 50, 40)).size == (20, 10)
    assert crop_to_box(photo, FaceBox(25, 12, 30, 20)).size == (1, 1)  # outside -> one corner pixel


def test_no_face() -> None:
    photo = _gradient()
    strict = RandomIdentityEncoder(**SMALL, detector=FixedDetector([]))
    with pytest.raises(NoFaceError, match=r"^no face found in id image$"):
        strict(photo, what="id image")
    with pytest.raises(NoFaceError, match=r"^no face found in image$"):
        strict(photo)
    lenient = RandomIdentityEncoder(**SMALL, detector=FixedDetector([]), require_face=False)
    features = lenient(photo)
    assert features.face_box is None
    assert torch.equal(features.id_embedding, RandomIdentityEncoder(**SMALL)(photo).id_embedding)
