"""How far idgen's PuLID face crop lies from PuLID's own, on synthetic faces with known landmarks.

For each face the reference crop is PuLID's (tests/identity/pulid_reference.py: long side resized to
1024, facexlib's LMEDS similarity, warpAffine). Two idgen versions are compared with it:
  old: RANSAC (OpenCV's default method) on the photo as given (no resize), as idgen did before;
  new: idgen.identity.pulid (resize_long_side + align_face).
The distance of a crop is the largest displacement, in pixels of the 512 px crop, of its four corners
(where each crop corner samples the photo, seen in the reference crop's coordinates).

Landmarks are the FFHQ template under a random similarity (face size 120-400 px between the eyes
and mouth scale, rotation within 25 degrees) plus Gaussian noise per coordinate, its sigma drawn per
face from the given range. Where the photo is resized, the reference detector sees the resized photo,
so it gets its own noise draw at that resolution (idgen's new path sees the same resized photo).

    python benchmarks/pulid_face_crop.py                 # 2,000 faces per setting
    python benchmarks/pulid_face_crop.py --faces 200 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package holds the reference

from tests.identity import pulid_reference as R

from idgen.identity import pulid as P

CORNERS = np.array([[0, 0], [511, 0], [0, 511], [511, 511]], dtype=np.float64)


def random_landmarks(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Exact landmarks of one face: the 512 template under a random similarity, inside the photo."""
    scale = rng.uniform(0.25, 0.8) * min(width, height) / 512
    angle = np.deg2rad(rng.uniform(-25, 25))
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centred = (R.TEMPLATE_512 - 256.0) @ rot.T
    margin = 256 * scale
    centre = rng.uniform([margin, margin], [width - margin, height - margin])
    return centred + centre


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


def _invert(affine: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.invertAffineTransform(affine))


def displacement(affine: np.ndarray, affine_ref: np.ndarray, k: tuple[float, float]) -> float:
    """Largest corner displacement (crop px) of `affine` (on the photo) against the reference (on the
    photo resized by k = (kx, ky))."""
    photo_points = _apply(_invert(affine), CORNERS)
    in_ref = _apply(affine_ref, photo_points * np.array(k))
    return float(np.linalg.norm(in_ref - CORNERS, axis=1).max())


def det_row(landmarks: np.ndarray) -> np.ndarray:
    """A RetinaFace-like detection row (box, score, 5 landmarks), float32."""
    box = [*landmarks.min(0) - 20, *landmarks.max(0) + 20, 0.999]
    return np.array([*box, *landmarks.flatten()], dtype=np.float32)[None]


def measure(faces: int, size_range: tuple[int, int], noise: tuple[float, float], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    old, new = [], []
    for _ in range(faces):
        width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        truth = random_landmarks(rng, width, height)
        sigma = rng.uniform(*noise)
        on_photo = (truth + rng.normal(0, sigma, truth.shape)).astype(np.float32)
        long_side = max(width, height)
        if long_side > 1024:
            k = 1024 / long_side
            resized = (int(width * k), int(height * k))
            kxy = (resized[0] / width, resized[1] / height)
            on_resized = (truth * kxy + rng.normal(0, sigma, truth.shape)).astype(np.float32)
        else:
            kxy, on_resized = (1.0, 1.0), on_photo
        template = P.face_template()
        affine_ref = cv2.estimateAffinePartial2D(on_resized, R.TEMPLATE_512, method=cv2.LMEDS)[0]
        affine_old = cv2.estimateAffinePartial2D(on_photo, template)[0]  # RANSAC, no resize
        affine_new = P.alignment_affine(on_resized, template)  # the detector sees the resized photo
        old.append(displacement(affine_old, affine_ref, kxy))
        new.append(displacement(affine_new, affine_ref, (1.0, 1.0)))
    return {
        "faces": faces,
        "photo_sides": list(size_range),
        "noise_px": list(noise),
        "old": _summary(np.array(old)),
        "new": _summary(np.array(new)),
    }


def _summary(d: np.ndarray) -> dict:
    return {
        "over_0.5px": round(float((d > 0.5).mean()), 4),
        "p90_px": round(float(np.percentile(d, 90)), 3),
        "max_px": round(float(d.max()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for sizes in ((512, 512), (1500, 4000)):
        for noise in ((0.3, 1.0), (1.0, 2.0)):
            rows.append(measure(args.faces, sizes, noise, args.seed))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"{'photo sides':>12} {'noise px':>9} | {'old >0.5px':>10} {'old p90':>8} | "
        f"{'new >0.5px':>10} {'new p90':>8}"
    )
    for r in rows:
        sides = "-".join(str(s) for s in sorted(set(r["photo_sides"])))
        noise = "-".join(str(n) for n in r["noise_px"])
        o, n = r["old"], r["new"]
        print(
            f"{sides:>12} {noise:>9} | {o['over_0.5px']:>10.1%} {o['p90_px']:>8.2f} | "
            f"{n['over_0.5px']:>10.1%} {n['p90_px']:>8.2f}"
        )


if __name__ == "__main__":
    main()
