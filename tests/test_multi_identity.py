"""Several identities in one image and several photos of one person, on tiny random FLUX on CPU."""

import math
import warnings

import pytest
import torch
from PIL import Image

from idgen.backbones.run import InjectionRun
from idgen.core.gate import UniformMask
from idgen.core.multi import CompetingMasks, SummedResiduals
from idgen.errors import IdgenError, NoFaceError
from idgen.identity.base import FaceBox, IdentityFeatures
from idgen.pipelines.multi import (
    COMBINATIONS,
    MeanAll,
    MeanEmbeddingConcatTokens,
    check_identities,
    identity_features,
)
from idgen.pipelines.tiny import TINY_PULID, tiny_identity_encoder
from idgen.recording import IdentityMaskRecorder, MaskRecorder

SIZE = dict(height=64, width=96, num_inference_steps=6)  # 4x6 token grid
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def features(seed: int = 1, tokens: int = 17) -> IdentityFeatures:
    g = torch.Generator().manual_seed(seed)
    c = TINY_PULID
    return IdentityFeatures(
        id_embedding=torch.randn(1, c.id_dim, generator=g),
        vit_hidden=[torch.randn(1, tokens, c.vit_dim, generator=g) for _ in range(5)],
    )


def latents(pipe, **kwargs):
    args = dict(prompt="two people in a park", seed=7, output_type="latent", **SIZE)
    args.update(kwargs)
    return pipe(**args).images


def photo(value: int) -> Image.Image:
    g = torch.Generator().manual_seed(value)
    return Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())


@pytest.mark.parametrize("mode", ["none", "uniform", "spatial"])
def test_one_identity_as_a_list_is_bit_identical_to_the_single_path(tiny_pipe, mode):
    single = latents(tiny_pipe, id_features=features(), mode=mode)
    assert torch.equal(latents(tiny_pipe, id_features=[features()], mode=mode), single)
    from_photo = latents(tiny_pipe, id_image=photo(3), mode=mode)
    assert torch.equal(latents(tiny_pipe, id_images=[photo(3)], mode=mode), from_photo)
    if mode != "none":  # ...and the identity matters, so the equalities are not vacuous
        assert not torch.equal(from_photo, single)


def test_one_identity_records_the_same_masks_through_either_path(tiny_pipe):
    single, listed = MaskRecorder(), MaskRecorder()
    latents(tiny_pipe, id_features=features(), recorder=single)
    latents(tiny_pipe, id_features=[features()], recorder=listed)
    assert len(single.records) == len(listed.records) == 24
    for a, b in zip(single.records, listed.records, strict=True):
        assert (a.step, a.point) == (b.step, b.point)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.ca_norm, b.ca_norm)


def test_one_identity_on_the_wplus_branch_is_bit_identical(wplus_pipe):
    image = photo(5)
    for mode in ("uniform", "spatial"):
        single = latents(wplus_pipe, id_image=image, mode=mode)
        assert torch.equal(latents(wplus_pipe, id_images=[image], mode=mode), single)


@pytest.fixture(scope="module")
def wplus_pipe():
    from idgen.pipelines.pulid_flux import load_flux_wplus

    return load_flux_wplus(
        "tiny-random", "tiny-random", "tiny-random", device="cpu", torch_dtype=torch.float32
    )


def two_identities(pipe, **kwargs):
    recorder = IdentityMaskRecorder()
    out = latents(pipe, id_features=[features(1), features(2)], recorder=recorder, **kwargs)
    return out, recorder


def test_two_identities_each_token_takes_at_most_one_residual(tiny_pipe):
    out, recorder = two_identities(tiny_pipe)
    assert out.shape == (1, 24, 64) and recorder.identities == 2
    first, second = recorder.per_identity[0].records, recorder.per_identity[1].records
    assert len(first) == len(second) == 24
    for a, b in zip(first, second, strict=True):
        assert not ((a.mask > 0) & (b.mask > 0)).any()
        assert ((a.mask > 0) | (b.mask > 0)).float().mean() > 0.5  # both are not just zero
    early = [(a, b) for a, b in zip(first, second, strict=True) if a.t > 0.7]
    assert early  # no box: the priors peak on the left and right halves of the 4x6 grid
    for a, b in early:
        assert (a.mask[0, :, :3] > 0).all() and (a.mask[0, :, 3:] == 0).all()
        assert (b.mask[0, :, 3:] > 0).all() and (b.mask[0, :, :3] == 0).all()


