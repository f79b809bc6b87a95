"""The demo world's W+ space: a tiny style-based autoencoder whose coarse levels are shape, fine are colour.

PIDiff represents identity in StyleGAN2's W+ space (e4e inverts a face into 18 per-layer style vectors;
layers 0-7 steer shape, 8-17 colour and texture). e4e and StyleGAN2-FFHQ cannot run in the demo world, so
`WorldStyleCodec` gives it a W+-like space of its own:

- encoder: a 32x32 face crop with its surroundings (the face box expanded 1.8x, as `WorldFaceTower` sees
  it) -> W (B, L, D) = (B, 8, 32): one style vector per synthesis level, a "W+" of 8 levels.
- decoder: StyleGAN2-like synthesis from a learned constant 4x4. Level 0 modulates the 4x4 conv, levels
  1-2 the 8x8 convs, 3-4 the 16x16 convs, 5-6 the 32x32 convs and level 7 the toRGB layer (modulated
  convolution with weight demodulation, plain torch). `COARSE` = levels 0-3 (4x4 to the first 16x16
  conv), `FINE` = 4-7, mirroring StyleGAN's 0-7 / 8-17.

Coarse = shape and fine = colour is not left to chance: we own the renderer, so it is *supervised*.
Shape attributes are face_shape, hair_style, eye_spacing, brows, nose, mouth, glasses, facial_hair;
colour attributes are skin_tone, hair_colour, eye_colour (`SHAPE_ATTRIBUTES`, `COLOUR_ATTRIBUTES`).
Training minimises (a) reconstruction L1 (on pixels and on image gradients), (b) a swap loss (the same
L1): decode(coarse levels of A, fine levels of B) must equal the render of `swap_identity(A, B)` (A's shape
attributes, B's colour attributes) with A's photo settings, and (c) small attribute-classification heads
(training only, not shipped) on the mean of the coarse levels (shape attributes) and of the fine levels
(colour attributes).

The photo's context -- pose jitter, backdrop or scene, clothing colour, lighting, framing -- is neither
shape nor colour *of the identity*. `render_reference` draws backdrop and clothing from the seed alone
(`reference_choice`), and `render` takes them from the `Scene`, so "A's photo settings" are well defined:
the context travels with the **coarse** levels (a fine swap keeps A's backdrop, clothes and light; a
coarse swap A<-B brings B's). `measure_edits` scores against exactly those targets.

`train_wplus_codec` trains it with the resumable `idgen.training.Trainer` on renders of the training
identities only (reference photos and random scenes, all drawn from fixed seeds) and writes
`config.json` + `model.safetensors` to the assets folder; `idgen world train --stage wplus` runs it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idgen.core.wplus_edit import check_w_plus
from idgen.core.wplus_edit import mix as mix_layers
from idgen.errors import IdgenError
from idgen.io import atomic_output, atomic_write_text
from idgen.training import Stopwatch, TrainConfig, Trainer
from idgen.world.identity import TOWER_EXPAND, _Saveable, crop_faces
from idgen.world.render import (
    ATTRIBUTES,
    EYE,
    HAIR,
    SKIN,
    Identity,
    Render,
    Scene,
    render,
    render_reference,
    test_identities,
    train_identities,
)

__all__ = [
    "COARSE",
    "COLOUR_ATTRIBUTES",
    "CROP_EXPAND",
    "CROP_SIZE",
    "DEFAULT_ASSETS",
    "FINE",
    "NUM_LEVELS",
    "SHAPE_ATTRIBUTES",
    "W_DIM",
    "WorldStyleCodec",
    "crop_photos",
    "measure_edits",
    "swap_identity",
    "train_wplus_codec",
]

DEFAULT_ASSETS = Path(__file__).resolve().parent / "assets" / "wplus"
CROP_SIZE = 32
CROP_EXPAND = TOWER_EXPAND  # the face with hair, clothes and backdrop around it
NUM_LEVELS = 8
W_DIM = 32
COARSE = range(0, 4)  # 4x4, 8x8, 8x8, first 16x16 conv: shape (StyleGAN's layers 0-7)
FINE = range(4, 8)  # second 16x16 conv, 32x32 convs, toRGB: colour (StyleGAN's layers 8-17)
COLOUR_ATTRIBUTES: tuple[str, ...] = ("skin_tone", "hair_colour", "eye_colour")
SHAPE_ATTRIBUTES: tuple[str, ...] = tuple(a for a in ATTRIBUTES if a not in COLOUR_ATTRIBUTES)


def swap_identity(shape_from: Identity, colour_from: Identity) -> Identity:
    """The identity with `shape_from`'s shape attributes and `colour_from`'s colour attributes."""
    values = {
        f.name: getattr(colour_from if f.name in COLOUR_ATTRIBUTES else shape_from, f.name)
        for f in fields(Identity)
    }
    return Identity(**values)


def crop_photos(renders: list[Render]) -> Tensor:
    """Renders -> (B, 3, 32, 32) float crops in [0, 1] at their true face boxes (the codec's input)."""
    images = torch.from_numpy(np.stack([r.image.transpose(2, 0, 1) for r in renders])).float() / 255.0
    boxes = torch.tensor([r.face_box for r in renders], dtype=torch.float32)
    return crop_faces(images, boxes, CROP_EXPAND, CROP_SIZE)


# ---------------------------------------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------------------------------------
class ModulatedConv(nn.Module):
    """StyleGAN2 modulated convolution, written as scale-input / conv / demodulate-output.

    Equivalent to convolving with per-sample weights w * s (then dividing each output channel by its
    norm), but runs as one ordinary conv2d for the whole batch: fast on CPU, no grouped convs.
    """

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int = 3, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel) / (c_in * kernel * kernel) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.affine = nn.Linear(w_dim, c_in)  # style vector -> per-input-channel scale
        nn.init.ones_(self.affine.bias)  # start as an unmodulated conv
        self.demodulate = demodulate

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        # x (B, Cin, H, W), w (B, D) -> (B, Cout, H, W)
        s = self.affine(w)  # (B, Cin)
        x = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.weight.shape[-1] // 2)
        if self.demodulate:
            # Norm of each sample's effective weights per output channel: (Cout, Cin) @ (Cin, B) -> (B, Cout)
            d = torch.rsqrt((self.weight.square().sum((2, 3)) @ s.square().T).T + 1e-8)
            x = x * d[:, :, None, None]
        return x + self.bias[None, :, None, None]


