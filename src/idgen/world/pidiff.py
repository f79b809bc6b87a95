"""PIDiff in the demo world: a W+ identity branch on the demo FLUX, trained with the identity-tailored
losses (`idgen.core.losses`) on the frozen base, reading identity from the demo world's W+-like space.

Only the branch trains (mapping F_w + the residual cross-attentions); the transformer, VAE, text
encoders and the W+ encoder stay frozen. The reference is the target's own face crop. Training follows
the W+ adapter's two stages: stage I aligns W+ with the denoiser (F_w and the projections, the denoising
loss alone, face tokens weighted up because a demo face covers a few of 64 tokens where the W+ adapter's
stage I trains on face crops); stage II freezes F_w and adds PIDiff's disentanglement and preservation
terms. The recipe adds PuLID's ID loss to both stages (`BranchStage.id_loss_weight`, `WITH_ID_TERM`): with
PIDiff's losses alone (`ALIGN`, `TAILOR`) the branch's FaceSim margin is about three-fifths as large.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

from idgen.core.losses import IdentityLossWeights, face_mask_on_grid, identity_tailored_loss, perturb_codes
from idgen.identity.base import IdentityFeatures
from idgen.training import TrainConfig, Trainer
from idgen.world.generator import cached, latent_ids, noised, velocity

EncodeWPlus = Callable[[Tensor, Tensor], Tensor]  # images (B, 3, 64, 64) in [0, 1], boxes (B, 4) -> (B, L, D)


@dataclass
class WPlusSet:
    latents: Tensor  # (N, 64, 16) packed latents
    t5: Tensor  # (N, L, 64)
    pooled: Tensor  # (N, 64)
    images: Tensor  # (N, 3, 64, 64)
    face_boxes: Tensor  # (N, 4)
    face_masks: Tensor  # (N, 64, 64) bool


def demo_wplus_flux_config(
    transformer_width: int, heads: int, num_layers: int, w_dim: int, num_ca: int
) -> Any:
    """The W+ branch at demo sizes: the code's levels split into 4 groups, coarse to fine."""
    from idgen.models.wplus_flux import WPlusFluxConfig

    edges = [round(i * num_layers / 4) for i in range(5)]
    groups = tuple((edges[i], edges[i + 1]) for i in range(4) if edges[i + 1] > edges[i])
    return WPlusFluxConfig(num_layers, w_dim, groups, transformer_width, heads, num_ca)


@dataclass
class IdentityTerm:
    """PuLID's ID loss as an extra term of the W+ branch's training, not one of PIDiff's losses: the one-step
    x0 estimate, decoded by the frozen VAE, scored by the generator-side recogniser against the reference."""

    recognizer: Any  # world.identity.WorldFaceRecognizer, frozen

    def __call__(
        self, pipe: Any, x_t: Tensor, t: Tensor, pred: Tensor, images: Tensor, boxes: Tensor
    ) -> Tensor:
        from idgen.world.generator import decode_latents, identity_loss, predicted_x0
        from idgen.world.identity import RECOGNIZER_EXPAND, crop_faces

        with torch.no_grad():
            reference = self.recognizer(crop_faces(images, boxes, RECOGNIZER_EXPAND))
        generated = decode_latents(pipe, predicted_x0(x_t, t, pred))
        return identity_loss(self.recognizer, generated, boxes, reference, t)


class BranchStage(NamedTuple):
    """One stage of the W+ branch's training: what trains, and with which losses. The W+ adapter trains in
    two: stage I aligns W+ with the denoiser (F_w and the projections, the denoising loss alone); stage II
    keeps F_w frozen and trains the projections with the disentanglement and preservation terms."""

    train: TrainConfig
    weights: IdentityLossWeights = IdentityLossWeights()  # lambda_d, lambda_p; both 0: denoising alone
    mapping: bool = True  # F_w trains too; False: the identity cross-attentions alone
    face_loss_weight: float = 0.0  # face tokens count 1 + this in the denoising term
    id_loss_weight: float = 0.0  # PuLID's ID loss beside PIDiff's losses (IdentityTerm); 0: PIDiff's alone