def test_two_identities_differ_from_either_one(tiny_pipe):
    both = latents(tiny_pipe, id_features=[features(1), features(2)])
    assert not torch.allclose(both, latents(tiny_pipe, id_features=features(1)))
    assert not torch.allclose(both, latents(tiny_pipe, id_features=features(2)))


def test_boxes_steer_the_assignment(tiny_pipe):
    top, bottom = (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)  # 4x6 grid: rows 0-1 and rows 2-3
    _, recorder = two_identities(tiny_pipe, boxes=[bottom, top])
    for a, b in zip(recorder.per_identity[0].records, recorder.per_identity[1].records, strict=True):
        assert (a.mask[0, :2] == 0).all() and (b.mask[0, 2:] == 0).all()
        if a.t > 0.7:  # the prior is positive on every token of its own box
            assert (a.mask[0, 2:] > 0).all() and (b.mask[0, :2] > 0).all()


def test_masks_steer_the_assignment(tiny_pipe):
    left = torch.zeros(4, 6)
    left[:, :2] = 1.0
    _, recorder = two_identities(tiny_pipe, masks=[left, 1 - left])
    for a, b in zip(recorder.per_identity[0].records, recorder.per_identity[1].records, strict=True):
        assert (a.mask[0, :, 2:] == 0).all() and (b.mask[0, :, :2] == 0).all()


def transformer_inputs():
    g = torch.Generator().manual_seed(0)
    rows, cols = 3, 5
    img_ids = torch.zeros(rows * cols, 3)
    img_ids[:, 1] = torch.arange(rows).repeat_interleave(cols).float()
    img_ids[:, 2] = torch.arange(cols).repeat(rows).float()
    return dict(
        hidden_states=torch.randn(1, rows * cols, 64, generator=g),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(7, 3),
        guidance=torch.tensor([4.0]),
    )


def summed_reference(transformer, adapter, tokens, weights, inputs):
    """PuLID-FLUX's loop with one CA per identity: x += sum_i w_i * CA(id_i, x) at every injection point."""
    t = transformer
    hidden = t.x_embedder(inputs["hidden_states"])
    temb = t.time_text_embed(
        inputs["timestep"] * 1000, inputs["guidance"] * 1000, inputs["pooled_projections"]
    )
    enc = t.context_embedder(inputs["encoder_hidden_states"])
    rope = t.pos_embed(torch.cat((inputs["txt_ids"], inputs["img_ids"]), dim=0))
    blocks = [(b, i % 2 == 0) for i, b in enumerate(t.transformer_blocks)]
    blocks += [(b, i % 4 == 0) for i, b in enumerate(t.single_transformer_blocks)]
    ca = 0
    for block, injects in blocks:
        enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rope)
        if injects:
            residuals = [adapter.pulid_ca[ca](id_tokens, hidden) for id_tokens in tokens]
            for weight, residual in zip(weights, residuals, strict=True):
                hidden = hidden + weight * residual
            ca += 1
    return t.proj_out(t.norm_out(hidden, temb))


@torch.no_grad()
def test_uniform_sums_each_identitys_residual_with_its_weight(tiny_pipe):
    transformer, adapter = tiny_pipe.flux.transformer, tiny_pipe.adapter
    inputs = transformer_inputs()
    tokens = [adapter.encode(f.id_embedding, f.vit_hidden) for f in (features(1), features(2))]
    weights = (1.0, 0.35)
    expected = summed_reference(transformer, adapter, tokens, weights, inputs)
    summed = CompetingMasks((UniformMask(), UniformMask()), SummedResiduals())
    run = InjectionRun(id_tokens=torch.cat(tokens), id_weights=weights, competition=summed)
    with tiny_pipe.injector.run(run):
        ours = transformer(**inputs).sample
    # The identities' CAs run as one batch: the same arithmetic, rounded by a differently shaped matmul.
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    only_first = summed_reference(transformer, adapter, tokens[:1], weights[:1], inputs)
    assert not torch.allclose(ours, only_first, atol=1e-3)  # the second residual counts


def test_per_identity_weight_is_respected(tiny_pipe):
    both = latents(tiny_pipe, id_features=[features(1), features(2)], id_weight=[1.0, 0.5])
    assert not torch.allclose(both, latents(tiny_pipe, id_features=[features(1), features(2)]))
    # A weight of 0 removes that identity: the same as the other one alone in its own box.
    first_only = latents(
        tiny_pipe, id_features=[features(1), features(2)], id_weight=[1.0, 0.0], boxes=[LEFT, RIGHT]
    )
    alone = latents(
        tiny_pipe, id_features=[features(1), features(3)], id_weight=[1.0, 0.0], boxes=[LEFT, RIGHT]
    )
    assert torch.equal(first_only, alone)
    none = latents(tiny_pipe, id_features=[features(1), features(2)], id_weight=[0.0, 0.0])
    assert torch.equal(none, latents(tiny_pipe, mode="none"))