class WorldStyleCodec(_Saveable):
    """Face crop (B, 3, 32, 32) in [0, 1] <-> W (B, L, D): a style-based autoencoder with a W+-like space.

    channels[i] is the width at resolution 4 * 2**i; there are L = 2 * len(channels) levels (one conv at
    4x4, two per larger resolution, one toRGB), the first half coarse, the second fine.
    """

    kind = "world-style-codec"

    def __init__(self, channels: tuple[int, ...] | list[int] = (64, 64, 48, 32), w_dim: int = W_DIM) -> None:
        super().__init__()
        self.channels, self.w_dim = tuple(channels), w_dim
        if len(self.channels) < 2:
            raise IdgenError(f"WorldStyleCodec needs at least 2 resolutions, got channels={self.channels}")
        self.num_levels = 2 * len(self.channels)
        self.size = 4 * 2 ** (len(self.channels) - 1)
        self.coarse = range(0, self.num_levels // 2)
        self.fine = range(self.num_levels // 2, self.num_levels)

        # Encoder: mirror of the synthesis (size -> 4 px), then one linear map to all levels at once.
        enc: list[nn.Module] = [nn.Conv2d(3, self.channels[-1], 3, 1, 1), nn.LeakyReLU(0.2)]
        widths = self.channels[::-1]  # (32, 48, 64, 64): widths at size, size/2, ..., 4
        for k, (c_prev, c) in enumerate(itertools.pairwise(widths)):
            enc += [nn.Conv2d(c_prev, c, 3, 2, 1), nn.LeakyReLU(0.2)]
            if k < len(widths) - 2:  # a second conv per stage, except at 4x4 (size budget)
                enc += [nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2)]
        enc += [nn.Conv2d(widths[-1], w_dim, 1)]  # narrow before flattening: keeps the linear map small
        self.encoder = nn.Sequential(*enc)
        # Flatten, not pool: where things are (eye spacing, hair outline) is the shape code.
        self.to_w = nn.Linear(w_dim * 16, self.num_levels * w_dim)

        # Synthesis: constant 4x4 -> conv (level 0) -> [upsample, conv, conv] per resolution -> toRGB.
        self.const = nn.Parameter(torch.randn(1, self.channels[0], 4, 4))
        convs = [ModulatedConv(self.channels[0], self.channels[0], w_dim)]
        for c_prev, c in itertools.pairwise(self.channels):
            convs += [ModulatedConv(c_prev, c, w_dim), ModulatedConv(c, c, w_dim)]
        self.convs = nn.ModuleList(convs)  # len L - 1: level i modulates convs[i]
        self.to_rgb = ModulatedConv(self.channels[-1], 3, w_dim, kernel=1, demodulate=False)  # level L-1

    def config(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "w_dim": self.w_dim}

    def check_w(self, w: Tensor, what: str = "W code") -> Tensor:
        """Accept (L, D) or (B, L, D); return (B, L, D). Anything else is an IdgenError naming the shape."""
        return check_w_plus(w, self.num_levels, self.w_dim, what)

    def levels(self, spec: str | int | range | tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """ "coarse", "fine", "all", one level or an iterable of levels -> sorted level indices."""
        named = {"coarse": self.coarse, "fine": self.fine, "all": range(self.num_levels)}
        if isinstance(spec, str):
            if spec not in named:
                raise IdgenError(f"unknown level name {spec!r}; use coarse, fine or all")
            return tuple(named[spec])
        picked = [spec] if isinstance(spec, int) else list(spec)
        for i in picked:
            if not 0 <= int(i) < self.num_levels:
                raise IdgenError(f"level {i} is out of range 0-{self.num_levels - 1}")
        if not picked:
            raise IdgenError("level selection is empty")
        return tuple(sorted({int(i) for i in picked}))

    def encode(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) crops in [0, 1] -> W (B, L, D)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.size, self.size):
            raise IdgenError(f"crops must have shape (B, 3, {self.size}, {self.size}), got {tuple(x.shape)}")
        h = self.encoder(x * 2 - 1)  # (B, D, 4, 4)
        return self.to_w(h.flatten(1)).view(-1, self.num_levels, self.w_dim)

    def decode(self, w: Tensor) -> Tensor:
        """W (B, L, D) or (L, D) -> (B, 3, S, S) crops (roughly [0, 1]; not clamped, for training)."""
        w = self.check_w(w)
        x = self.const.expand(w.shape[0], -1, -1, -1)  # (B, C0, 4, 4)
        for i, conv in enumerate(self.convs):
            if i % 2 == 1:  # the first conv of each larger resolution works on the 2x upsampled map
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = F.leaky_relu(conv(x, w[:, i]), 0.2)
        return self.to_rgb(x, w[:, -1]) + 0.5  # (B, 3, S, S)

    def mix(
        self, w_a: Tensor, w_b: Tensor, levels: str | int | range | tuple[int, ...] | list[int]
    ) -> Tensor:
        """w_a with `levels` taken from w_b (style mixing); the other levels are w_a's, bit for bit."""
        a, b = self.check_w(w_a, "first W code"), self.check_w(w_b, "second W code")
        picked = self.levels(levels)
        return mix_layers(a, b, picked, num_layers=self.num_levels, w_dim=self.w_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


# ---------------------------------------------------------------------------------------------------------
# Training data: anchors (photos of training identities) and swap targets, all from fixed seeds.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WPlusTrainPlan:
    anchors: int  # photos of training identities (reference photos and random scenes)
    partners: int  # colour donors per anchor, each with its rendered swap target
    reference_fraction: float  # share of anchors that are reference photos (the rest: random scenes)
    train: TrainConfig
    swap_weight: float = 1.0
    attribute_weight: float = 0.1
    edge_weight: float = 1.0  # L1 on image gradients: keeps small parts (eyes, glasses, brows) sharp
    data_seed: int = 73_000  # anchors, their photos and colour donors

    def reseeded(self, k: int) -> WPlusTrainPlan:
        """The same plan with its k-th other seeds (data + k, training + 10 k); k = 0 is this one."""
        return replace(self, train=self.train.reseeded(k), data_seed=self.data_seed + k)


TRAIN_SEED = 73_101
FULL_PLAN = WPlusTrainPlan(
    anchors=4000,
    partners=2,
    reference_fraction=0.5,
    train=TrainConfig(steps=1650, lr=2e-3, batch_size=24, warmup=40, checkpoint_every=100, seed=TRAIN_SEED),
)
QUICK_PLAN = WPlusTrainPlan(
    anchors=24,
    partners=1,
    reference_fraction=0.5,
    train=replace(FULL_PLAN.train, steps=8, batch_size=8, warmup=0, checkpoint_every=4, lr=3e-3),
)


@dataclass(frozen=True)
class _Photo:
    """How one photo is taken: a reference photo (scene None) or a scene render, with its seed."""

    scene: Scene | None
    seed: int

    def take(self, identity: Identity) -> Render:
        if self.scene is None:
            return render_reference(identity, self.seed)
        return render(identity, self.scene, self.seed)


def _as_uint8(crops: Tensor) -> Tensor:
    return (crops * 255).round().clamp(0, 255).to(torch.uint8)


def _anchors(plan: WPlusTrainPlan, rng: np.random.Generator) -> tuple[list[Identity], list[_Photo]]:
    """Random training identities, each with a random photo: a reference photo or a random scene."""
    ids = train_identities()
    people, photos = [], []
    for _ in range(plan.anchors):
        people.append(ids[int(rng.integers(len(ids)))])
        seed = int(rng.integers(2**31))
        photos.append(_Photo(None if rng.random() < plan.reference_fraction else Scene.random(rng), seed))
    return people, photos


def _colour_donor(
    rng: np.random.Generator, k: int, people: list[Identity], held_out: set[tuple[int, ...]]
) -> tuple[int, Identity]:
    """A random other anchor, and the hybrid of anchor k's shape with its colours."""
    while True:  # a hybrid that happens to be a held-out identity must never be trained on
        p = int(rng.integers(len(people)))
        hybrid = swap_identity(people[k], people[p])
        if p != k and hybrid.as_tuple() not in held_out:
            return p, hybrid


def _build_data(plan: WPlusTrainPlan) -> dict[str, Tensor]:
    held_out = {t.as_tuple() for t in test_identities()}
    rng = np.random.default_rng([plan.data_seed, plan.anchors, plan.partners])
    people, photos = _anchors(plan, rng)
    shots = [photo.take(person) for person, photo in zip(people, photos, strict=True)]
    partners = np.zeros((plan.anchors, plan.partners), np.int64)
    targets: list[Render] = []
    for k in range(plan.anchors):
        for j in range(plan.partners):
            partners[k, j], hybrid = _colour_donor(rng, k, people, held_out)
            target = photos[k].take(hybrid)
            assert target.face_box == shots[k].face_box  # colours never move the face outline
            targets.append(target)
    colour_idx = [list(ATTRIBUTES).index(a) for a in COLOUR_ATTRIBUTES]
    shape_idx = [list(ATTRIBUTES).index(a) for a in SHAPE_ATTRIBUTES]
    attrs = torch.tensor([p.as_tuple() for p in people])
    return {
        "crops": _as_uint8(crop_photos(shots)),  # (N, 3, 32, 32)
        "targets": _as_uint8(crop_photos(targets)).view(plan.anchors, plan.partners, 3, CROP_SIZE, CROP_SIZE),
        "partners": torch.from_numpy(partners),  # (N, P)
        "shape_attrs": attrs[:, shape_idx],  # (N, 8)
        "colour_attrs": attrs[:, colour_idx],  # (N, 3)
    }


def _dataset(work_dir: Path, plan: WPlusTrainPlan) -> dict[str, Tensor]:
    """Rendered once and cached in work_dir (keyed by the plan's data fields)."""
    path = work_dir / "data.pt"
    key = json.dumps(
        [plan.anchors, plan.partners, plan.reference_fraction, plan.data_seed, CROP_SIZE, CROP_EXPAND]
    )
    if path.exists():
        data = torch.load(path, weights_only=True)
        if data.get("key") == key:
            return dict(data["data"])
    data = _build_data(plan)
    with atomic_output(path) as tmp:
        torch.save({"key": key, "data": data}, tmp)
    return data


def _gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """L1 between the horizontal and vertical forward differences of two (B, 3, S, S) images."""
    dx = (a[..., 1:] - a[..., :-1]) - (b[..., 1:] - b[..., :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


class _AttributeHeads(nn.Module):
    """Training-only linear heads: mean coarse level -> shape attributes, mean fine level -> colours."""

    def __init__(self, codec: WorldStyleCodec) -> None:
        super().__init__()
        self.coarse, self.fine = codec.coarse, codec.fine
        self.shape_sizes = [len(ATTRIBUTES[a]) for a in SHAPE_ATTRIBUTES]
        self.colour_sizes = [len(ATTRIBUTES[a]) for a in COLOUR_ATTRIBUTES]
        self.shape = nn.Linear(codec.w_dim, sum(self.shape_sizes))
        self.colour = nn.Linear(codec.w_dim, sum(self.colour_sizes))

    def loss(self, w: Tensor, shape_attrs: Tensor, colour_attrs: Tensor) -> tuple[Tensor, float]:
        groups = (
            (self.shape(w[:, self.coarse].mean(1)), self.shape_sizes, shape_attrs),
            (self.colour(w[:, self.fine].mean(1)), self.colour_sizes, colour_attrs),
        )
        losses, correct = [], []
        for logits, sizes, target in groups:
            for k, part in enumerate(logits.split(sizes, dim=-1)):
                losses.append(F.cross_entropy(part, target[:, k]))
                correct.append((part.argmax(-1) == target[:, k]).float().mean().detach())
        return torch.stack(losses).mean(), float(torch.stack(correct).mean())


def _train(
    data: dict[str, Tensor], plan: WPlusTrainPlan, folder: Path, progress: bool
) -> tuple[WorldStyleCodec, list[dict[str, float]]]:
    config = plan.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        codec = WorldStyleCodec()
        heads = _AttributeHeads(codec)
    n, p = data["partners"].shape

    def step(_: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        i = torch.randint(n, (config.batch_size,), generator=g)  # anchors A
        j = torch.randint(p, (config.batch_size,), generator=g)  # which colour donor
        b = data["partners"][i, j]  # donors B
        x = torch.cat([data["crops"][i], data["crops"][b]]).float() / 255.0  # (2N, 3, S, S)
        target = data["targets"][i, j].float() / 255.0  # A's shape and context, B's colours
        w = codec.encode(x)  # (2N, L, D)
        w_a, w_b = w.chunk(2)
        out = codec.decode(torch.cat([w_a, codec.mix(w_a, w_b, "fine")]))  # (2N, 3, S, S)
        rec, swap = out.chunk(2)
        # Pixel L1 alone settles for blurry faces; the gradient term pays for getting small parts right.
        rec_loss = F.l1_loss(rec, x[: len(i)]) + plan.edge_weight * _gradient_l1(rec, x[: len(i)])
        swap_loss = F.l1_loss(swap, target) + plan.edge_weight * _gradient_l1(swap, target)
        attr_loss, acc = heads.loss(
            w,
            torch.cat([data["shape_attrs"][i], data["shape_attrs"][b]]),
            torch.cat([data["colour_attrs"][i], data["colour_attrs"][b]]),
        )
        loss = rec_loss + plan.swap_weight * swap_loss + plan.attribute_weight * attr_loss
        return loss, {
            "rec_l1": float(rec_loss.detach()),
            "swap_l1": float(swap_loss.detach()),
            "attr_acc": acc,
        }

    trainer = Trainer(
        "wplus", {"codec": codec, "heads": heads}, [*codec.parameters(), *heads.parameters()], config, folder
    )
    trainer.fit(step, progress)
    return codec.eval(), trainer.log()


def train_wplus_codec(
    work_dir: str | Path,
    assets_dir: str | Path = DEFAULT_ASSETS,
    quick: bool = False,
    progress: bool = True,
    plan: WPlusTrainPlan | None = None,
) -> dict[str, Any]:
    """Train the codec (resumable: checkpoints under work_dir), write config.json + model.safetensors to
    assets_dir, and return the edit measurements on the held-out identities (`measure_edits`, whose seeds
    stay fixed). `plan` (default: `QUICK_PLAN` or `FULL_PLAN`) is, e.g., a plan's `reseeded(k)`."""
    work_dir, assets_dir = Path(work_dir), Path(assets_dir)
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    work_dir.mkdir(parents=True, exist_ok=True)
    timed = Stopwatch()
    data = timed("data", _dataset, work_dir, plan)
    codec, log = timed("train", _train, data, plan, work_dir / "train", progress)
    codec.save_pretrained(assets_dir)
    codec = WorldStyleCodec.from_pretrained(assets_dir)  # measure what was written
    identities = test_identities()[: 8 if quick else None]
    results: dict[str, Any] = timed("measure", measure_edits, codec, identities)
    results["timings"] = timed.seconds
    results["first_loss"], results["last_loss"] = log[0], log[-1]
    results["parameters"] = sum(t.numel() for t in codec.state_dict().values())
    results["weights_bytes"] = (assets_dir / "model.safetensors").stat().st_size
    results["plan"] = asdict(plan)
    atomic_write_text(work_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


# ---------------------------------------------------------------------------------------------------------
# Measuring edits against the renderer's ground truth.
# ---------------------------------------------------------------------------------------------------------
_REGIONS = {"hair": HAIR, "skin": SKIN, "eye": EYE}


def _crop_labels(renders: list[Render], num_labels: int = 12) -> Tensor:
    """Part labels cropped like the images: one-hot, the same bilinear crop, argmax -> (B, S, S) long."""
    labels = torch.from_numpy(np.stack([r.labels for r in renders])).long()
    onehot = F.one_hot(labels, num_labels).permute(0, 3, 1, 2).float()  # (B, K, 64, 64)
    boxes = torch.tensor([r.face_box for r in renders], dtype=torch.float32)
    return crop_faces(onehot, boxes, CROP_EXPAND, CROP_SIZE).argmax(1)


def _dilate(mask: Tensor) -> Tensor:
    return F.max_pool2d(mask.float()[:, None], 3, 1, 1)[:, 0] > 0


def _label_edges(labels: Tensor) -> Tensor:
    """(B, S, S) labels -> bool boundaries: a pixel whose right or lower neighbour has another label."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    edge[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, :-1, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    return edge


def _image_edges(x: Tensor, threshold: float) -> Tensor:
    """(B, 3, S, S) -> bool: forward-difference colour gradient (max over channels) above threshold."""
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :-1] = (x[..., 1:] - x[..., :-1]).abs()
    dy[..., :-1, :] = (x[..., 1:, :] - x[..., :-1, :]).abs()
    return (dx + dy).amax(1) > threshold


def _edge_iou(x: Tensor, label_edges: Tensor, threshold: float) -> Tensor:
    """Per-sample IoU of the image's edges and the label boundaries, both dilated by 1 px (tolerance)."""
    a, b = _dilate(_image_edges(x, threshold)), _dilate(label_edges)
    return (a & b).sum((1, 2)) / (a | b).sum((1, 2)).clamp(min=1)


def _region_colour_error(x: Tensor, labels: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per region: (B,) distance (0-255 RGB units) between x's and target's mean colour inside the region
    (NaN where the region has fewer than 2 pixels in the crop)."""
    out = {}
    for name, label in _REGIONS.items():
        m = (labels == label).float()[:, None]  # (B, 1, S, S)
        count = m.sum((1, 2, 3))
        mean_x = (x * m).sum((2, 3)) / count.clamp(min=1)[:, None]  # (B, 3)
        mean_t = (target * m).sum((2, 3)) / count.clamp(min=1)[:, None]
        err = (mean_x - mean_t).norm(dim=1) * 255
        out[name] = torch.where(count >= 2, err, torch.full_like(err, float("nan")))
    return out


def _nanmean(t: Tensor) -> float:
    return float(t[~t.isnan()].mean()) if (~t.isnan()).any() else float("nan")


def _l1(a: Tensor, b: Tensor) -> float:
    """Mean absolute pixel error in 0-255 units."""
    return float((a - b).abs().mean() * 255)


def _colour_scores(
    err_edit: dict[str, Tensor], err_none: dict[str, Tensor]
) -> tuple[dict[str, dict[str, float]], float]:
    """Colour scores of an edit. Per region (hair, skin, eye; labelled by the target's ground-truth part map,
    which is the layout donor's) the distance between mean colours, in RGB units: `colour_err_edit` (edit
    vs target) vs `colour_err_no_edit` (layout donor photo vs target: the colour change that had to happen;
    zero where both share the colour, so it is averaged only over the pairs whose colour changes by more
    than 10 units, and `colour_err_edit_unchanged` over the others). Returned with `colour_change_done` =
    1 - edit/no-edit error per region, averaged over regions: 1 = colours fully moved."""
    per_region: dict[str, dict[str, float]] = {}
    done = []
    for region in _REGIONS:
        changed = err_none[region] > 10.0  # the region's colour really differs (RGB units)
        e, z = err_edit[region][changed], err_none[region][changed]
        e, z = e[~e.isnan()], z[~e.isnan()]
        per_region[region] = {
            "pairs_changed": len(e),
            "colour_err_edit": _nanmean(e) if len(e) else float("nan"),
            "colour_err_no_edit": _nanmean(z) if len(z) else float("nan"),
        }
        if len(e):
            done.append(float((1 - e / z).mean()))
        same = ~changed & ~err_edit[region].isnan()
        per_region[region]["colour_err_edit_unchanged"] = _nanmean(err_edit[region][same])
    return per_region, sum(done) / len(done) if done else float("nan")


def _score_edit(
    codec: WorldStyleCodec,
    edit: Tensor,
    truth: list[Render],
    donor: tuple[Tensor, Tensor],
    colour_donor_labels: Tensor,
    edge_threshold: float,
) -> dict[str, Any]:
    """One edit's scores against its ground-truth photos `truth`; donor = (photo crops, reconstructions) of
    the layout donors. All errors are mean absolute pixel errors x 255 on the 32x32 crop:

    - edit_l1: edit vs target. Baselines: `layout_donor_recon_l1` (the decoded, unedited layout donor vs
      the target: what no edit scores), `layout_donor_input_l1` (the donor photo itself vs the target) and
      `target_recon_l1` (the codec's reconstruction of the target photo itself: the floor an edit can
      reach).
    - colour: per region, see `_colour_scores`.
    - shape: `edge_iou_*` is the IoU of the image's colour edges (|forward differences| summed over x and y,
      max over RGB, > edge_threshold) with the ground-truth part boundaries, both dilated 1 px. It is
      measured against the target's layout (`edge_iou_edit`, to compare with `edge_iou_target_photo`, the
      real target photo, and `edge_iou_recon`, the reconstruction of the layout donor) and against the
      colour donor's layout (`edge_iou_wrong_layout`: should stay low; the gap is how much layout moved).
      Edges depend on colour contrast too, so read the edit's IoU relative to the photo and recon rows.
    """
    donor_x, donor_recon = donor
    target = crop_photos(truth)
    target_labels = _crop_labels(truth)
    target_recon = codec.decode(codec.encode(target)).clamp(0, 1)
    per_region, done = _colour_scores(
        _region_colour_error(edit, target_labels, target),
        _region_colour_error(donor_x, target_labels, target),
    )
    target_edges = _label_edges(target_labels)
    wrong_edges = _label_edges(colour_donor_labels)

    def iou(image: Tensor, edges: Tensor) -> float:
        return float(_edge_iou(image, edges, edge_threshold).mean())

    return {
        "edit_l1": _l1(edit, target),
        "layout_donor_recon_l1": _l1(donor_recon, target),
        "layout_donor_input_l1": _l1(donor_x, target),
        "target_recon_l1": _l1(target_recon, target),
        "colour_change_done": done,
        "colour_per_region": per_region,
        "edge_iou_edit": iou(edit, target_edges),
        "edge_iou_target_photo": iou(target, target_edges),
        "edge_iou_recon": iou(donor_recon, target_edges),
        "edge_iou_wrong_layout": iou(edit, wrong_edges),
    }


def _swap_truth(
    photos: list[_Photo], identities: list[Identity], layout: list[int], colour: list[int]
) -> list[Render]:
    """The ground truth of swaps: the layout donor's shape with the colour donor's colours, photographed like
    the layout donor."""
    return [
        photos[lk].take(swap_identity(identities[lk], identities[ck]))
        for lk, ck in zip(layout, colour, strict=True)
    ]


@torch.no_grad()
def measure_edits(
    codec: WorldStyleCodec,
    identities: list[Identity] | None = None,
    *,
    seed: int = 0,
    edge_threshold: float = 0.1,
) -> dict[str, Any]:
    """Level swaps on held-out identities (default: the 100 test identities) against the renderer's truth.

    Each identity A is paired with the next one B (cyclically); A and B are reference photos with seeds
    seed + index (so their backdrops and clothes differ). For both edits the "layout donor" is the photo
    whose coarse levels are used and the "colour donor" the one whose fine levels are used:

    - fine swap A<-B: decode(mix(W_A, W_B, fine)); target = swap_identity(A, B) photographed like A.
    - coarse swap A<-B: decode(mix(W_A, W_B, coarse)) = B's coarse + A's fine; target =
      swap_identity(B, A) photographed like B (the context travels with the coarse levels).

    `recon_l1`: reconstruction error of A; `recon_edge_iou`, `photo_edge_iou`: edge IoUs of A's
    reconstruction and photo; per edit, the scores of `_score_edit`.
    """
    identities = test_identities() if identities is None else list(identities)
    if len(identities) < 2:
        raise IdgenError(f"measure_edits needs at least 2 identities, got {len(identities)}")
    codec = codec.eval()
    n = len(identities)
    photos = [_Photo(None, seed + k) for k in range(n)]
    shots = [photos[k].take(identities[k]) for k in range(n)]
    partner = [(k + 1) % n for k in range(n)]
    x = crop_photos(shots)  # (n, 3, S, S)
    labels = _crop_labels(shots)
    w = codec.encode(x)
    recon = codec.decode(w).clamp(0, 1)
    w_b = w[partner]
    results: dict[str, Any] = {
        "identities": n,
        "recon_l1": _l1(recon, x),
        "recon_edge_iou": float(_edge_iou(recon, _label_edges(labels), edge_threshold).mean()),
        "photo_edge_iou": float(_edge_iou(x, _label_edges(labels), edge_threshold).mean()),
    }
    # (edit, levels taken from B, layout donors, colour donors): the fine swap keeps A's layout and context.
    edits = (
        ("fine_swap", "fine", list(range(n)), partner),
        ("coarse_swap", "coarse", partner, list(range(n))),
    )
    for name, levels, layout, colour in edits:
        edit = codec.decode(codec.mix(w, w_b, levels)).clamp(0, 1)
        truth = _swap_truth(photos, identities, layout, colour)
        donor = (x[layout], recon[layout])
        results[name] = _score_edit(codec, edit, truth, donor, labels[colour], edge_threshold)
    return results
