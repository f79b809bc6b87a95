"""Real metric backends on tiny random models built from configs (nothing is downloaded)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idgen.errors import CheckpointError, IdgenError
from idgen.eval.backends.clip import HFCLIP, centre_crop_box, preprocess
from idgen.eval.backends.scorers import LaionAesthetic
from idgen.pipelines.tiny import TINY_WORDS, word_level_tokenizer

WORDS = list(TINY_WORDS)
FACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "faces"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    tokenizer = word_level_tokenizer(WORDS, model_max_length=16)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip(clip_folder):
    return HFCLIP.from_pretrained(str(clip_folder))


def picture(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_identical_images_have_clip_i_one_and_embeddings_are_unit(clip):
    a = clip.image_embeds([picture(40, 40), picture(40, 40)])
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert (a[0] @ a[1]).item() == pytest.approx(1.0, abs=1e-6)
    assert (a[0] @ clip.image_embeds([picture(40, 40, seed=1)])[0]).item() < 0.9999


def test_long_prompts_are_truncated_to_the_text_positions(clip):
    long = " ".join(WORDS[i % 40] for i in range(200))
    first = " ".join(WORDS[i % 40] for i in range(15))  # 15 words + </s> = 16 positions
    a, b = clip.text_embeds([long]), clip.text_embeds([first])
    assert torch.allclose(a, b, atol=1e-6)


def test_preprocessing_is_shorter_side_resize_then_centre_crop():
    image = picture(64, 48)
    got = preprocess([image], 32)
    by_hand = image.resize((43, 32), Image.Resampling.BICUBIC).crop((5, 0, 37, 32))
    x = torch.from_numpy(np.asarray(by_hand, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    assert torch.allclose(got[0], (x - mean) / std)
    assert centre_crop_box((640, 480), 224) == (80.0, 0.0, 560.0, 480.0)


def test_patch_tokens_form_the_vision_grid(clip):
    tokens, grid = clip.patch_embeds([picture(32, 32)])
    assert grid == 4 and tokens.shape == (1, 16, 32)


def test_laion_head_scores_by_hand_and_names_a_wrong_key(clip, tmp_path):
    weight, bias = torch.randn(1, 24), torch.tensor([0.5])
    torch.save({"weight": weight, "bias": bias}, tmp_path / "head.pth")
    head = LaionAesthetic.from_file(tmp_path / "head.pth", clip)
    images = [picture(32, 32), picture(32, 32, seed=3)]
    expected = (clip.image_embeds(images) @ weight.T + bias).squeeze(-1) / 10
    assert torch.allclose(head.score(images), expected, atol=1e-6)
    torch.save({"weight": weight, "bias_": bias}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bias"):
        LaionAesthetic.from_file(tmp_path / "bad.pth", clip)


def test_a_missing_clip_folder_is_one_clear_error(tmp_path):
    with pytest.raises(IdgenError, match="cannot load CLIP model"):
        HFCLIP.from_pretrained(str(tmp_path / "nope"))


def test_missing_packages_are_named(monkeypatch):
    from idgen.eval.backends.faces import InsightFaceModel
    from idgen.eval.backends.scorers import Musiq

    monkeypatch.setitem(sys.modules, "pyiqa", None)
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(IdgenError, match="metric iq needs pyiqa"):
        Musiq()
    with pytest.raises(IdgenError, match="needs insightface"):
        InsightFaceModel()


def test_real_metric_models_skip_what_is_missing_and_keep_the_rest(clip_folder, monkeypatch):
    from idgen.eval.harness import MetricOptions, real_metric_models

    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    models = real_metric_models(MetricOptions(clip=str(clip_folder), faces="antelopev2", iq=False))
    assert models.clip is not None and models.faces is None
    assert "insightface" in models.skipped["faces"]


@pytest.mark.skipif(not FACES.is_dir(), reason="needs the shared real face photos")
def test_dlib_finds_the_face_and_tells_people_apart():
    pytest.importorskip("dlib")
    from idgen.eval.backends.faces import DlibFaceModel

    model = DlibFaceModel()
    photos = [Image.open(FACES / name).convert("RGB") for name in ("id_001.jpg", "id_004.jpg")]
    found = model.faces([*photos, photos[0]])
    assert [len(f) for f in found] == [1, 1, 1]
    same = float(found[0][0].embedding @ found[2][0].embedding)
    other = float(found[0][0].embedding @ found[1][0].embedding)
    assert same == pytest.approx(1.0, abs=1e-5) and other < same - 0.02