def test_uniform_two_identities_differs_from_spatial(tiny_pipe):
    two = [features(1), features(2)]
    assert not torch.allclose(
        latents(tiny_pipe, id_features=two, mode="uniform"), latents(tiny_pipe, id_features=two)
    )


def test_several_photos_of_one_person_run_and_change_the_image(tiny_pipe):
    one = latents(tiny_pipe, id_images=[photo(1)])
    three = latents(tiny_pipe, id_images=[[photo(1), photo(2), photo(3)]])
    assert not torch.allclose(one, three)
    # The default rule is MeanAll (chosen on the demo world's validation split, docs/multi-identity.md).
    assert torch.equal(
        three, latents(tiny_pipe, id_images=[[photo(1), photo(2), photo(3)]], combine=MeanAll())
    )
    concat = latents(
        tiny_pipe, id_images=[[photo(1), photo(2), photo(3)]], combine=MeanEmbeddingConcatTokens()
    )
    assert not torch.allclose(three, concat)


def test_mean_embedding_concat_tokens_against_a_hand_computation():
    a, b, c = features(1), features(2, tokens=9), features(3)
    combined = MeanEmbeddingConcatTokens()([a, b, c])
    assert torch.equal(combined.id_embedding, (a.id_embedding + b.id_embedding + c.id_embedding) / 3)
    for k in range(5):
        assert combined.vit_hidden[k].shape == (1, 17 + 9 + 17, TINY_PULID.vit_dim)
        assert torch.equal(combined.vit_hidden[k][:, :17], a.vit_hidden[k])
        assert torch.equal(combined.vit_hidden[k][:, 17:26], b.vit_hidden[k])
        assert torch.equal(combined.vit_hidden[k][:, 26:], c.vit_hidden[k])


def test_mean_all_against_a_hand_computation():
    a, b = features(1), features(2)
    combined = MeanAll()([a, b])
    assert torch.equal(combined.id_embedding, (a.id_embedding + b.id_embedding) / 2)
    for k in range(5):
        assert torch.equal(combined.vit_hidden[k], (a.vit_hidden[k] + b.vit_hidden[k]) / 2)


def test_one_photo_is_kept_as_it_is_by_every_rule():
    a = features(1)
    for rule in COMBINATIONS.values():
        assert identity_features(None, None, [[a]], rule)[0] is a


def faceless_encoder():
    """The tiny encoder with a detector that finds no face in a black photo."""

    def detector(image):
        return [] if max(image.convert("L").getextrema()) == 0 else [FaceBox(0, 0, image.width, image.height)]

    return tiny_identity_encoder(detector=detector)


def test_a_photo_without_a_face_is_skipped_with_a_warning_while_others_remain():
    encoder, black = faceless_encoder(), Image.new("RGB", (32, 32))
    with pytest.warns(UserWarning, match="identity 1: photo skipped: no face found"):
        kept = identity_features(encoder, [[black, photo(1)]], None, MeanAll())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = identity_features(encoder, [[photo(1)]], None, MeanAll())
    assert torch.equal(kept[0].id_embedding, alone[0].id_embedding)
    with pytest.raises(NoFaceError, match="identity 2: no face in any of its 2 photos"):
        identity_features(encoder, [photo(1), [black, black]], None, MeanAll())


