"""The evaluator attribute classifier (strict save/load, training beside the other evaluators, accuracy of
the shipped weights on held-out identities) and the gates' attribute-transfer pass and table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from idgen.errors import CheckpointError
from idgen.pipelines.names import NONE
from idgen.world import evaluators as ev_module
from idgen.world.evaluators import (
    ASSETS_DIR,
    ATTRIBUTES_DIR,
    SEGMENTER_DIR,
    AttributeClassifier,
    AttributeClassifierConfig,
    FaceRecognizer,
    FaceSegmenter,
    WorldCLIP,
    attribute_labels,
    to_tensor,
    train_attribute_evaluator,
    train_evaluators,
)
from idgen.world.gates import (
    LIKENESS,
    RENDERED,
    RENDERED_VAE,
    ROWS,
    Evaluators,
    _rows,
    attribute_hits,
    attribute_table,
    pairs,
    split_people,
    summarise,
    table,
    vae_round_trip,
)
from idgen.world.render import ATTRIBUTES, Scene, render, render_reference, test_identities

SHIPPED = (ASSETS_DIR / ATTRIBUTES_DIR / "model.safetensors").is_file()
needs_assets = pytest.mark.skipif(not SHIPPED, reason="evaluator attribute classifier not trained yet")


def test_round_trip_is_strict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AttributeClassifier().eval()
    assert list(model.heads) == list(ATTRIBUTES)
    model.save_pretrained(tmp_path)
    loaded = AttributeClassifier.from_pretrained(tmp_path)
    assert loaded.config == AttributeClassifierConfig()
    crops = torch.rand(2, 3, model.config.crop_size, model.config.crop_size)
    for name, logits in model(crops).items():
        assert logits.shape == (2, len(ATTRIBUTES[name]))
        assert torch.equal(logits, loaded(crops)[name])
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    state["heads.glasses.weight_renamed"] = state.pop("heads.glasses.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"heads\.glasses\.weight"):
        AttributeClassifier.from_pretrained(tmp_path)


def test_predict_needs_one_box_per_image() -> None:
    with pytest.raises(ValueError, match="2 images but 1 boxes"):
        AttributeClassifier().eval().predict(torch.rand(2, 3, 64, 64), [(10, 10, 40, 40)])


def test_labels_are_the_renderers_ground_truth() -> None:
    labels = attribute_labels(test=True)
    person = test_identities()[7]
    assert labels.shape == (100, len(ATTRIBUTES))
    assert labels[7].tolist() == list(person.as_tuple())
    assert labels[7, list(ATTRIBUTES).index("glasses")] == person.glasses


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_the_evaluators_stage_trains_it_last_and_leaves_the_others_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_it = train_evaluators(tmp_path / "w1", tmp_path / "a1", quick=True, progress=False)
    assert 0.0 <= with_it["attribute_glasses_accuracy_seg_box"] <= 1.0
    assert with_it["attribute_glasses_chance"] == 1 / 3
    monkeypatch.setattr(ev_module, "_attribute_stage", lambda *args: {})
    without = train_evaluators(tmp_path / "w2", tmp_path / "a2", quick=True, progress=False)
    monkeypatch.undo()
    for name in ("clip", "face", SEGMENTER_DIR):
        a, b = _tensors(tmp_path / "a1" / name), _tensors(tmp_path / "a2" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    timing = ("wall_seconds", "cpu_seconds")
    same = {k: v for k, v in with_it.items() if not k.startswith(("attribute_", *timing))}
    assert same == {k: v for k, v in without.items() if not k.startswith(timing)}
    assert not (tmp_path / "a2" / ATTRIBUTES_DIR).exists()
    # The classifier alone, beside evaluators already trained: the same weights; validation.json merged.
    alone = train_attribute_evaluator(tmp_path / "w2", tmp_path / "a2", quick=True, progress=False)
    a, b = _tensors(tmp_path / "a1" / ATTRIBUTES_DIR), _tensors(tmp_path / "a2" / ATTRIBUTES_DIR)
    assert all(torch.equal(a[k], b[k]) for k in a)
    written = json.loads((tmp_path / "a2" / "validation.json").read_text())
    assert written == alone and written["face_auc_gt_box"] == without["face_auc_gt_box"]
    assert alone["attribute_glasses_accuracy_seg_box"] == with_it["attribute_glasses_accuracy_seg_box"]


def test_alone_it_needs_the_segmenter(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no evaluator segmenter"):
        train_attribute_evaluator(tmp_path / "w", tmp_path / "empty", quick=True, progress=False)
    assert not (tmp_path / "w").exists()


# --- The shipped weights ---------------------------------------------------------------------------------
# Accuracy on un-augmented renders of the 100 held-out identities (2 scenes each, one per framing), around
# the segmenter's boxes, measured on a 2-core x86_64 CPU with 1 and 2 threads. Each threshold sits 3 points
# (6 of 200 images) below. Brows and nose stay at chance (28% and 22% for 25%): at 64 px they are a pixel or
# two, so they have no threshold; eye colour (62.5%, chance 17%) is read, but far from perfectly.
ACCURACY_MEASURED = {
    "face_shape": 0.895,
    "skin_tone": 0.77,
    "hair_style": 0.865,
    "hair_colour": 0.89,
    "eye_colour": 0.625,
    "eye_spacing": 0.92,
    "mouth": 0.6,
    "glasses": 0.805,
    "facial_hair": 0.84,
}
ACCURACY_AT_LEAST = {name: round(value - 0.03, 3) for name, value in ACCURACY_MEASURED.items()}


def _held_out_renders() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    people = test_identities()
    images, who = [], []
    for i, person in enumerate(people):
        for k in range(2):
            scene = Scene(background=(i + 5 * k) % 12, clothing_colour=(i + k) % 11, lighting=(i + 2 * k) % 5,
                          framing=k, position=(i + k) % 3)  # fmt: skip
            images.append(render(person, scene, seed=10_000 + 2 * i + k).image)
            who.append(i)
    return to_tensor(np.stack(images)), attribute_labels(test=True)[who], who


@needs_assets
@pytest.mark.slow
def test_shipped_classifier_reads_held_out_identities() -> None:
    classifier, segmenter = AttributeClassifier.from_pretrained(), FaceSegmenter.from_pretrained()
    images, labels, _ = _held_out_renders()
    boxes = [b for b in segmenter.face_boxes(images) if b is not None]
    assert len(boxes) == len(images)
    pred = classifier.predict(images, boxes)
    accuracy = {n: float((pred[n] == labels[:, k]).float().mean()) for k, n in enumerate(ATTRIBUTES)}
    for name, least in ACCURACY_AT_LEAST.items():
        assert accuracy[name] >= least, (name, accuracy[name])


# --- The gates' attribute pass -----------------------------------------------------------------------------
def _evaluators() -> Evaluators:
    clip, recognizer, segmenter = (
        WorldCLIP.from_pretrained(),
        FaceRecognizer.from_pretrained(),
        FaceSegmenter.from_pretrained(),
    )
    photos = [render_reference(p, seed=i) for i, p in enumerate(test_identities())]
    ref = to_tensor(np.stack([r.image for r in photos]))
    embeds = recognizer.embed(ref, [r.face_box for r in photos])
    backdrops = torch.tensor([r.background_rgb for r in photos], dtype=torch.float32) / 255
    truth = attribute_labels(test=True)
    names = [str(r.backdrop) for r in photos]
    return Evaluators(
        clip, recognizer, segmenter, embeds, backdrops, names, AttributeClassifier.from_pretrained(), truth
    )


def _renders_of(chunk: list, shift: int) -> torch.Tensor:
    """The renderer's image of each pair (its scene and seed) of identity (pair identity + shift) mod 100."""
    people = test_identities()
    return to_tensor(
        np.stack(
            [render(people[(p.identity + shift) % 100], p.prompt.scene, seed=p.seed).image for p in chunk]
        )
    )


