import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from idgen.errors import IdgenError
from idgen.identity import FaceBox, largest_face
from idgen.identity import pulid as P
from idgen.models.checkpoint import DOCTOR_HINT

EXTRA_MODULES = list(P.PULID_PACKAGES)


# --- pure pieces, hand-computed ------------------------------------------------------------------


def test_to_gray() -> None:
    image = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).expand(2, 3, 1, 2)
    grey = P.to_gray(image)
    assert grey.shape == (2, 3, 1, 2)
    assert torch.allclose(grey, torch.full_like(grey, 0.299 + 0.5 * 0.587))


def test_background_mask_and_whitening() -> None:
    # 2x2 crop; labels: background 0, skin 1, hair 17, cloth 16.
    image = torch.tensor(
        [
            [[0.2, 0.4], [0.6, 0.8]],  # R
            [[0.0, 1.0], [0.5, 0.5]],  # G
            [[1.0, 0.0], [0.0, 0.1]],  # B
        ]
    ).unsqueeze(0)
    parsing = torch.tensor([[[[0, 1], [17, 16]]]])
    mask = P.background_mask(parsing)
    assert mask.tolist() == [[[[True, False], [False, True]]]]
    out = P.whiten_background(image, parsing)
    skin = 0.299 * 0.4 + 0.587 * 1.0 + 0.114 * 0.0
    hair = 0.299 * 0.6 + 0.587 * 0.5 + 0.114 * 0.0
    expected = torch.tensor([[1.0, skin], [hair, 1.0]]).expand(1, 3, 2, 2)
    assert torch.allclose(out, expected)
    # Custom labels: only skin is background now.
    assert P.background_mask(parsing, [1]).tolist() == [[[[False, True], [False, False]]]]


def test_background_labels_are_pulids() -> None:
    assert P.PARSING_BACKGROUND_LABELS == (0, 16, 18, 7, 8, 9, 14, 15)
    assert 17 not in P.PARSING_BACKGROUND_LABELS  # hair is kept