def check(count=2, grid=(4, 4), **kwargs):
    args = dict(id_image=None, id_images=[photo(i) for i in range(count)], id_features=None, id_weight=1.0)
    args.update(boxes=None, masks=None)
    args.update(kwargs)
    return check_identities(grid=grid, **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(count=5), "5 identities need at least 20 image tokens .4 each.; a 4x4-token image has 16"),
        (dict(count=9, grid=(64, 64)), "at most 8 identities per image, got 9"),
        (dict(boxes=[LEFT]), "got 1 boxes for 2 identities"),
        (dict(boxes=[LEFT, (0.4, 0.0, 1.0, 1.0)]), "boxes 1 and 2 overlap"),
        (
            dict(boxes=[LEFT, (0.5, 0.0, 1.2, 1.0)]),
            r"box 2 \(0.5, 0.0, 1.2, 1.0\) must satisfy 0 <= left < right",
        ),
        (dict(boxes=[LEFT, (0.8, 0.0, 0.6, 1.0)]), "box 2 .* must satisfy"),
        (dict(boxes=[LEFT, (0.5, 0.0, 1.0)]), "box 2 must be four numbers"),
        (dict(boxes=[LEFT, (0.5, 0.0, 0.55, 0.05)]), "box 2 .* covers no image token of the 4x4 token grid"),
        (dict(boxes=[LEFT, RIGHT], masks=[torch.ones(2, 2)] * 2), "boxes or masks, not both"),
        (dict(masks=[torch.ones(2, 2)]), "got 1 masks for 2 identities"),
        (dict(masks=[torch.ones(2, 2), torch.zeros(2, 2)]), "mask 2 is black everywhere"),
        (dict(masks=[torch.ones(2, 2), 2 * torch.ones(2, 2)]), "mask 2 must be .h, w. with values in .0, 1."),
        (dict(id_weight=[1.0]), "1 id weights for 2 identities"),
        (dict(id_weight=[1.0, -1.0]), "id_weight must be >= 0 and finite for every identity"),
        (dict(id_weight=[1.0, math.nan]), "id_weight must be >= 0 and finite for every identity"),
        (dict(id_weight=[math.inf, 1.0]), "id_weight must be >= 0 and finite for every identity"),
        (dict(id_image=photo(0)), "give id_images, or id_image / id_features, not both"),
        (dict(id_images=[photo(0), []]), "every identity needs at least one photo"),
    ],
)
def test_bad_inputs_are_one_line_errors(kwargs, message):
    with pytest.raises(IdgenError, match=message) as raised:
        check(**kwargs)
    assert "\n" not in str(raised.value)


def test_touching_boxes_and_four_identities_at_64x64_are_fine():
    assert check(boxes=[LEFT, RIGHT]).boxes == [LEFT, RIGHT]
    assert check(count=4).count == 4


def test_bad_inputs_fail_in_the_pipeline_before_anything_is_encoded(tiny_pipe):
    with pytest.raises(IdgenError, match="5 identities need at least 20 image tokens"):
        tiny_pipe("two people", id_images=[object()] * 5, height=64, width=64)  # never read


# The command line: --id-image repeated, --id-box per person.

TINY = ["--flux", "tiny-random", "--pulid", "tiny-random", "--encoder", "tiny-random"]


def save_photos(folder, count):
    paths = []
    for i in range(count):
        path = folder / f"person{i}.png"
        photo(i).save(path)
        paths.append(str(path))
    return paths


def cli(tmp_path, *extra):
    from idgen.cli import main

    argv = ["generate", *TINY, "--prompt", "two people in a park", "--width", "96", "--height", "64",
            "--steps", "3", "--out", str(tmp_path / "out" / "two.png"), *extra]  # fmt: skip
    (tmp_path / "out").mkdir(exist_ok=True)
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_cli_two_people_with_boxes_writes_image_colour_strip_gif_and_sidecar(tmp_path):
    import json

    a, b = save_photos(tmp_path, 2)
    code = cli(tmp_path, "--id-image", a, "--id-image", b, "--id-box", "0,0,0.5,1", "--id-box", "0.5,0,1,1",
               "--mask-strip", "--mask-gif")  # fmt: skip
    assert code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["two.json", "two.masks.gif", "two.masks.png", "two.png"]
    assert Image.open(out / "two.masks.gif").n_frames == 3
    strip = Image.open(out / "two.masks.png").convert("RGB")
    assert strip.size == (3 * 96, 64 + 12)  # one 96x64 frame per step under its 12-pixel label
    sidecar = json.loads((out / "two.json").read_text())
    assert sidecar["parameters"]["id_image"] == [a, b]


def test_cli_colour_strip_shows_each_person_in_their_colour(tmp_path):
    from idgen.viz import IDENTITY_COLOURS, identity_mask_strip

    image = Image.new("RGB", (96, 64), "white")
    masks = torch.zeros(2, 4, 6)
    masks[0, :, :3], masks[1, :, 3:] = 1.0, 1.0
    strip = identity_mask_strip(image, [(0, 1.0, masks)]).convert("RGB")
    left, right = strip.getpixel((10, 40)), strip.getpixel((85, 40))
    expected = [tuple(round(255 * 0.4 + 0.6 * c) for c in IDENTITY_COLOURS[i]) for i in (0, 1)]
    assert (left, right) == (expected[0], expected[1])


