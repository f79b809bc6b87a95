import json
import math

import numpy as np
import pytest
import torch

from idgen.eval import metrics as M
from idgen.eval.models import Face, largest_face


def face(box, mask=None):
    return Face(box=box, score=1.0, embedding=torch.ones(2), mask=mask)


def test_cosine_of_identical_embeddings_is_one_and_scale_free():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert torch.allclose(M.cosine(a, 2 * a), torch.ones(2))
    assert M.cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])).item() == 0.0


def test_largest_face_is_picked_by_area():
    small, big = face((0, 0, 2, 2)), face((5, 5, 10, 9))
    assert largest_face([small, big]) is big
    assert largest_face([]) is None


def test_background_excludes_boxes_rounded_outwards_and_masks_exactly():
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, 0] = True
    keep = M.background([face((1.5, 1.2, 3.1, 2.0)), face((0, 0, 6, 4), mask=mask), None], (6, 4))
    expected = np.ones((4, 6), dtype=bool)
    expected[1:2, 1:4] = False  # rows floor(1.2)=1..ceil(2.0)=2, cols floor(1.5)=1..ceil(3.1)=4
    expected[0, 0] = False
    assert (keep == expected).all()


def test_pixel_contamination_is_the_mean_absolute_background_change():
    base = np.zeros((2, 2, 3), dtype=np.uint8)
    gen = base.copy()
    gen[0, 0] = [30, 60, 90]  # background pixel: mean change 60
    gen[1, 1] = [255, 255, 255]  # face pixel: ignored
    keep = np.array([[True, True], [True, False]])
    assert M.pixel_contamination(gen, base, keep) == pytest.approx(60 / 3)
    assert math.isnan(M.pixel_contamination(gen, base, np.zeros((2, 2), dtype=bool)))


def test_backdrop_shift_projects_the_move_on_the_direction_to_the_backdrop():
    base = torch.zeros(3, 1, 2)
    gen = torch.zeros(3, 1, 2)
    gen[0] = 0.2  # red moves +0.2 everywhere
    keep = torch.tensor([[True, True]])
    backdrop = torch.tensor([1.0, 0.0, 0.0])  # towards red
    assert M.backdrop_shift(gen, base, keep, backdrop) == pytest.approx(0.2 * 255)
    assert M.backdrop_shift(gen, base, keep, torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(0.0)


def test_patch_background_maps_the_view_onto_the_grid():
    keep = np.ones((8, 12), dtype=bool)
    keep[0:2, 2:4] = False  # a face in the crop's top-left patch
    view = (2.0, 0.0, 10.0, 8.0)  # centre square crop of a 12x8 image
    got = M.patch_background(keep, view, grid=4)
    expected = torch.ones(16, dtype=torch.bool)
    expected[0] = False
    assert torch.equal(got, expected)


def test_patch_contamination_is_one_minus_cosine_over_background_patches():
    base = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gen = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    keep = torch.tensor([True, True, False])
    assert M.patch_contamination(gen, base, keep) == pytest.approx(0.5)


def test_mean_ci_drops_nans_and_uses_the_sample_std():
    mean, half, n = M.mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3)
    # Student's t with 2 degrees of freedom: t(0.975, 2) = 4.302652729749464 (tables; scipy.stats.t.ppf)
    assert half == pytest.approx(4.302652729749464 * 1.0 / math.sqrt(3), rel=1e-9)
    normal = M.mean_ci_normal([1.0, 2.0, 3.0, float("nan")])
    assert normal == (2.0, pytest.approx(1.96 / math.sqrt(3)), 3)


@pytest.mark.parametrize(
    ("dof", "quantile"),
    [(1, 12.706204736174707), (5, 2.5705818356363146), (11, 2.200985160082949), (30, 2.0422724563012373),
     (1000, 1.9623390808264078)],
)  # fmt: skip
def test_t_quantiles_match_published_values(dof, quantile):
    assert M.t_quantile(0.975, dof) == pytest.approx(quantile, rel=1e-9)


def test_the_12_pair_interval_is_wider_than_the_normal_one_by_12_percent():
    values = [0.1 * k for k in range(12)]
    assert M.mean_ci(values)[1] / M.mean_ci_normal(values)[1] == pytest.approx(2.200985160082949 / 1.96)
    assert M.mean_ci([])[2] == 0


def test_landmark_and_pose_distances_by_hand():
    from idgen.eval.metrics.ibench_extra import landmark_distance, pose_distance

    a = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, 2.0], [2.0, 2.0]])
    box = (0.0, 0.0, 3.0, 4.0)  # diagonal 5
    assert landmark_distance(a, box, a + 7.0, box) == 0.0  # centred: a shift is no difference
    b = a.copy()
    b[0] += [1.0, 0.0]  # one point moves 1 px: after centring, it moves 0.8 and the other four 0.2 each
    expected = (0.8 + 4 * 0.2) / 5 / 5  # mean over the 5 points, / diagonal
    assert landmark_distance(a, box, b, box) == pytest.approx(expected)
    assert pose_distance((10.0, -5.0, 2.0), (7.0, 5.0, 2.0)) == pytest.approx((3 + 10 + 0) / 3)


def test_plug_in_metrics_run_when_their_model_is_given(tmp_path):
    from idgen.eval.report import collect
    from idgen.eval.runner import run_eval
    from tests.eval.fakes import METHODS, FakeGenerator, benchmark, fake_models

    class Poses:
        name = "fake-pose"

        def poses(self, images):  # yaw from the mean red of the image, pitch and roll 0
            return [(float(np.asarray(im)[..., 0].mean()) / 10, 0.0, 0.0) for im in images]

    models = fake_models()
    models.extra["pose_div"] = Poses()
    bench = benchmark(tmp_path / "photos", identities=1, prompts=1)
    run_eval(tmp_path / "out", bench, METHODS, FakeGenerator(), models, progress=False)
    summary = collect(tmp_path / "out", bench, METHODS)
    assert summary["metrics"]["pose_div"] == {"computed": True, "model": "fake-pose"}
    rows = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    from PIL import Image

    spatial = next(r for r in rows if r["method"] == "spatial")
    red = [np.asarray(Image.open(p).convert("RGB"))[..., 0].mean() / 10 for p in
           (tmp_path / "out" / spatial["image"], tmp_path / "photos/id_0.png")]  # fmt: skip
    assert spatial["pose_div"] == pytest.approx(abs(red[0] - red[1]) / 3)
    assert summary["metrics"]["landmark_diff"]["computed"] is False
