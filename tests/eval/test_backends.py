"""Real metric backends on tiny random models built from configs (nothing is downloaded).

Packages that are not installed here (pyiqa, insightface) are replaced by small fakes in sys.modules, so the
wrappers' own logic (preprocessing, layouts, errors) is still tested.
"""

import json
import shutil
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from idgen.errors import CheckpointError, IdgenError
from idgen.eval.backends.clip import CLIP_MEAN, CLIP_STD, HFCLIP, ClipPreprocess
from idgen.eval.backends.scorers import LaionAesthetic
from idgen.eval.models import FaceModel, ImageScorer, ImageTextModel
from idgen.pipelines.tiny import TINY_WORDS, word_level_tokenizer

WORDS = list(TINY_WORDS)
MEAN, STD = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]


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


def smooth(w, h):
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([127 + 100 * np.sin(x / 7), 127 + 100 * np.cos(y / 5), (2 * x + y) % 256], -1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def as_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)


def test_loaded_clip_implements_the_interface(clip, clip_folder):
    assert isinstance(clip, ImageTextModel) and clip.name == Path(clip_folder).name
    assert clip.preprocess == ClipPreprocess(32, 32, CLIP_MEAN, CLIP_STD)  # no preprocessor config: CLIP's


def test_identical_images_have_clip_i_one_and_embeddings_are_unit(clip):
    a = clip.image_embeds([picture(40, 40), picture(40, 40)])
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert (a[0] @ a[1]).item() == pytest.approx(1.0, abs=1e-6)
    assert (a[0] @ clip.image_embeds([picture(40, 40, seed=1)])[0]).item() < 0.9999


