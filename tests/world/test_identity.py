"""The demo world's generator-side identity encoder: strict save/load, crops, and the shipped weights."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idgen.errors import CheckpointError, NoFaceError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.world import backgrounds as bg
from idgen.world.identity import (
    DEFAULT_ASSETS,
    WorldFaceDetector,
    WorldFaceRecognizer,
    WorldFaceTower,
    WorldIdentityEncoder,
    crop_faces,
    pil_to_tensor,
    train_identity_models,
)
from idgen.world.render import Scene, render, render_reference, test_identities

MODELS = [WorldFaceDetector, WorldFaceRecognizer, WorldFaceTower]


def _face_free() -> Image.Image:
    planar, _ = bg.backdrop(2)
    small = planar.reshape(3, 64, 4, 64, 4).mean(axis=(2, 4))
    return Image.fromarray(np.rint(small).astype(np.uint8).transpose(1, 2, 0))


def _held_out_renders(n: int) -> list:
    rng = np.random.default_rng(123)
    ids = test_identities()
    return [render(ids[k], Scene.random(rng), seed=k) for k in range(n)]


@pytest.fixture(scope="module")
def shipped() -> WorldIdentityEncoder:
    folders = [DEFAULT_ASSETS / n / "model.safetensors" for n in ("detector", "recognizer", "tower")]
    missing = [str(p) for p in folders if not p.is_file()]
    if missing:
        pytest.skip(
            f"no shipped identity weights (run `idgen world train --stage identity`): missing {missing[0]}"
        )
    return WorldIdentityEncoder.from_pretrained(DEFAULT_ASSETS)


@pytest.mark.parametrize("cls", MODELS)
def test_round_trip_is_strict(cls, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    key = next(iter(state))
    state["renamed." + key] = state.pop(key)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        cls.from_pretrained(tmp_path)


def test_config_names_the_model_type(tmp_path: Path) -> None:
    WorldFaceTower(depth=2, taps=(1, 2)).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "world-face-tower"
    with pytest.raises(CheckpointError, match="model_type"):
        WorldFaceDetector.from_pretrained(tmp_path)


def test_crop_faces_geometry() -> None:
    images = torch.rand(2, 3, 64, 64)
    # The whole image as a box, no expansion: a 2x2 box filter of it.
    full = crop_faces(images, torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 2), expand=1.0, size=32)
    torch.testing.assert_close(full, torch.nn.functional.avg_pool2d(images, 2))
    # A wide box gives a square crop (its longer side); outside the image is black.
    crop = crop_faces(torch.ones(1, 3, 64, 64), torch.tensor([[-16.0, 8.0, 16.0, 24.0]]), 1.0, 8)
    assert crop.shape == (1, 3, 8, 8)
    assert crop[..., :4].max() == 0 and crop[..., 4:].min() == 1


def test_quick_training_runs_end_to_end(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only add contention on a busy machine
    try:
        results = train_identity_models(tmp_path / "work", tmp_path / "assets", quick=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert {"detector", "recognizer", "tower", "timings"} <= set(results)
    encoder = WorldIdentityEncoder.from_pretrained(tmp_path / "assets", require_face=False)
    assert encoder.id_dim == 128


# ---------------------------------------------------------------------------------------------------------
# Shipped weights.
# ---------------------------------------------------------------------------------------------------------
def test_detector_finds_held_out_faces_and_no_face_in_a_backdrop(shipped: WorldIdentityEncoder) -> None:
    ious = []
    for r in _held_out_renders(8):
        boxes = shipped.detector(Image.fromarray(r.image))
        assert len(boxes) == 1, r.face_box
        b = boxes[0]
        gl, gt, gr, gb = r.face_box
        inter = max(0.0, min(b.right, gr) - max(b.left, gl)) * max(0.0, min(b.bottom, gb) - max(b.top, gt))
        ious.append(inter / (b.area + (gr - gl) * (gb - gt) - inter))
    assert np.mean(ious) >= 0.7 and min(ious) >= 0.4, ious
    assert shipped.detector(_face_free()) == []


def test_no_face_raises_or_warns(shipped: WorldIdentityEncoder) -> None:
    with pytest.raises(NoFaceError, match="the id image"):
        shipped(_face_free(), what="the id image")
    lenient = WorldIdentityEncoder(shipped.detector, shipped.recognizer, shipped.tower, require_face=False)
    with pytest.warns(UserWarning, match="no face found in backdrop"):
        features = lenient(_face_free(), what="backdrop")
    assert features.id_embedding.shape == (1, 128)


def test_features_shapes_and_batch_path(shipped: WorldIdentityEncoder) -> None:
    assert isinstance(shipped, IdentityEncoder)
    assert (shipped.id_dim, shipped.vit_dim, shipped.num_vit_tokens) == (128, 64, 65)
    image = Image.fromarray(render_reference(test_identities()[0], seed=3).image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = shipped(image, what="reference")
    assert isinstance(features, IdentityFeatures) and features.face_box is not None
    assert features.id_embedding.shape == (1, 128) and features.id_embedding.dtype == torch.float32
    assert [tuple(h.shape) for h in features.vit_hidden] == [(1, 65, 64)] * 5
    # Both halves are unit vectors.
    torch.testing.assert_close(features.id_embedding.view(2, 64).norm(dim=-1), torch.ones(2))

    box = features.face_box
    batch = shipped.encode_batch(
        pil_to_tensor(image).repeat(2, 1, 1, 1),
        torch.tensor([[box.left, box.top, box.right, box.bottom]] * 2),
    )
    assert batch.id_embedding.shape == (2, 128)
    torch.testing.assert_close(batch.id_embedding[1:], features.id_embedding, atol=1e-5, rtol=0)
    for h_batch, h_single in zip(batch.vit_hidden, features.vit_hidden, strict=True):
        torch.testing.assert_close(h_batch[1:], h_single, atol=1e-5, rtol=0)

    # A larger photo is resized; its face box comes back in the photo's own pixels.
    big = shipped(image.resize((128, 128), Image.Resampling.BICUBIC))
    assert big.face_box is not None and big.face_box.right > 64


def test_recognizer_same_identity_beats_different(shipped: WorldIdentityEncoder) -> None:
    rng = np.random.default_rng(7)
    ids = test_identities()[:4]
    renders = [render(i, Scene.random(rng), seed=k) for k, i in enumerate(ids)]
    renders += [render_reference(i, seed=k) for k, i in enumerate(ids)]
    images = torch.stack([pil_to_tensor(Image.fromarray(r.image))[0] for r in renders])
    boxes = torch.tensor([r.face_box for r in renders], dtype=torch.float32)
    emb = shipped.encode_batch(images, boxes).id_embedding[:, :64]
    cos = emb @ emb.T
    for k in range(4):
        same = cos[k, k + 4]
        different = torch.cat([cos[k, 4:][torch.arange(4) != k], cos[k, :4][torch.arange(4) != k]])
        assert same > different.max(), (k, cos)