def test_cli_several_photos_of_one_person_as_a_comma_separated_list(tmp_path, capsys):
    import json

    a1, a2 = save_photos(tmp_path, 2)
    assert cli(tmp_path, "--id-image", f"{a1},{a2}") == 0
    assert json.loads((tmp_path / "out" / "two.json").read_text())["parameters"]["id_image"] == f"{a1},{a2}"
    assert cli(tmp_path, "--id-image", f"{a1},{tmp_path}/nope.png", "--overwrite") == 1
    assert "id image not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--id-box", "0,0,0.5,1"], "got 1 --id-box for 2 --id-image"),
        (["--id-box", "0,0,0.6,1", "--id-box", "0.5,0,1,1"], "boxes 1 and 2 overlap"),
        (["--id-box", "0,0,0.5,1", "--id-box", "0.5,0,1.5,1"], "box 2 .* must satisfy"),
        (["--prior-box", "0,0,0.5,1"], "--prior-box is for one person; with several, use --id-box"),
        (["--compare"], "--compare shows one person"),
        (["--compare-id-weight", "2"], "--compare-id-weight shows one person"),
    ],
)
def test_cli_bad_several_people_inputs_fail_before_loading_and_write_nothing(
    tmp_path, capsys, extra, message
):
    import re

    a, b = save_photos(tmp_path, 2)
    assert cli(tmp_path, "--id-image", a, "--id-image", b, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0])
    assert not list((tmp_path / "out").iterdir())


def test_cli_five_people_at_64x64_is_an_error(tmp_path, capsys):
    photos = save_photos(tmp_path, 5)
    args = [x for p in photos for x in ("--id-image", p)]
    assert cli(tmp_path, *args, "--width", "64", "--height", "64") == 1
    assert "5 identities need at least 20 image tokens" in capsys.readouterr().err


def test_two_identities_on_the_wplus_branch_take_separate_tokens(wplus_pipe):
    recorder = IdentityMaskRecorder()
    latents(wplus_pipe, id_images=[photo(1), photo(2)], recorder=recorder)
    first, second = recorder.per_identity[0].records, recorder.per_identity[1].records
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        assert not ((a.mask > 0) & (b.mask > 0)).any()


def test_two_identities_with_true_cfg_and_a_batch_of_prompts(tiny_pipe):
    recorder = IdentityMaskRecorder()
    prompts = ["two people in a park", "two people on a beach"]
    out = latents(
        tiny_pipe, prompt=prompts, id_features=[features(1), features(2)], true_cfg_scale=2.0,
        negative_prompt="blurry", recorder=recorder,
    )  # fmt: skip
    assert out.shape[0] == 2
    records = recorder.per_identity[1].records
    assert len(records) == 2 * 6 * 4  # conditional and negative pass, 6 steps, 4 points
    assert all(r.mask.shape == (2, 4, 6) for r in records)