def test_normalize_resize_l2() -> None:
    x = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    out = P.normalize_image(x, P.OPENAI_CLIP_MEAN, P.OPENAI_CLIP_STD)
    expected = [(0.5 - m) / s for m, s in zip(P.OPENAI_CLIP_MEAN, P.OPENAI_CLIP_STD, strict=True)]
    assert torch.allclose(out.flatten(), torch.tensor(expected))

    flat = torch.full((1, 3, 512, 512), 0.7)
    resized = P.resize_for_clip(flat)
    assert resized.shape == (1, 3, 336, 336)
    assert torch.allclose(resized, torch.full_like(resized, 0.7), atol=1e-6)
    # Not clamped: bicubic overshoot at a hard edge is kept, as in torchvision's float resize.
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1.0
    up = P.resize_for_clip(edge, 16)
    assert up.max() > 1.0 and up.min() < 0.0

    v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert torch.allclose(P.l2_normalize(v), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_center_and_largest_face_choice() -> None:
    # 100x100 photo: a big face off-centre and a small one at the centre.
    boxes = np.array([[0, 0, 60, 60, 0.99], [45, 40, 65, 60, 0.98], [70, 70, 90, 90, 0.99]])
    assert P.center_face_index(boxes, 100, 100) == 1  # facexlib aligns the centre face
    face_boxes = [FaceBox(*b[:4], score=b[4]) for b in boxes]
    assert largest_face(face_boxes) == face_boxes[0]  # antelopev2's embedding uses the largest
    assert P.center_face_index(boxes[[0, 2]], 100, 100) == 0  # equal distance: first wins
    with pytest.raises(ValueError):
        P.center_face_index(np.zeros((0, 4)), 10, 10)


def test_hidden_block_indices() -> None:
    assert P.pulid_hidden_block_indices(24) == [3, 7, 11, 15, 19]
    assert P.pulid_hidden_block_indices(12) == [3, 7]


def test_ffhq_template_and_constants() -> None:
    assert P.FFHQ_TEMPLATE_512.shape == (5, 2)
    assert (P.DET_SIZE, P.FACE_SIZE, P.EVA_CLIP_SIZE, P.RETINAFACE_THRESHOLD) == (640, 512, 336, 0.97)
    assert (P.PuLIDIdentityEncoder.id_dim, P.PuLIDIdentityEncoder.vit_dim) == (1280, 1024)


# --- EVA-CLIP key conversion -----------------------------------------------------------------------


def test_eva_clip_original_keys_to_timm() -> None:
    t = {name: torch.full((1,), float(i)) for i, name in enumerate(["a", "b", "c", "d", "e", "f", "g", "h"])}
    eva = {
        "logit_scale": t["a"],
        "text.transformer.resblocks.0.attn.in_proj_weight": t["a"],
        "visual.cls_token": t["b"],
        "visual.rope.freqs_cos": t["a"],
        "visual.blocks.0.attn.rope.freqs_sin": t["a"],
        "visual.blocks.0.attn.q_proj.weight": t["c"],
        "visual.blocks.0.attn.q_bias": t["d"],
        "visual.blocks.0.attn.v_bias": t["e"],
        "visual.blocks.0.attn.inner_attn_ln.weight": t["f"],
        "visual.blocks.0.mlp.w1.weight": t["g"],
        "visual.blocks.0.mlp.w2.bias": t["h"],
        "visual.blocks.0.mlp.w3.weight": t["a"],
        "visual.blocks.0.mlp.ffn_ln.bias": t["b"],
        "visual.head.weight": t["c"],
    }
    out = P.eva_clip_visual_state_dict(eva)
    assert out == {
        "cls_token": t["b"],
        "blocks.0.attn.q_proj.weight": t["c"],
        "blocks.0.attn.q_proj.bias": t["d"],
        "blocks.0.attn.v_proj.bias": t["e"],
        "blocks.0.attn.norm.weight": t["f"],
        "blocks.0.mlp.fc1_g.weight": t["g"],
        "blocks.0.mlp.fc1_x.bias": t["h"],
        "blocks.0.mlp.fc2.weight": t["a"],
        "blocks.0.mlp.norm.bias": t["b"],
        "head.weight": t["c"],
    }
    assert all(out[k] is v for k, v in out.items())  # no copies


def test_eva_clip_open_clip_and_timm_keys() -> None:
    w = torch.ones(2)
    open_clip = {"visual.trunk.blocks.1.mlp.fc1_g.weight": w, "visual.trunk.head.weight": w, "text.x": w}
    assert P.eva_clip_visual_state_dict({"state_dict": open_clip}) == {
        "blocks.1.mlp.fc1_g.weight": w,
        "head.weight": w,
    }
    timm_sd = {"blocks.1.attn.q_proj.bias": w, "norm.weight": w}
    assert P.eva_clip_visual_state_dict(timm_sd) == timm_sd


# --- checkpoint files and strict loading ---------------------------------------------------------


# Reading and strict loading are idgen.models.checkpoint's (tests/test_checkpoint.py).


# --- construction: extras and weights are checked first, with one-line errors ----------------------


def _hide_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in EXTRA_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # find_spec -> None, import -> ImportError


def test_missing_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_extras(monkeypatch)
    assert P.missing_pulid_packages() == list(P.PULID_PACKAGES.values())
    with pytest.raises(IdgenError) as info:
        P.PuLIDIdentityEncoder()
    message = str(info.value)
    assert message.endswith(
        "pip install 'idgen[pulid]' && pip install --no-deps facexlib==0.3.0 insightface==2.1"
    )
    assert "insightface" in message and "opencv-python-headless" in message
    assert "\n" not in message


def test_missing_extras_reported_by_lazy_import(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_extras(monkeypatch)
    from idgen.identity import PuLIDIdentityEncoder

    with pytest.raises(IdgenError, match=r"idgen\[pulid\]"):
        PuLIDIdentityEncoder("/nowhere/antelopev2")
    with pytest.raises(IdgenError, match=r"needs timm .*idgen\[pulid\]"):
        P._import("timm")


@pytest.fixture
def extras_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "missing_pulid_packages", lambda: [])


def _weights(tmp_path: Path) -> dict[str, Path]:
    ante = tmp_path / "antelopev2"
    ante.mkdir()
    (ante / P.ANTELOPEV2_DETECTOR).write_bytes(b"onnx")
    (ante / P.ANTELOPEV2_RECOGNISER).write_bytes(b"onnx")
    fx = tmp_path / "facexlib"
    fx.mkdir()
    (fx / P.RETINAFACE_FILE).write_bytes(b"pth")
    (fx / P.BISENET_FILE).write_bytes(b"pth")
    eva = tmp_path / P.EVA_CLIP_FILE
    eva.write_bytes(b"pt")
    return {"antelopev2": ante, "facexlib_dir": fx, "eva_clip": eva}


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        ("antelopev2", "antelopev2 models not found: {p}"),
        ("antelopev2/glintr100.onnx", "antelopev2 models not found: {d} lacks glintr100.onnx"),
        ("facexlib/parsing_bisenet.pth", "facexlib weights not found: {p}"),
        ("facexlib/detection_Resnet50_Final.pth", "facexlib weights not found: {p}"),
        (P.EVA_CLIP_FILE, "EVA-CLIP checkpoint not found: {p}"),
    ],
)
def test_missing_weights_name_the_path(
    tmp_path: Path, extras_present: None, remove: str, expected: str
) -> None:
    paths = _weights(tmp_path)
    gone = tmp_path / remove
    if gone.is_dir():
        for f in gone.iterdir():
            f.unlink()
        gone.rmdir()
    else:
        gone.unlink()
    with pytest.raises(IdgenError) as info:
        P.PuLIDIdentityEncoder(
            paths["antelopev2"], eva_clip=paths["eva_clip"], facexlib_dir=paths["facexlib_dir"]
        )
    assert str(info.value) == expected.format(p=gone, d=gone.parent) + "; " + DOCTOR_HINT


