"""The demo world's evaluator models: strict save/load, and metric-facing behaviour of the shipped weights."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from idgen.errors import CheckpointError
from idgen.world.evaluators import (
    ASSETS_DIR,
    CLIP_DIR,
    FACE_DIR,
    SEGMENTER_DIR,
    FaceRecognizer,
    FaceSegmenter,
    WorldCLIP,
    clip_pixel_values,
    crop_faces,
    face_free_image,
    largest_region_boxes,
    partial_caption,
    to_tensor,
    train_evaluators,
    verification_auc,
)
from idgen.world.render import BACKGROUNDS, Scene, render, render_reference, test_identities
from idgen.world.tokenizer import unknown_words

SHIPPED = all((ASSETS_DIR / d / "model.safetensors").is_file() for d in (CLIP_DIR, FACE_DIR, SEGMENTER_DIR))
needs_assets = pytest.mark.skipif(
    not SHIPPED, reason=f"evaluator weights not trained yet (run train_evaluators into {ASSETS_DIR})"
)


def _rename_first_key(path: Path) -> str:
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key + "_renamed"] = state.pop(key)
    save_file(state, str(path))
    return key


@pytest.mark.parametrize("cls", [FaceRecognizer, FaceSegmenter])
def test_torch_models_round_trip_strictly(cls, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == cls.model_type
    loaded = cls.from_pretrained(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(
        model(images if cls is FaceSegmenter else images[:, :, :32, :32]),
        loaded(images if cls is FaceSegmenter else images[:, :, :32, :32]),
    )

    key = _rename_first_key(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        cls.from_pretrained(tmp_path)


def test_torch_model_config_errors_name_the_key(tmp_path):
    FaceSegmenter().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "chanels": [1]}))
    with pytest.raises(CheckpointError, match="chanels"):
        FaceSegmenter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type"):
        FaceRecognizer.from_pretrained(tmp_path)


def test_clip_round_trip_through_transformers_loaders(tmp_path):
    from transformers import CLIPModel, PreTrainedTokenizerFast

    clip = WorldCLIP.random(seed=1)
    old_umask = os.umask(0o022)
    try:
        clip.save_pretrained(tmp_path)
    finally:
        os.umask(old_umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        name: 0o644 for name in (
            "config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
            "tokenizer.json", "tokenizer_config.json",
        )
    }  # fmt: skip
    # The same loaders as openai/clip-vit-large-patch14.
    model = CLIPModel.from_pretrained(str(tmp_path))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id == 1
    loaded = WorldCLIP.from_pretrained(tmp_path)
    images = torch.rand(3, 3, 64, 64)
    assert torch.allclose(clip.image_embeds(images), loaded.image_embeds(images), atol=1e-6)
    texts = ["a person on a beach", "a close-up photo of a person in the snow, at night"]
    assert torch.allclose(clip.text_embeds(texts), loaded.text_embeds(texts), atol=1e-6)
    assert torch.allclose(clip_pixel_values(images, tmp_path), loaded.pixel_values(images))
    assert loaded.patch_tokens(images).shape == (3, 8, 8, 96)

    key = _rename_first_key(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        WorldCLIP.from_pretrained(tmp_path)


def test_largest_region_boxes_and_crops():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 5:9] = True  # 40 px
    masks[0, 30:40, 30:45] = True  # 150 px: the largest
    masks[1, 0, 0] = True  # 1 px: noise
    assert largest_region_boxes(masks, min_pixels=4) == [(30, 30, 45, 40), None, None]
    # A crop of an exact square box with no margin reproduces the region.
    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 16:32, 16:32] = torch.rand(1, 3, 16, 16)
    crop = crop_faces(image, torch.tensor([[16.0, 16.0, 32.0, 32.0]]), size=16, margin=0.0)
    assert torch.allclose(crop, image[:, :, 16:32, 16:32], atol=1e-5)


def test_partial_captions_state_what_they_say():
    rng = np.random.default_rng(0)
    scene = Scene.from_names("beach", "red", "night", "half-body", "left")
    for _ in range(50):
        text, stated = partial_caption(scene, rng)
        assert stated[0] and not unknown_words(text)
        assert ("red" in text) == bool(stated[1])
        assert any(w in text for w in ("night", "moonlight")) == bool(stated[2])
        assert any(w in text for w in ("left",)) == bool(stated[4])


def test_verification_auc():
    assert verification_auc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2, 0.3])) == 1.0
    assert verification_auc(torch.tensor([0.1]), torch.tensor([0.9])) == 0.0
    assert verification_auc(torch.tensor([0.5]), torch.tensor([0.5])) == 0.5


# --- The shipped weights ---------------------------------------------------------------------------------
def _held_out(n: int) -> list:
    people = test_identities()
    return [
        render(
            people[i],
            Scene(background=i % 12, clothing_colour=i % 11, lighting=i % 5, framing=i % 2, position=i % 3),
            seed=i,
        )
        for i in range(n)
    ]


@needs_assets
def test_shipped_clip_is_exact_and_classifies_scenes():
    clip = WorldCLIP.from_pretrained()
    renders = _held_out(len(BACKGROUNDS))
    images = to_tensor(np.stack([r.image for r in renders]))
    # Identical images: CLIP-I is exactly 1, whatever the batch they come in.
    a = clip.image_embeds(torch.cat([images[:1], images[:1], images[1:4]]))
    b = clip.image_embeds(images[:1])
    assert abs(float(a[0] @ a[1]) - 1.0) < 1e-6
    assert abs(float(a[0] @ b[0]) - 1.0) < 1e-6
    predicted = clip.classify_scene(images).tolist()
    expected = [r.scene.background for r in renders]
    assert sum(p == e for p, e in zip(predicted, expected, strict=True)) >= len(expected) - 1, predicted


@needs_assets
def test_shipped_segmenter_finds_faces_and_no_face_in_a_backdrop():
    segmenter = FaceSegmenter.from_pretrained()
    renders = _held_out(8)
    images = to_tensor(np.stack([r.image for r in renders]))
    masks = segmenter.masks(images)
    truth = torch.as_tensor(np.stack([r.face_mask for r in renders]))
    iou = (masks & truth).sum(dim=(1, 2)) / (masks | truth).sum(dim=(1, 2))
    assert float(iou.mean()) >= 0.8, iou
    boxes = segmenter.face_boxes(images)
    assert all(b is not None for b in boxes)
    both = segmenter.detect(images)
    assert torch.equal(both[0], masks) and both[1] == boxes
    free = to_tensor(np.stack([face_free_image(np.random.default_rng(k)) for k in range(4)]))
    assert segmenter.face_boxes(free) == [None] * 4


@needs_assets
def test_shipped_face_recognizer_separates_identities():
    face = FaceRecognizer.from_pretrained()
    people = test_identities()[:4]
    # Each identity: its reference photo and a render in a different scene and framing.
    refs = [render_reference(p, seed=1) for p in people]
    scenes = [
        render(p, Scene(background=3 + k, clothing_colour=k, lighting=k, framing=1), seed=2)
        for k, p in enumerate(people)
    ]
    rs = refs + scenes
    emb = face.embed(to_tensor(np.stack([r.image for r in rs])), [r.face_box for r in rs])
    assert emb.shape == (8, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(8), atol=1e-5)
    sim = emb[:4] @ emb[4:].T
    same, different = sim.diagonal(), sim[~torch.eye(4, dtype=torch.bool)]
    assert float(same.min()) > float(different.mean()), sim
    for i in range(4):
        assert same[i] > sim[i][torch.arange(4) != i].max(), sim


def test_quick_training_runs_end_to_end(tmp_path):
    # CPU seconds, not wall seconds: the machine is shared, and this is the cost CI pays on one core.
    start = time.process_time()
    result = train_evaluators(tmp_path / "work", tmp_path / "assets", quick=True, progress=False)
    assert time.process_time() - start < 20
    assert result["quick"] is True
    for key in ("clip_scene_accuracy", "segmenter_iou", "face_auc_gt_box", "segmenter_empty_on_face_free"):
        assert 0.0 <= result[key] <= 1.0, key
    assert -1.0 <= result["face_same_cosine_gt_box"] <= 1.0
    WorldCLIP.from_pretrained(tmp_path / "assets" / CLIP_DIR)
    FaceRecognizer.from_pretrained(tmp_path / "assets" / FACE_DIR)
    FaceSegmenter.from_pretrained(tmp_path / "assets" / SEGMENTER_DIR)
    assert json.loads((tmp_path / "assets" / "validation.json").read_text())["quick"] is True
    # Resumable: a second call finds every checkpoint complete and retrains nothing.
    log = (tmp_path / "work" / "quick" / CLIP_DIR / "log.jsonl").read_text()
    again = train_evaluators(tmp_path / "work", tmp_path / "assets", quick=True, progress=False)
    assert (tmp_path / "work" / "quick" / CLIP_DIR / "log.jsonl").read_text() == log
    assert again["clip_scene_accuracy"] == result["clip_scene_accuracy"]