def test_several_photos_benchmark_pairs_people_and_gives_the_t_interval():
    import importlib.util
    import math
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "several_photos.py"
    spec = importlib.util.spec_from_file_location("several_photos", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    diff = bench.paired([0.25, 0.5, math.nan], [0.5, 1.0, 0.75])  # the third person has no face in run 1
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(0.375)
    # t(0.975, 1 dof) = 12.7062; sample std of (0.25, 0.5) = 0.25 / sqrt(2)
    assert diff["ci95"] == pytest.approx(12.7062047 * (0.25 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)
    result = bench.summarise(
        {"1 photo": [0.25, 0.5, math.nan], "3 photos, mean-all": [0.5, 1.0, 0.75]}, "test", 3
    )
    assert result["rows"]["1 photo"] == {"facesim": 0.375, "faces": 2}
    assert result["rows"]["3 photos, mean-all"]["facesim"] == 0.75
    assert "| 3 photos, mean-all | 0.7500 | 3 | +0.3750 ± " in bench.table(
        {**result, "photos_kind": "scenes"}
    )


def test_cli_one_id_image_keeps_its_sidecar_as_it_was(tmp_path):
    import json

    (a,) = save_photos(tmp_path, 1)
    assert cli(tmp_path, "--id-image", a) == 0
    parameters = json.loads((tmp_path / "out" / "two.json").read_text())["parameters"]
    assert parameters["id_image"] == a and "id_box" not in parameters and "combine" not in parameters


def test_cli_combine_picks_the_rule_that_joins_one_persons_photos(tmp_path):
    import json

    from idgen.pipelines.multi import COMBINATIONS
    from idgen.pipelines.names import DEFAULT_PHOTO_COMBINATION, PHOTO_COMBINATIONS

    assert set(PHOTO_COMBINATIONS) == set(COMBINATIONS) and DEFAULT_PHOTO_COMBINATION in COMBINATIONS
    a1, a2 = save_photos(tmp_path, 2)
    images = {}
    for rule in (None, *PHOTO_COMBINATIONS):
        extra = [] if rule is None else ["--combine", rule]
        assert cli(tmp_path, "--id-image", f"{a1},{a2}", "--seed", "3", "--overwrite", *extra) == 0
        images[rule] = Image.open(tmp_path / "out" / "two.png").tobytes()
        sidecar = json.loads((tmp_path / "out" / "two.json").read_text())
        assert sidecar["parameters"].get("combine") == rule
    assert images[None] == images[DEFAULT_PHOTO_COMBINATION]  # the default is that rule
    assert images["mean-all"] != images["mean-embedding-concat-tokens"]  # the flag reaches the pipeline


def test_cli_combine_without_several_photos_of_one_person_is_one_line(tmp_path, capsys):
    a, b = save_photos(tmp_path, 2)
    assert cli(tmp_path, "--id-image", a, "--id-image", b, "--combine", "mean-all") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "idgen: error: --combine joins several photos of one person (--id-image a1.jpg,a2.jpg): none given"
    ]
    assert not list((tmp_path / "out").iterdir())


def test_spatial_identities_compete_on_their_early_priors_and_uniform_ones_do_not():
    from idgen.core.gate import SpatialMask
    from idgen.core.multi import PriorLayout, separated_boxes
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.pipelines.multi import competing_masks

    policy = SpatialMask(TemporalSpatialScheduler.from_preset("v1"))
    two = competing_masks("spatial", policy, 2, None, None)
    assert [p.scheduler.prior_box for p in two.policies] == separated_boxes(2)  # type: ignore[attr-defined]
    assert two.layout == tuple(PriorLayout(p.scheduler) for p in two.policies)  # type: ignore[attr-defined]
    assert competing_masks("spatial", policy, 1, None, None).layout == ()  # one person: today's path
    assert competing_masks("uniform", policy, 2, None, None).layout == ()  # the summed baseline


def test_boxed_or_masked_identities_compute_their_attention_masks_inside_their_own_region():
    from idgen.core.gate import SpatialMask
    from idgen.core.schedule import TemporalSpatialScheduler
    from idgen.pipelines.multi import competing_masks

    policy = SpatialMask(TemporalSpatialScheduler.from_preset("balanced"))
    boxes = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.2, 1.0, 0.9)]
    boxed = competing_masks("spatial", policy, 2, boxes, None)
    assert [p.attention_box for p in boxed.policies] == boxes  # type: ignore[attr-defined]
    alone = competing_masks("spatial", policy, 1, boxes[:1], None)
    assert alone.policies[0].attention_box == boxes[0]  # type: ignore[attr-defined]
    mask = torch.zeros(8, 8)
    mask[2:6, 4:8] = 1.0
    masked = competing_masks("spatial", policy, 2, None, [mask, 1 - mask])
    assert masked.policies[0].attention_box == (0.5, 0.25, 1.0, 0.75)  # type: ignore[attr-defined]
    # Without boxes the strips only centre the priors: each person's attention is read over the image.
    strips = competing_masks("spatial", policy, 2, None, None)
    assert [p.attention_box for p in strips.policies] == [None, None]  # type: ignore[attr-defined]
    assert competing_masks("spatial", policy, 1, None, None).policies == (policy,)  # today's path


# True CFG's negative pass per person: PuLID's uncond id tokens, or the other people's own.


def test_negative_identity_others_gives_each_person_the_next_persons_tokens():
    from idgen.pipelines.multi import negative_id_tokens

    tokens = [torch.full((2, 3, 4), float(i)) for i in range(3)]
    uncond = [torch.full((2, 3, 4), -1.0 - i) for i in range(3)]
    assert torch.equal(negative_id_tokens(tokens, uncond, "uncond"), torch.cat(uncond))
    others = negative_id_tokens(tokens, uncond, "others")  # (n * B, K, dim), identity-major
    assert [others[2 * i, 0, 0].item() for i in range(3)] == [1.0, 2.0, 0.0]