def test_weight_resolution_succeeds_for_complete_folders(tmp_path: Path) -> None:
    paths = _weights(tmp_path)
    assert P.resolve_antelopev2_dir(paths["antelopev2"]) == paths["antelopev2"]
    assert P.resolve_antelopev2_dir(tmp_path) == paths["antelopev2"]  # one nested level is found
    retina, bisenet = P.resolve_facexlib_weights(paths["facexlib_dir"], None, None)
    assert (retina.name, bisenet.name) == (P.RETINAFACE_FILE, P.BISENET_FILE)
    explicit = tmp_path / "my_bisenet.pth"
    explicit.write_bytes(b"x")
    assert P.resolve_facexlib_weights(paths["facexlib_dir"], None, explicit)[1] == explicit
    assert P.resolve_eva_clip_checkpoint(tmp_path) == paths["eva_clip"]  # a folder holding the file
    assert P.resolve_eva_clip_checkpoint(paths["eva_clip"]) == paths["eva_clip"]


def test_unsupported_clip_model(extras_present: None) -> None:
    with pytest.raises(IdgenError, match="unsupported CLIP model 'ViT-B-32'"):
        P.PuLIDIdentityEncoder("/nowhere", clip_model="ViT-B-32")


def test_hub_ids_not_cached_give_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, extras_present: None
) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in cache\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(IdgenError) as info:
        P.PuLIDIdentityEncoder()
    assert str(info.value) == (
        "antelopev2 models: DIAMONIK7777/antelopev2 (scrfd_10g_bnkps.onnx, glintr100.onnx) is not in the "
        "local Hugging Face cache and cannot be downloaded (LocalEntryNotFoundError); " + DOCTOR_HINT
    )
    with pytest.raises(IdgenError) as info:
        P.resolve_eva_clip_checkpoint("QuanSun/EVA-CLIP")
    assert str(info.value).startswith(
        "EVA-CLIP checkpoint: QuanSun/EVA-CLIP/EVA02_CLIP_L_336_psz14_s6B.pt is not"
    )
    assert "\n" not in str(info.value)


def test_modules_import_without_heavy_packages(fresh_process: dict) -> None:
    assert fresh_process["heavy"] == []