@needs_assets
def test_the_vae_row_reads_the_renders_after_the_round_trip() -> None:
    # A round trip that changes nothing reads exactly the rendered row; one that loses every face scores none.
    ev, chunk, people = _evaluators(), pairs(1)[:8], split_people("test")
    images = {mode: _renders_of(chunk, 0) for mode in ROWS}
    kept = summarise(_rows(ev, chunk, images, people, round_trip=lambda x: x))["attribute_transfer"]
    assert list(kept) == [RENDERED, RENDERED_VAE, *ROWS]
    assert kept[RENDERED_VAE] == kept[RENDERED]
    blank = summarise(_rows(ev, chunk, images, people, round_trip=torch.zeros_like))["attribute_transfer"]
    assert list(blank) == [RENDERED, *ROWS]
    seen: list[torch.Tensor] = []
    summarise(_rows(ev, chunk, images, people, round_trip=lambda x: seen.append(x) or x))
    assert len(seen) == 1 and torch.equal(seen[0], _renders_of(chunk, 0))  # the renders, in [0, 1]


def test_vae_round_trip_decodes_the_latent_mean() -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, sample_size=16).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = ((vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    out = vae_round_trip(vae)(images)
    assert torch.equal(out, expected)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1


@needs_assets
@pytest.mark.slow
def test_gates_attribute_pass_on_ground_truth_renders() -> None:
    # Every mode "generates" the reference identity's own render of the pair, except `none`, which shows
    # another identity: own renders score the classifier's accuracy, other identities about chance.
    ev, chunk = _evaluators(), pairs(1)[:40]
    own, other = _renders_of(chunk, 0), _renders_of(chunk, 37)
    images = {mode: own if mode != NONE else other for mode in ROWS}
    s = summarise(_rows(ev, chunk, images, split_people("test")))
    transfer = s["attribute_transfer"]
    assert list(transfer) == [RENDERED, *ROWS]
    # The rendered row reads the very same images as the identity modes: identical shares.
    for mode in ROWS[1:]:
        assert transfer[mode] == transfer[RENDERED]
    assert transfer[RENDERED]["faces"] == 40 and transfer[RENDERED]["identities"] == 40
    # Measured: 84.5% of the five for own renders, 19.0% for others (chance 18.9%), 14 of 40 identities at
    # chance; the smallest gap, glasses, 75% against 40%.
    assert transfer[RENDERED]["transferred"][0] >= 0.80
    assert transfer[NONE]["transferred"][0] <= 0.25
    assert transfer[RENDERED]["identities_at_chance"] == 0
    assert transfer[NONE]["identities_at_chance"] >= 10
    for name in LIKENESS:
        assert transfer[RENDERED][name][0] >= transfer[NONE][name][0] + 0.3, name


# --- The table ---------------------------------------------------------------------------------------------
def _hits(likeness: int, others: bool = False) -> dict[str, bool]:
    """The first `likeness` of the five LIKENESS attributes hit; the other attributes all `others`; the
    coarse reads as their attribute."""
    hits = {n: (LIKENESS.index(n) < likeness if n in LIKENESS else others) for n in ATTRIBUTES}
    return hits | {"glasses_worn": hits["glasses"], "skin_tone_within_one": hits["skin_tone"]}


def test_attribute_hits_and_coarse_reads() -> None:
    truth = torch.tensor(test_identities()[0].as_tuple())
    glasses, skin = list(ATTRIBUTES).index("glasses"), list(ATTRIBUTES).index("skin_tone")
    options = truth.clone()
    assert all(attribute_hits(options, truth).values())
    options[glasses], options[skin] = 1 + truth[glasses] % 2, (truth[skin] + 1) % 8  # other frames, next tone
    hits = attribute_hits(options, truth)
    assert not hits["glasses"] and not hits["skin_tone"] and hits["hair_style"]
    assert hits["glasses_worn"] == bool(truth[glasses] > 0)
    assert hits["skin_tone_within_one"] == bool(truth[skin] < 7)
    options[skin] = (truth[skin] + 2) % 8
    assert not attribute_hits(options, truth)["skin_tone_within_one"]


def test_attribute_transfer_summary_and_table() -> None:
    base = {"backdrop": "cyan", "scene_correct": True, "face_px_none": 10, "face_px_outside_person_region": 0}
    for mode in ROWS:
        base |= {f"clip_t_{mode}": 0.7, f"face_{mode}": True, f"facesim_{mode}": 0.1}
        if mode != NONE:
            base |= {f"contamination_{mode}": 1.0, f"contamination_outside_face_{mode}": 1.0}
    rows = []
    for identity, (none, uniform) in enumerate([(1, 5), (1, 4), (2, 1)]):
        row = {**base, "identity": identity, f"attributes_{NONE}": _hits(none)}
        row |= {f"attributes_{m}": _hits(uniform, True) for m in ROWS[1:]}
        rows.append(row | {f"attributes_{RENDERED}": _hits(5, True)})
    rows.append({**base, "identity": 3, f"face_{NONE}": False})  # no face: not scored
    summary = summarise(rows)
    t, gains = summary["attribute_transfer"], summary["likeness_gains"]
    assert gains["uniform_vs_none"][0] == pytest.approx((4 + 3 - 1) / 15)  # paired, faces in both only
    assert gains["uniform_vs_none"][2] == 3 and gains["uniform_w2_vs_uniform"][:2] == (0.0, 0.0)
    assert t[NONE]["faces"] == 3 and t[NONE]["transferred"][0] == pytest.approx(4 / 15)
    assert t["uniform"]["transferred"][0] == pytest.approx(10 / 15)
    assert t["uniform"]["hair_colour"][:1] == (1.0,) and t["uniform"]["glasses"][0] == pytest.approx(2 / 3)
    # Identity 2 transfers 1 of 5 under uniform: below none's mean (4/15); so are identities 0 and 1 in none.
    assert (t["uniform"]["identities_at_chance"], t["uniform"]["identities"]) == (1, 3)
    assert t[NONE]["identities_at_chance"] == 2 and t[RENDERED]["identities_at_chance"] == 0
    lines = attribute_table({"attribute_transfer": t})
    assert len(lines) == 3 + len(ROWS) + 1 and all(line.count("|") == 18 for line in lines)
    assert lines[0].startswith(
        "| mode | hair colour | hair style | skin tone | glasses | facial hair | mean of the five "
        "| glasses worn | skin tone ±1 | face shape |"
    )
    assert lines[2].startswith(
        "| chance (uniform guesses) | 12.5 | 11.1 | 12.5 | 33.3 | 25.0 | 18.9 | 55.6 | 34.4 |"
    )
    assert lines[3].startswith("| rendered identity (the classifier's ceiling) | 100.0 ± 0.0 |")
    assert lines[3].endswith("| 0 of 3 | 3 |")
    assert "- mean of the five, paired differences (percentage points): uniform - none 40.0 ± " in table(
        summary
    )
    assert "Attribute transfer" not in table(summarise([base | {"identity": 0}]))  # rows of before