@pytest.mark.parametrize(
    ("rule", "mode", "people", "true_cfg", "runs"),
    [
        (None, "spatial", 2, True, "others"),  # the masks compete: each face steered away from the other
        (None, "spatial", 3, True, "others"),
        (None, "uniform", 2, True, "uncond"),  # summed residuals: PuLID run once per person
        (None, "spatial", 1, True, "uncond"),  # one person (several photos): PuLID's
        (None, "spatial", 2, False, "uncond"),  # no negative pass counts
        ("uncond", "spatial", 2, True, "uncond"),
        ("others", "uniform", 2, True, "others"),  # a rule given is kept
    ],
)
def test_negative_identity_rule_defaults_to_others_where_the_masks_compete(
    rule, mode, people, true_cfg, runs
):
    from idgen.pipelines.multi import negative_identity_rule

    assert negative_identity_rule(rule, mode, people, true_cfg) == runs


def test_negative_identity_changes_only_the_negative_pass(tiny_pipe):
    two = dict(id_features=[features(1), features(2)], true_cfg_scale=2.0, negative_prompt="blurry")
    default = latents(tiny_pipe, **two)
    assert torch.equal(latents(tiny_pipe, negative_identity="others", **two), default)
    uncond = latents(tiny_pipe, negative_identity="uncond", **two)
    assert not torch.equal(uncond, default)
    # The uniform mode's default is PuLID's negative.
    uniform = dict(two, mode="uniform")
    assert torch.equal(
        latents(tiny_pipe, negative_identity="uncond", **uniform), latents(tiny_pipe, **uniform)
    )
    # Without a negative pass counting (it starts after the last step) the rule changes nothing.
    late = dict(two, true_cfg_start_step=SIZE["num_inference_steps"])
    assert torch.equal(latents(tiny_pipe, negative_identity="uncond", **late), latents(tiny_pipe, **late))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(negative_identity="other", true_cfg_scale=2.0), "unknown negative_identity 'other'"),
        (
            dict(negative_identity="others", true_cfg_scale=1.0),
            "steers true CFG's negative pass: set true_cfg_scale > 1",
        ),
        (dict(negative_identity="others", true_cfg_scale=2.0, one=True), "needs two or more people"),
    ],
)
def test_negative_identity_bad_inputs_are_one_line_errors(tiny_pipe, kwargs, message):
    kwargs = dict(kwargs)
    people = [features(1)] if kwargs.pop("one", False) else [features(1), features(2)]
    given = dict(id_features=people[0]) if len(people) == 1 else dict(id_features=people)
    with pytest.raises(IdgenError, match=message):
        latents(tiny_pipe, negative_prompt="blurry", **given, **kwargs)


def test_cli_negative_identity_others_runs_and_is_recorded(tmp_path):
    import json

    a, b = save_photos(tmp_path, 2)
    args = ["--id-image", a, "--id-image", b, "--true-cfg", "2", "--negative-prompt", "blurry"]
    assert cli(tmp_path, *args, "--negative-identity", "others") == 0
    sidecar = json.loads((tmp_path / "out" / "two.json").read_text())
    assert sidecar["parameters"]["negative_identity"] == "others"
    assert sidecar["negative_identity"] == "others"


@pytest.mark.parametrize(
    ("extra", "runs"),
    [
        (["--true-cfg", "2", "--negative-prompt", "blurry"], "others"),
        (["--true-cfg", "2", "--negative-prompt", "blurry", "--mode", "uniform"], "uncond"),
        (["--true-cfg", "2", "--negative-prompt", "blurry", "--negative-identity", "uncond"], "uncond"),
        (["--true-cfg", "1"], None),  # no negative pass counts
    ],
)
def test_cli_sidecar_records_the_negative_pass_that_ran(tmp_path, extra, runs):
    import json

    a, b = save_photos(tmp_path, 2)
    assert cli(tmp_path, "--id-image", a, "--id-image", b, *extra) == 0
    sidecar = json.loads((tmp_path / "out" / "two.json").read_text())
    assert sidecar["negative_identity"] == runs


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--true-cfg", "1"],
            "--negative-identity others steers true CFG's negative pass: give --true-cfg > 1",
        ),
        (["--one"], "--negative-identity others needs two or more people"),
    ],
)
def test_cli_negative_identity_bad_inputs_fail_before_loading(tmp_path, capsys, extra, message):
    a, b = save_photos(tmp_path, 2)
    people = ["--id-image", a] if extra == ["--one"] else ["--id-image", a, "--id-image", b]
    rest = [] if extra == ["--one"] else extra
    assert cli(tmp_path, *people, *rest, "--negative-identity", "others") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list((tmp_path / "out").iterdir())