def test_batches_and_padding_do_not_change_embeddings(clip):
    images = [picture(40 + i, 36, seed=i) for i in range(5)]
    clip.batch_size = 2
    try:
        batched, patches = clip.image_embeds(images), clip.patch_embeds(images)[0]
        texts = ["a photo of a man", "a woman", "a photo of a man in a red hat on a beach"]
        together = clip.text_embeds(texts)
    finally:
        clip.batch_size = 32
    alone = torch.cat([clip.image_embeds([im]) for im in images])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(patches, torch.cat([clip.patch_embeds([im])[0] for im in images]), atol=1e-5)
    assert torch.allclose(together, torch.cat([clip.text_embeds([t]) for t in texts]), atol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_long_prompts_are_truncated_to_the_text_positions(clip):
    long = " ".join(WORDS[i % 40] for i in range(200))
    first = " ".join(WORDS[i % 40] for i in range(15))  # 15 words + </s> = 16 positions
    a, b = clip.text_embeds([long]), clip.text_embeds([first])
    assert torch.allclose(a, b, atol=1e-6)


def test_preprocessing_is_torchvision_resize_then_centre_crop():
    image = picture(64, 48)
    got = ClipPreprocess(32, 32)([image])
    # Shorter side 48 -> 32, longer 64 -> int(42.67) = 42; crop offset round((42 - 32) / 2) = 5.
    x = F.interpolate(as_tensor(image)[None], size=(32, 42), mode="bicubic", antialias=True)[0]
    assert torch.allclose(got[0], (x[:, :, 5:37] - MEAN) / STD, atol=1e-6)
    # Tall, odd leftover: 48 x 65 -> 32 x int(43.33) = 43; round(5.5) = 6 (torchvision's CenterCrop).
    tall = picture(48, 65, seed=2)
    x = F.interpolate(as_tensor(tall)[None], size=(43, 32), mode="bicubic", antialias=True)[0]
    assert torch.allclose(ClipPreprocess(32, 32)([tall])[0], (x[:, 6:38] - MEAN) / STD, atol=1e-6)


def test_preprocessing_matches_pil_bicubic_within_a_grey_level():
    image = smooth(64, 48)
    got = ClipPreprocess(32, 32, mean=(0, 0, 0), std=(1, 1, 1))([image])[0]
    pil = as_tensor(image.resize((42, 32), Image.Resampling.BICUBIC).crop((5, 0, 37, 32)))
    assert (got - pil).abs().max().item() < 1 / 255


def test_view_box_is_the_centre_crop_in_original_pixels(clip):
    # 640 x 480 -> 298 x 224, crop offset 37: x from 37 * 640 / 298 to 261 * 640 / 298.
    assert ClipPreprocess().view_box((640, 480)) == pytest.approx((79.463087, 0.0, 560.536913, 480.0))
    assert ClipPreprocess().view_box((480, 640)) == pytest.approx((0.0, 79.463087, 480.0, 560.536913))
    assert clip.view_box((64, 48)) == pytest.approx((5 * 64 / 42, 0.0, 37 * 64 / 42, 48.0))


def test_sizes_and_normalisation_come_from_the_preprocessor_config(clip_folder, tmp_path):
    folder = tmp_path / "clip"
    shutil.copytree(clip_folder, folder)
    config = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32},
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    model = HFCLIP.from_pretrained(str(folder))
    assert model.preprocess == ClipPreprocess(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert model.view_box((40, 40)) == (4.0, 4.0, 36.0, 36.0)


def test_patch_tokens_are_post_layernormed_last_layer_tokens(clip):
    tokens, grid = clip.patch_embeds([picture(32, 32)])
    assert grid == 4 and tokens.shape == (1, 16, 32)
    with torch.no_grad():
        hidden = clip.model.vision_model(pixel_values=clip.preprocess([picture(32, 32)])).last_hidden_state
        expected = clip.model.vision_model.post_layernorm(hidden[:, 1:])
    assert torch.allclose(tokens, expected, atol=1e-6)


def test_laion_head_scores_by_hand_and_names_a_wrong_key(clip, tmp_path):
    weight, bias = torch.randn(1, 24), torch.tensor([0.5])
    torch.save({"weight": weight, "bias": bias}, tmp_path / "head.pth")
    head = LaionAesthetic.from_file(tmp_path / "head.pth", clip)
    assert isinstance(head, ImageScorer)
    images = [smooth(48, 40), picture(32, 32, seed=3)]
    # IBench's aesthetic resize does not antialias: the embedding is computed from that preprocessing.
    pixels = ClipPreprocess(32, 32, antialias=False)(images)
    with torch.no_grad():
        pooled = clip.model.vision_model(pixel_values=pixels).pooler_output
        e = F.normalize(clip.model.visual_projection(pooled), dim=-1)
    expected = (e @ weight[0] + bias[0]) / 10
    assert torch.allclose(head.score(images), expected, atol=1e-6)
    torch.save({"weight": weight, "bias_": bias}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="'bias'"):
        LaionAesthetic.from_file(tmp_path / "bad.pth", clip)
    torch.save({"weight": torch.randn(1, 768), "bias": bias}, tmp_path / "big.pth")
    with pytest.raises(CheckpointError, match=r"'weight' has shape \(1, 768\), expected \(1, 24\)"):
        LaionAesthetic.from_file(tmp_path / "big.pth", clip)
    with pytest.raises(IdgenError, match="needs the real CLIP"):
        LaionAesthetic.from_file(tmp_path / "head.pth", None)


def test_a_missing_clip_folder_is_one_clear_error(tmp_path):
    with pytest.raises(IdgenError, match="cannot load CLIP model"):
        HFCLIP.from_pretrained(str(tmp_path / "nope"))


def test_missing_packages_are_named_with_their_extra(monkeypatch):
    from idgen.eval.backends.faces import InsightFaceModel
    from idgen.eval.backends.scorers import Musiq

    for module in ("pyiqa", "pyiqa.archs", "pyiqa.archs.musiq_arch", "insightface", "insightface.app"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(IdgenError, match=r"metric iq needs pyiqa: pip install 'idgen\[iq\]'"):
        Musiq()
    with pytest.raises(IdgenError, match=r"metric facesim needs insightface.*'idgen\[facesim\]'"):
        InsightFaceModel()


def test_real_metric_models_skip_what_is_missing_and_keep_the_rest(clip_folder, monkeypatch):
    from idgen.eval.harness import MetricOptions, real_metric_models

    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    models = real_metric_models(MetricOptions(clip=str(clip_folder), faces="antelopev2", iq=False))
    assert models.clip is not None and models.faces is None
    assert "insightface" in models.skipped["faces"]


class FakeMusiq(torch.nn.Module):
    """Stands in for pyiqa's MUSIQ: records what it is fed, returns 100 x the mean input."""

    def __init__(self, pretrained=True, pretrained_model_path=None):
        super().__init__()
        self.loaded, self.seen = pretrained_model_path or pretrained, []

    def forward(self, x):
        self.seen.append(x)
        return x.mean().reshape(1, 1) * 100


def fake_modules(monkeypatch, name, **attributes):
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for key, value in attributes.items():
        setattr(sys.modules[name], key, value)


def test_musiq_feeds_vbench_frames_or_ibench_raw_frames(monkeypatch, tmp_path):
    from idgen.eval.backends.scorers import Musiq

    fake_modules(monkeypatch, "pyiqa.archs.musiq_arch", MUSIQ=FakeMusiq)
    assert Musiq().net.loaded == "spaq"
    with pytest.raises(IdgenError, match="weights not found"):
        Musiq(weights=str(tmp_path / "none.pth"))
    (tmp_path / "musiq.pth").write_bytes(b"")
    image = smooth(1024, 768)
    vbench = Musiq(weights=str(tmp_path / "musiq.pth"))
    assert vbench.net.loaded == str(tmp_path / "musiq.pth")
    score = vbench.score([image, smooth(300, 200)])
    first, second = vbench.net.seen
    assert first.shape == (1, 3, 384, 512) and second.shape == (1, 3, 200, 300)  # longer side <= 512
    assert first.max() <= 1 and torch.allclose(score, torch.stack([first.mean(), second.mean()]), atol=1e-6)
    raw = Musiq(mode="ibench_raw")
    raw.score([image])
    fed = raw.net.seen[0]
    assert fed.shape == (1, 3, 768, 1024) and torch.equal(fed[0], 255 * as_tensor(image))


def test_iq_defaults_to_ibench_input_and_respects_hf_hub_offline(monkeypatch, tmp_path):
    from idgen.eval.harness import MetricOptions, real_metric_models

    fake_modules(monkeypatch, "pyiqa.archs.musiq_arch", MUSIQ=FakeMusiq)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = real_metric_models(MetricOptions(clip=None, faces=None, iq=True))
    assert "iq" not in models.scorers
    assert (
        models.skipped["iq"] == "HF_HUB_OFFLINE is set and no local MUSIQ weights were given (--iq-weights)"
    )
    (tmp_path / "musiq.pth").write_bytes(b"")
    models = real_metric_models(
        MetricOptions(clip=None, faces=None, iq=True, iq_weights=str(tmp_path / "musiq.pth"))
    )
    assert (
        models.scorers["iq"].mode == "ibench_raw" and models.scorers["iq"].name == "musiq-spaq (ibench input)"
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    vbench = real_metric_models(MetricOptions(clip=None, faces=None, iq=True, iq_mode="vbench")).scorers["iq"]
    assert vbench.mode == "vbench" and vbench.net.loaded == "spaq"
    assert real_metric_models(MetricOptions(clip=None, faces=None)).skipped["iq"] == "not asked for (--iq)"


class FakeFace:
    def __init__(self, bbox, score, embedding):
        self.bbox, self.det_score, self.embedding = np.array(bbox), score, np.array(embedding)


class FakeFaceAnalysis:
    """Stands in for insightface's FaceAnalysis: records its arguments and the arrays it gets."""

    made: ClassVar[list] = []

    def __init__(self, name, root, providers, allowed_modules):
        self.args = dict(name=name, root=root, providers=providers, allowed_modules=allowed_modules)
        self.seen = []
        FakeFaceAnalysis.made.append(self)

    def prepare(self, ctx_id, det_size):
        self.args.update(ctx_id=ctx_id, det_size=det_size)

    def get(self, bgr):
        self.seen.append(bgr)
        return [FakeFace([-5, 10, 30, 70], 0.9, [3.0, 4.0]), FakeFace([20, 20, 30, 30], 0.6, [0.0, 2.0])]


def test_insightface_wrapper_layouts_providers_and_faces(monkeypatch, tmp_path):
    from idgen.eval.backends.faces import InsightFaceModel

    fake_modules(monkeypatch, "insightface.app", FaceAnalysis=FakeFaceAnalysis)
    with pytest.raises(IdgenError, match=r"no antelopev2 \.onnx files"):
        InsightFaceModel(root=str(tmp_path))  # never left to insightface's run-time download
    nested = tmp_path / "models" / "antelopev2" / "antelopev2"  # how antelopev2.zip unpacks
    nested.mkdir(parents=True)
    (nested / "glintr100.onnx").write_bytes(b"")
    model = InsightFaceModel(root=str(tmp_path), device="cuda:1")
    args = FakeFaceAnalysis.made[-1].args
    assert args["name"] == "antelopev2/antelopev2" and args["det_size"] == (640, 640) and args["ctx_id"] == 0
    assert args["providers"][0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert isinstance(model, FaceModel) and model.arcface_comparable
    image = picture(50, 60)
    faces = model.faces([image])[0]
    assert np.array_equal(FakeFaceAnalysis.made[-1].seen[0], np.asarray(image)[:, :, ::-1])  # BGR
    assert [f.box for f in faces] == [(0.0, 10.0, 30.0, 60.0), (20.0, 20.0, 30.0, 30.0)]  # clamped, in order
    assert torch.allclose(faces[0].embedding, torch.tensor([0.6, 0.8]))
    InsightFaceModel(root=str(tmp_path))
    assert FakeFaceAnalysis.made[-1].args["providers"] == ["CPUExecutionProvider"]
    assert FakeFaceAnalysis.made[-1].args["ctx_id"] == -1


def test_dlib_finds_the_face_and_tells_people_apart(faces_dir):
    pytest.importorskip("dlib")
    from idgen.eval.backends.faces import DlibFaceModel

    model = DlibFaceModel()
    assert isinstance(model, FaceModel) and not model.arcface_comparable
    photos = [Image.open(faces_dir / name).convert("RGB") for name in ("id_001.jpg", "id_004.jpg")]
    found = model.faces([*photos, photos[0], ImageOps.mirror(photos[0])])
    assert [len(f) for f in found] == [1, 1, 1, 1]
    a, other, again, mirrored = (f[0].embedding for f in found)
    assert torch.allclose(a.norm(), torch.tensor(1.0), atol=1e-6)
    assert float(a @ again) == pytest.approx(1.0, abs=1e-5)
    # dlib's cosines are compressed (different people ~0.85-0.96 on these photos): compare, don't threshold.
    assert float(a @ mirrored) > 0.98 and float(a @ other) < float(a @ mirrored) - 0.03
    left, top, right, bottom = found[0][0].box
    assert 0 <= left < right <= photos[0].width and 0 <= top < bottom <= photos[0].height