@dataclass
class BranchStep:
    """One training step of a stage: e(w), and e(w~) and e(0) when a PIDiff term needs them, then the
    stage's losses on a batch drawn by the step's generator."""

    pipe: Any
    branch: Any
    injector: Any  # backbones.flux.FluxIdentityInjector on the frozen transformer
    encode_wplus: EncodeWPlus
    data: WPlusSet
    stage: BranchStage
    identity_term: IdentityTerm | None = None

    def __post_init__(self) -> None:
        self.img_ids = latent_ids(self.pipe)  # the same for every step

    def predict(self, code: Tensor | None, x_t: Tensor, t: Tensor, idx: Tensor) -> Tensor:
        from idgen.backbones.flux import InjectionRun

        d, transformer = self.data, self.pipe.transformer
        if code is None:
            return velocity(transformer, x_t, t, d.t5[idx], d.pooled[idx], self.img_ids)
        with self.injector.run(InjectionRun(id_tokens=self.branch.encode(code.flatten(1)))):
            return velocity(transformer, x_t, t, d.t5[idx], d.pooled[idx], self.img_ids)

    def __call__(self, step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        from idgen.world.generator import face_token_weights

        d, stage = self.data, self.stage
        rows = int(d.latents.shape[1] ** 0.5)
        idx = torch.randint(len(d.latents), (stage.train.batch_size,), generator=g)
        with torch.no_grad():
            w = self.encode_wplus(d.images[idx], d.face_boxes[idx])  # (B, L, D)
        w_perturbed = perturb_codes(w, g)
        mask = face_mask_on_grid(d.face_masks[idx], rows, rows)  # (B, 64, 1)
        x_t, t, target = noised(d.latents[idx], g)
        pred = self.predict(w, x_t, t, idx)
        with torch.no_grad():  # without either PIDiff term, e(w~) and e(0) are not needed
            tailored = bool(stage.weights.disentangle or stage.weights.preserve)
            pred_perturbed = self.predict(w_perturbed, x_t, t, idx) if tailored else pred.detach()
            pred_base = self.predict(None, x_t, t, idx) if tailored else pred.detach()
        boxes = d.face_boxes[idx]
        token_weights = (
            face_token_weights(boxes, stage.face_loss_weight, rows) if stage.face_loss_weight else None
        )
        loss, parts = identity_tailored_loss(
            pred, target, pred_perturbed, pred_base, mask, stage.weights, token_weights
        )
        if self.identity_term is None or not stage.id_loss_weight:
            return loss, parts
        term = self.identity_term(self.pipe, x_t, t, pred, d.images[idx], boxes)
        return loss + stage.id_loss_weight * term, parts | {"id": float(term.detach())}


def train_wplus_branch(
    pipe: Any,
    branch: Any,
    encode_wplus: EncodeWPlus,
    data: WPlusSet,
    stage: BranchStage,
    folder: Path,
    identity_term: IdentityTerm | None = None,
) -> dict[str, float]:
    """One stage of the W+ branch's identity-tailored fine-tuning on the frozen demo FLUX (flow
    matching), with `identity_term` (weighted by `stage.id_loss_weight`) added when given."""
    from idgen.backbones.flux import FluxIdentityInjector

    injector = FluxIdentityInjector(pipe.transformer.requires_grad_(False), branch)
    branch.requires_grad_(True)
    branch.w_proj.requires_grad_(stage.mapping)
    step = BranchStep(pipe, branch, injector, encode_wplus, data, stage, identity_term)
    try:
        parameters = [p for p in branch.parameters() if p.requires_grad]
        trainer = Trainer(
            f"pidiff branch: {folder.name}", {"branch": branch}, parameters, stage.train, folder
        )
        return trainer.fit(step)
    finally:
        injector.remove()
        branch.requires_grad_(True)


class WorldWPlusEncoder:
    """IdentityEncoder of the demo world's PIDiff: the world face detector finds the face, the style codec
    maps its crop to W (L, D); W travels flattened in IdentityFeatures.id_embedding (no ViT features)."""

    def __init__(self, detector: Any, codec: Any, *, require_face: bool = True) -> None:
        self.detector, self.codec = detector.eval(), codec.eval()
        self.require_face = require_face
        self.id_dim = codec.num_levels * codec.w_dim  # W, flattened
        self.vit_dim = 0  # no ViT features

    @classmethod
    def from_pretrained(
        cls, identity_folder: Path, codec_folder: Path, *, require_face: bool = True
    ) -> WorldWPlusEncoder:
        from idgen.world.identity import WorldFaceDetector
        from idgen.world.wplus import WorldStyleCodec

        detector = WorldFaceDetector.from_pretrained(identity_folder / "detector")
        return cls(detector, WorldStyleCodec.from_pretrained(codec_folder), require_face=require_face)

    @torch.no_grad()
    def encode_wplus(self, images: Tensor, boxes: Tensor) -> Tensor:
        """(B, 3, 64, 64) in [0, 1] at (B, 4) pixel face boxes -> W (B, L, D)."""
        from idgen.world.identity import crop_faces
        from idgen.world.wplus import CROP_EXPAND

        return self.codec.encode(crop_faces(images, boxes, CROP_EXPAND, self.codec.size))

    def encode_batch(self, images: Tensor, boxes: Tensor) -> IdentityFeatures:
        return IdentityFeatures(id_embedding=self.encode_wplus(images, boxes).flatten(1), vit_hidden=[])

    def __call__(self, image: Image.Image, *, what: str = "image") -> IdentityFeatures:
        import warnings

        from idgen.errors import NoFaceError
        from idgen.identity.base import FaceBox
        from idgen.world.identity import DEFAULT_FACE_BOX, IMAGE_SIZE, pil_to_tensor

        w, h = image.size
        x = pil_to_tensor(image)
        boxes, probs = self.detector.detect(x)
        if probs[0] < 0.5:
            if self.require_face:
                raise NoFaceError(f"no face found in {what}")
            warnings.warn(f"no face found in {what}; using a centred default face box", stacklevel=2)
            boxes = torch.tensor([DEFAULT_FACE_BOX])
        features = self.encode_batch(x, boxes)
        left, top, right, bottom = boxes[0].tolist()
        sx, sy = w / IMAGE_SIZE, h / IMAGE_SIZE
        features.face_box = FaceBox(left * sx, top * sy, right * sx, bottom * sy, float(probs[0]))
        return features


ALIGN = BranchStage(
    TrainConfig(
        steps=1600, lr=2e-3, batch_size=24, checkpoint_every=100, warmup=50, seed=15, weight_decay=0.01
    ),
    IdentityLossWeights(disentangle=0.0, preserve=0.0),
    mapping=True,
    face_loss_weight=4.0,
)
TAILOR = BranchStage(
    TrainConfig(
        steps=600, lr=2e-4, batch_size=24, checkpoint_every=100, warmup=20, seed=17, weight_decay=0.01
    ),
    IdentityLossWeights(),
    mapping=False,
    face_loss_weight=4.0,
)


ID_TERM_WEIGHT = 1.0  # PuLID's ID loss beside PIDiff's, in both stages (the PuLID adapter's weight)
WITH_ID_TERM = (ALIGN._replace(id_loss_weight=ID_TERM_WEIGHT), TAILOR._replace(id_loss_weight=ID_TERM_WEIGHT))


class BranchRecipe(NamedTuple):
    renders: int = 8192
    stages: tuple[BranchStage, ...] = WITH_ID_TERM  # stage I, then stage II
    init_seed: int = 16
    data_seed: int = 2  # the PuLID adapter's (`AdapterRecipe.data_seed`), here as plain renders

    def reseeded(self, k: int) -> BranchRecipe:
        """The same recipe with its k-th other seeds (renders + k, as the adapter's pairs; initialisation
        and each stage's training + 10 k); k = 0 is this one."""
        return self._replace(
            stages=tuple(s._replace(train=s.train.reseeded(k)) for s in self.stages),
            init_seed=self.init_seed + 10 * k,
            data_seed=self.data_seed + k,
        )


QUICK_BRANCH = BranchRecipe(
    renders=32,
    stages=tuple(
        s._replace(train=TrainConfig(steps=3, batch_size=4, checkpoint_every=2, seed=s.train.seed))
        for s in WITH_ID_TERM
    ),
)


def _identity_term(pipe: Any, assets: Path) -> IdentityTerm:
    """The ID term with the generator-side recogniser in `assets/identity` (never the evaluator's)."""
    from idgen.world.identity import WorldFaceRecognizer

    recognizer = WorldFaceRecognizer.from_pretrained(assets / "identity" / "recognizer")
    pipe.vae.requires_grad_(False)
    return IdentityTerm(recognizer.eval().requires_grad_(False))


def train_pidiff_branch(
    work: Path, assets: Path, quick: bool = False, recipe: BranchRecipe | None = None
) -> dict[str, float]:
    """The W+ branch on the frozen base in `assets/flux`, identity from `assets/wplus` -> `assets/pidiff`."""
    from diffusers import FluxPipeline

    from idgen.backbones.flux import injection_points
    from idgen.models.wplus_flux import WPlusFluxAdapter, save_wplus_flux_adapter
    from idgen.world import generator as gen

    recipe = recipe or (QUICK_BRANCH if quick else BranchRecipe())
    pipe = FluxPipeline.from_pretrained(assets / "flux")
    encoder = WorldWPlusEncoder.from_pretrained(assets / "identity", assets / "wplus")

    def renders() -> dict[str, Any]:
        data = gen.render_set(recipe.renders, seed=recipe.data_seed)  # with the face masks
        t5, pooled = gen.encode_texts(pipe, data.captions)
        return {
            "latents": gen.encode_latents(pipe, data.images),
            "t5": t5,
            "pooled": pooled,
            "images": data.images,
            "face_boxes": data.face_boxes,
            "face_masks": data.face_masks,
        }

    data = WPlusSet(**cached(work / "pidiff-data.pt", renders))  # a work folder holds one seed's runs
    t = pipe.transformer
    points = injection_points(len(t.transformer_blocks), len(t.single_transformer_blocks))
    codec = encoder.codec
    config = demo_wplus_flux_config(
        t.inner_dim, t.config.num_attention_heads, codec.num_levels, codec.w_dim, len(points)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.init_seed)
        branch = WPlusFluxAdapter(config)
    branch.init_from_transformer(t, points)
    needs_term = any(stage.id_loss_weight for stage in recipe.stages)
    term = _identity_term(pipe, assets) if needs_term else None
    report: dict[str, float] = {}
    for i, stage in enumerate(recipe.stages, start=1):
        folder = work / f"pidiff-stage-{i}"
        report = train_wplus_branch(pipe, branch, encoder.encode_wplus, data, stage, folder, term)
    save_wplus_flux_adapter(branch.eval(), assets / "pidiff")
    return report


def load_pidiff_world(device: str = "cpu", assets: Path | None = None, require_face: bool = True) -> Any:
    """The demo world with the W+ branch instead of PuLID's: an IdentityFluxPipeline like `load_world`'s
    (a photo with no face is refused unless `require_face=False`)."""
    from diffusers import FluxPipeline

    from idgen.models.wplus_flux import load_wplus_flux_adapter
    from idgen.pipelines.pulid_flux import IdentityFluxPipeline
    from idgen.world.bundle import ASSETS, WORLD_DEFAULTS, WORLD_SPATIAL, verify
    from idgen.world.tokenizer import load_tokenizers

    assets = assets or ASSETS
    verify(assets, ("flux", "pidiff", "identity", "wplus"))
    flux = FluxPipeline.from_pretrained(assets / "flux", **load_tokenizers(assets / "flux")).to(device)
    flux.set_progress_bar_config(disable=True)
    branch = load_wplus_flux_adapter(assets / "pidiff", device=device)
    encoder = WorldWPlusEncoder.from_pretrained(
        assets / "identity", assets / "wplus", require_face=require_face
    )
    return IdentityFluxPipeline(flux, branch, encoder, defaults=WORLD_DEFAULTS, spatial=WORLD_SPATIAL)


COMPARE_BRANCHES = {"pulid": "PuLID adapter", "pidiff": "PIDiff W+ branch"}  # --world-adapter name -> row


def compare_settings(adapter: str, assets: Path) -> dict[str, Any]:
    """What compare's plan keys generation on, shaped like `idgen eval`'s for the demo world: the identity
    branch and the sha256 of `assets`' MANIFEST.json (the loaders check every file against it), so a
    retrained branch or adapter is never resumed over."""
    from idgen.errors import IdgenError
    from idgen.world.bundle import MANIFEST_NAME, WORLD_DEFAULTS, plan_models

    if adapter not in COMPARE_BRANCHES:
        raise IdgenError(f"unknown identity branch {adapter!r} (known: {', '.join(COMPARE_BRANCHES)})")
    manifest = Path(assets) / MANIFEST_NAME
    if not manifest.is_file():
        raise IdgenError(f"demo-world assets have no {MANIFEST_NAME}: {manifest}")
    return {
        "protocol": None,
        "sampling": dict(WORLD_DEFAULTS),
        "explicit": [],
        "models": plan_models(adapter, Path(assets)),
        "metric_models": "demo-world evaluators",
    }


def _branch_summaries(out: Path, benchmark: str, assets: Path, methods: list[Any]) -> dict[str, Any]:
    """Each branch through the eval harness into out/<branch>; a changed plan there is refused."""
    from idgen.eval.harness import evaluate
    from idgen.eval.runner import FluxEvalGenerator
    from idgen.world.bundle import load_world
    from idgen.world.eval_plugin import builtin, world_metric_models

    loaders = {"pulid": load_world, "pidiff": load_pidiff_world}
    settings = {adapter: compare_settings(adapter, assets) for adapter in COMPARE_BRANCHES}  # validate first
    summaries = {}
    for adapter, name in COMPARE_BRANCHES.items():
        folder = out / adapter
        bench = builtin(benchmark, folder / "references")

        def generator(load: Any = loaders[adapter]) -> FluxEvalGenerator:
            return FluxEvalGenerator(load(assets=assets))

        _, summaries[name] = evaluate(
            folder, bench, methods, generator, world_metric_models, settings=settings[adapter]
        )
    return summaries


def compare(out: Path, benchmark: str = "demo", threads: int = 1, assets: Path | None = None) -> str:
    """PIDiff's W+ branch against PuLID's adapter and no identity, on the same held-out pairs and seeds,
    through the eval harness; then the style codec's level edits against the renderer's ground truth.
    `assets`: the demo world's assets folder (default: the shipped one), e.g. a retrained copy."""
    from idgen.eval.runner import Method
    from idgen.world.bundle import ASSETS
    from idgen.world.render import test_identities
    from idgen.world.wplus import WorldStyleCodec, measure_edits

    assets = Path(assets or ASSETS)
    torch.set_num_threads(threads)
    methods = [Method("uniform"), Method("spatial")]
    summaries = _branch_summaries(out, benchmark, assets, methods)
    lines = [
        "| identity | mode | FaceSim | backdrop shift (0-255) | background change (0-255) | CLIP-T |",
        "|---|---|---|---|---|---|",
    ]

    def cell(entry: dict[str, Any], key: str) -> str:
        value = entry.get(key)
        return "–" if value is None else f"{value['mean']:.3f} ± {value['ci95']:.3f}"

    first = next(iter(summaries.values()))
    assert first is not None
    none = first["methods"]["none"]
    lines.append(f"| none | – | {cell(none, 'facesim')} | 0 | 0 | {cell(none, 'clip_t')} |")
    for name, summary in summaries.items():
        assert summary is not None
        for m in methods:
            e = summary["methods"][m.name]
            lines.append(
                f"| {name} | {m.name} | {cell(e, 'facesim')} | {cell(e, 'backdrop_shift')} | "
                f"{cell(e, 'contamination_px')} | {cell(e, 'clip_t')} |"
            )
    edits = measure_edits(WorldStyleCodec.from_pretrained(assets / "wplus"), test_identities())
    lines += ["", "Style-codec level edits on the 100 held-out identities (renderer ground truth):", ""]
    lines += ["```", json.dumps(edits, indent=1, default=str), "```"]
    return "\n".join(lines)


def main() -> None:
    import argparse

    from idgen.world.eval_plugin import BUILTIN

    parser = argparse.ArgumentParser(description=compare.__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/eval/pidiff-vs-pulid"))
    parser.add_argument("--benchmark", default="demo", choices=sorted(BUILTIN))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--assets", type=Path, default=None,
                        help="the demo world's assets folder (default: the shipped one)")  # fmt: skip
    args = parser.parse_args()
    from idgen.errors import IdgenError
    from idgen.world.bundle import quiet_prompt_truncation

    quiet_prompt_truncation()
    try:
        print(compare(args.out, args.benchmark, args.threads, args.assets))
    except IdgenError as e:  # a refused plan or bad assets: one line, no traceback
        raise SystemExit(f"python -m idgen.world.pidiff: error: {e}") from None


if __name__ == "__main__":
    main()