def test_bounded_attention_keeps_each_regions_image_tokens_from_the_others():
    from idgen.core.multi import BoxRegion, bounded_attention

    # 2x3 token grid, 2 text tokens: person 0 on column 0, person 1 on column 2, column 1 in no box
    regions = [BoxRegion((0.0, 0.0, 1 / 3, 1.0)), BoxRegion((2 / 3, 0.0, 1.0, 1.0))]
    allowed = bounded_attention(regions, (2, 3), 2, torch.device("cpu"))
    assert allowed.shape == (1, 1, 8, 8) and allowed.dtype == torch.bool
    owner = [None, None, 0, None, 1, 0, None, 1]  # text, text, then the grid row by row
    for q, a in enumerate(owner):
        for k, b in enumerate(owner):
            blocked = a is not None and b is not None and a != b
            assert bool(allowed[0, 0, q, k]) is not blocked, (q, k)


def test_a_token_in_two_regions_is_bounded_by_neither():
    from idgen.core.multi import BoxRegion, bounded_attention

    # 1x2 grid: person 0 on both tokens, person 1 on the second: only token 0 is person 0's alone
    regions = [BoxRegion((0.0, 0.0, 1.0, 1.0)), BoxRegion((0.5, 0.0, 1.0, 1.0))]
    allowed = bounded_attention(regions, (1, 2), 0, torch.device("cpu"))
    assert allowed.all()  # one owner at most: nothing to keep apart


def test_bound_attention_changes_the_image_only_when_asked(tiny_pipe):
    people, boxes = [features(1), features(2)], [LEFT, RIGHT]
    default = latents(tiny_pipe, id_features=people, boxes=boxes)
    assert torch.equal(default, latents(tiny_pipe, id_features=people, boxes=boxes, bound_attention=False))
    bounded = latents(tiny_pipe, id_features=people, boxes=boxes, bound_attention=True)
    assert (bounded - default).abs().max() > 1e-3
    # the user's own joint_attention_kwargs are kept beside the bounds
    scaled = latents(tiny_pipe, id_features=people, boxes=boxes, bound_attention=True,
                     joint_attention_kwargs={"scale": 1.0})  # fmt: skip
    assert torch.equal(scaled, bounded)
    uniform = latents(tiny_pipe, id_features=people, boxes=boxes, mode="uniform")
    assert not torch.equal(uniform, latents(tiny_pipe, id_features=people, boxes=boxes, mode="uniform",
                                            bound_attention=True))  # fmt: skip
    no_boxes = latents(tiny_pipe, id_features=people)
    assert torch.equal(no_boxes, latents(tiny_pipe, id_features=people, bound_attention=False))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(id_features=features(1)), "bound_attention needs two or more people"),
        (dict(id_features=[features(1), features(2)]), "bound_attention needs each person's box or mask"),
    ],
)
def test_bound_attention_bad_inputs_are_one_line_errors(tiny_pipe, kwargs, message):
    with pytest.raises(IdgenError, match=message):
        latents(tiny_pipe, bound_attention=True, **kwargs)


@pytest.mark.parametrize(
    ("flag", "recorded"), [([], False), (["--no-bound-attention"], False), (["--bound-attention"], True)]
)
def test_cli_bound_attention_is_recorded(tmp_path, flag, recorded):
    import json

    a, b = save_photos(tmp_path, 2)
    boxes = ["--id-box", "0,0,0.5,1", "--id-box", "0.5,0,1,1"]
    assert cli(tmp_path, "--id-image", a, "--id-image", b, *boxes, *flag) == 0
    sidecar = json.loads((tmp_path / "out" / "two.json").read_text())
    assert sidecar["bound_attention"] is recorded


@pytest.mark.parametrize(
    "extra", [["--bound-attention"], ["--no-bound-attention"], ["--bound-attention", "--two"]]
)
def test_cli_bound_attention_without_two_boxed_people_fails_before_loading(tmp_path, capsys, extra):
    a, b = save_photos(tmp_path, 2)
    people = ["--id-image", a, "--id-image", b] if "--two" in extra else ["--id-image", a]
    assert cli(tmp_path, *people, extra[0]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "acts on two or more people with their boxes" in err[0]
    assert not list((tmp_path / "out").iterdir())
