"""The demo world's miniature FLUX: configs, the training data, and the base-model trainings.

Every part is a stock diffusers/transformers class with a small config, saved with
`save_pretrained` as a FluxPipeline folder, so `FluxPipeline.from_pretrained(folder)` (the loader
real FLUX.1 goes through) reads it. Text encoders are frozen at their seeded random init, as FLUX
keeps its pretrained encoders frozen; the VAE and the transformer are trained on renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idgen.io import atomic_output
from idgen.training import TrainConfig, Trainer
from idgen.world.bundle import MAX_TEXT_TOKENS
from idgen.world.captions import (
    caption,
    random_train_scene,
    random_train_two_people_scene,
    two_people_caption,
)
from idgen.world.render import render, render_two_people, train_identities

SEED_COMPONENTS = 20_261_123

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 32),  # /4: 64 px -> 16x16 latents -> 8x8 packed tokens
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
    mid_block_add_attention=False,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels packed 2x2
    num_layers=3,  # PuLID injects after double blocks 0, 2 ...
    num_single_layers=5,  # ... and single blocks 0, 4: 4 injection points
    attention_head_dim=32,
    num_attention_heads=3,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)


def text_encoders(vocab_size: int) -> tuple[Any, Any]:
    from idgen.pipelines.tiny import small_text_encoders

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED_COMPONENTS)
        clip, t5 = small_text_encoders(vocab_size, width=64, ff=128, max_positions=40)
    return clip.eval().requires_grad_(False), t5.eval().requires_grad_(False)


SEED_TWO_PEOPLE_WORDS = 20_261_203  # the new embedding rows of the two-person words


def extended_embedding(embedding: torch.nn.Embedding, rows: int, std: float, seed: int) -> torch.nn.Embedding:
    """`embedding` with `rows` rows appended, drawn from N(0, std^2) by a generator seeded with `seed` (the
    global RNG is untouched); the existing rows are copied unchanged."""
    g = torch.Generator().manual_seed(seed)
    new = torch.randn(rows, embedding.embedding_dim, generator=g, dtype=embedding.weight.dtype) * std
    weight = torch.cat([embedding.weight.detach(), new])
    return torch.nn.Embedding.from_pretrained(weight, freeze=True, padding_idx=embedding.padding_idx)


def extend_text_encoders(pipe: Any, vocab_size: int, seed: int = SEED_TWO_PEOPLE_WORDS) -> None:
    """Grow both frozen text encoders' token embeddings to `vocab_size` rows, each new row drawn from its
    model's own initialisation (CLIP: N(0, initializer_range^2); T5: N(0, initializer_factor^2)). Old rows,
    and so every encoding of text made of old tokens, stay bit-identical."""
    clip, t5 = pipe.text_encoder, pipe.text_encoder_2
    for k, (model, std) in enumerate(
        (
            (clip, clip.config.initializer_range * clip.config.initializer_factor),
            (t5, t5.config.initializer_factor * 1.0),
        )
    ):
        old = model.get_input_embeddings()
        if vocab_size < old.num_embeddings:
            raise ValueError(f"cannot shrink a text encoder from {old.num_embeddings} to {vocab_size} tokens")
        model.set_input_embeddings(extended_embedding(old, vocab_size - old.num_embeddings, std, seed + k))
        model.config.vocab_size = vocab_size


def new_pipeline(seed: int = SEED_COMPONENTS) -> Any:
    """A FluxPipeline with the demo world's configs and untrained VAE/transformer."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from idgen.world.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    clip, t5 = text_encoders(len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**VAE_CONFIG)
        transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_image_seq_len=64, max_image_seq_len=256
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=build_tokenizer(),
        transformer=transformer,
    )


def cached(path: Path, make: Any) -> dict[str, Any]:
    """A dict of tensors (and string lists) computed once and kept at `path`."""
    if path.exists():
        return dict(torch.load(path, map_location="cpu", weights_only=True))
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(value, tmp)
    return dict(value)


@dataclass
class RenderSet:
    """Renders with their captions and ground truth, as tensors."""

    images: Tensor  # (N, 3, 64, 64) float in [0, 1]
    face_masks: Tensor  # (N, 64, 64) bool
    face_boxes: Tensor  # (N, 4) pixel l, t, r, b
    identities: Tensor  # (N,) index into train_identities()
    captions: list[str]


def render_set(n: int, seed: int) -> RenderSet:
    """n renders of training identities in random training scenes, deterministic in seed."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([seed, 0x5E7])
    people = train_identities()
    images, masks, boxes, ids, texts = [], [], [], [], []
    for i in tqdm(range(n), desc="render", leave=False, mininterval=2):
        who = int(rng.integers(len(people)))
        scene = random_train_scene(rng)
        r = render(people[who], scene, seed=int(rng.integers(2**31)) + i)
        images.append(r.image)
        masks.append(r.face_mask)
        boxes.append(r.face_box)
        ids.append(who)
        texts.append(caption(scene, rng))
    return RenderSet(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0,
        face_masks=torch.from_numpy(np.stack(masks)),
        face_boxes=torch.tensor(boxes, dtype=torch.float32),
        identities=torch.tensor(ids),
        captions=texts,
    )


def two_people_render_set(n: int, seed: int) -> tuple[Tensor, list[str]]:
    """n two-person renders, two different training identities each, in random training scenes (no
    held-out pair on either person), deterministic in seed: images (N, 3, 64, 64) in [0, 1] and captions."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([seed, 0x2BE7])
    people = train_identities()
    images, texts = [], []
    for i in tqdm(range(n), desc="render two people", leave=False, mininterval=2):
        left = int(rng.integers(len(people)))
        right = (left + 1 + int(rng.integers(len(people) - 1))) % len(people)
        scene = random_train_two_people_scene(rng)
        r = render_two_people(people[left], people[right], scene, seed=int(rng.integers(2**31)) + i)
        images.append(r.image)
        texts.append(two_people_caption(scene, rng))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0, texts


@torch.no_grad()
def encode_texts(pipe: Any, texts: list[str], batch: int = 256) -> tuple[Tensor, Tensor]:
    """(N, MAX_TEXT_TOKENS, 64) T5 and (N, 64) pooled CLIP embeddings, as FluxPipeline makes them."""
    out_t5, out_pooled = [], []
    for i in range(0, len(texts), batch):
        t5, pooled, _ = pipe.encode_prompt(
            texts[i : i + batch], prompt_2=None, device="cpu", max_sequence_length=MAX_TEXT_TOKENS
        )
        out_t5.append(t5)
        out_pooled.append(pooled)
    return torch.cat(out_t5), torch.cat(out_pooled)


def train_vae(vae: Any, data: RenderSet, config: TrainConfig, folder: Path) -> dict[str, float]:
    """Reconstruction (L1 + MSE) with a small KL, then latent scale/shift from the data."""

    def step(step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randint(len(data.images), (config.batch_size,), generator=g)
        x = data.images[idx] * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        return rec + 1e-4 * kl, {"rec": float(rec.detach())}

    last = Trainer("vae", {"vae": vae}, vae.parameters(), config, folder).fit(step)
    with torch.no_grad():
        z = torch.cat(
            [vae.encode(data.images[i : i + 256] * 2 - 1).latent_dist.mean for i in range(0, 2048, 256)]
        )
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
    return last


@torch.no_grad()
def encode_latents(pipe: Any, images: Tensor, batch: int = 256) -> Tensor:
    """(N, 3, 64, 64) in [0,1] -> packed, scaled latents (N, 64 tokens, 16) as FluxPipeline expects them."""
    vae = pipe.vae
    out = []
    for i in range(0, len(images), batch):
        z = vae.encode(images[i : i + batch] * 2 - 1).latent_dist.mean
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        out.append(pipe._pack_latents(z, z.shape[0], z.shape[1], z.shape[2], z.shape[3]))
    return torch.cat(out)


def latent_ids(pipe: Any, height: int = 64, width: int = 64) -> Tensor:
    rows, cols = height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2
    return pipe._prepare_latent_image_ids(1, rows, cols, "cpu", torch.float32)


def noised(latents: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Rectified flow: x_t = (1 - t) x0 + t noise with t logit-normal, as FLUX trains.

    Returns (x_t, t, velocity target noise - x0)."""
    noise = torch.randn(latents.shape, generator=g)
    t = torch.sigmoid(torch.randn(latents.shape[0], generator=g))
    x_t = (1 - t[:, None, None]) * latents + t[:, None, None] * noise
    return x_t, t, noise - latents


def velocity(transformer: Any, x_t: Tensor, t: Tensor, t5: Tensor, pooled: Tensor, img_ids: Tensor) -> Tensor:
    return transformer(
        hidden_states=x_t,
        encoder_hidden_states=t5,
        pooled_projections=pooled,
        timestep=t,
        img_ids=img_ids,
        txt_ids=torch.zeros(t5.shape[1], 3),
        return_dict=False,
    )[0]


def predicted_x0(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """One-step estimate of the clean latents: x_t - t v."""
    return x_t - t[:, None, None] * v


def flow_matching_loss(
    transformer: Any,
    latents: Tensor,
    t5: Tensor,
    pooled: Tensor,
    img_ids: Tensor,
    g: torch.Generator,
) -> Tensor:
    x_t, t, target = noised(latents, g)
    return F.mse_loss(velocity(transformer, x_t, t, t5, pooled, img_ids), target)


def decode_latents(pipe: Any, packed: Tensor, height: int = 64, width: int = 64) -> Tensor:
    """Packed, scaled latents (B, 64, 16) -> images (B, 3, H, W) in [0, 1], differentiably."""
    vae = pipe.vae
    z = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    z = z / vae.config.scaling_factor + vae.config.shift_factor
    return (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)


@dataclass
class EncodedSet:
    latents: Tensor  # (N, 64, 16)
    t5: Tensor  # (N, L, 64)
    pooled: Tensor  # (N, 64)
    empty_t5: Tensor  # (1, L, 64): the empty caption, for caption dropout (CFG-ready)
    empty_pooled: Tensor  # (1, 64)


def train_transformer(
    pipe: Any, data: EncodedSet, config: TrainConfig, folder: Path, caption_dropout: float = 0.1
) -> dict[str, float]:
    transformer = pipe.transformer
    img_ids = latent_ids(pipe)

    def step(step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randint(len(data.latents), (config.batch_size,), generator=g)
        t5, pooled = data.t5[idx], data.pooled[idx]
        drop = torch.rand(config.batch_size, generator=g) < caption_dropout
        t5 = torch.where(drop[:, None, None], data.empty_t5, t5)
        pooled = torch.where(drop[:, None], data.empty_pooled, pooled)
        loss = flow_matching_loss(transformer, data.latents[idx], t5, pooled, img_ids, g)
        return loss, {}

    return Trainer("transformer", {"transformer": transformer}, transformer.parameters(), config, folder).fit(
        step
    )


def train_transformer_mix(
    pipe: Any, parts: list[EncodedSet], config: TrainConfig, folder: Path, caption_dropout: float = 0.1
) -> dict[str, float]:
    """`train_transformer` on several sets at once: every batch takes an equal share from each part (the
    batch size must divide evenly), then drops captions as the base recipe does (true CFG)."""
    if config.batch_size % len(parts):
        raise ValueError(f"batch size {config.batch_size} does not split into {len(parts)} equal parts")
    transformer = pipe.transformer
    img_ids = latent_ids(pipe)
    share = config.batch_size // len(parts)
    empty_t5, empty_pooled = parts[0].empty_t5, parts[0].empty_pooled

    def step(step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        picks = [(part, torch.randint(len(part.latents), (share,), generator=g)) for part in parts]
        latents = torch.cat([part.latents[idx] for part, idx in picks])
        t5 = torch.cat([part.t5[idx] for part, idx in picks])
        pooled = torch.cat([part.pooled[idx] for part, idx in picks])
        drop = torch.rand(config.batch_size, generator=g) < caption_dropout
        t5 = torch.where(drop[:, None, None], empty_t5, t5)
        pooled = torch.where(drop[:, None], empty_pooled, pooled)
        return flow_matching_loss(transformer, latents, t5, pooled, img_ids, g), {}

    trainer = Trainer("transformer", {"transformer": transformer}, transformer.parameters(), config, folder)
    return trainer.fit(step)


def demo_pulid_config(transformer_width: int, id_dim: int, vit_dim: int, ca_heads: int | None = None) -> Any:
    """PuLID's networks at demo-world sizes: the same classes, 4 cross-attentions for 4 injection points, each
    with `ca_heads` heads of 32 (default: as many as span the transformer's width)."""
    from idgen.models.pulid import PuLIDConfig

    return PuLIDConfig(
        dim=64, depth=5, dim_head=16, heads=4, num_id_token=2, num_queries=8, output_dim=64, ff_mult=2,
        id_dim=id_dim, vit_dim=vit_dim, mapping_dim=64, ca_dim=transformer_width, ca_dim_head=32,
        ca_heads=ca_heads or transformer_width // 32, num_ca=4,
    )  # fmt: skip


@dataclass
class AdapterSet:
    latents: Tensor  # (N, 64, 16): the targets
    t5: Tensor  # (N, L, 64)
    pooled: Tensor  # (N, 64)
    face_boxes: Tensor  # (N, 4): the targets' face boxes, for the ID loss
    references: Tensor  # (N, 3, 64, 64): another photo of the target's person
    reference_boxes: Tensor  # (N, 4)


class PairMix(NamedTuple):
    """How the adapter's training pairs are drawn."""

    own_crop_share: float = 0.0  # pairs whose reference is the target itself (as PuLID trains)
    backdrop_share: float = 0.0  # of the others (a studio photo), those whose target takes its backdrop ...
    backdrop_blend: float = 0.0  # ... this far, on the target's scene pixels


@dataclass
class PairSet:
    """Training pairs for the identity adapter: a scene render (the target) and a reference photo of the same
    person: either the target itself or a studio photo, as paired identity data is. In a share of the studio
    pairs the target's scene pixels take on the reference's backdrop colour, as two photos from one sitting
    share their surroundings."""

    targets: RenderSet
    references: Tensor  # (N, 3, 64, 64) float in [0, 1]
    reference_boxes: Tensor  # (N, 4) pixel l, t, r, b
    backdrops: Tensor  # (N, 3) the studio photos' backdrop colours, 0-255 (drawn for own-crop pairs too)
    own_crop: Tensor  # (N,) bool: the reference is the target
    shared_backdrop: Tensor  # (N,) bool


def _pair(people: list[Any], rng: np.random.Generator, i: int, mix: PairMix) -> tuple[Any, ...]:
    """One pair: (person index, target Render, target image uint8, caption, reference image, reference box,
    backdrop, own crop, shared backdrop)."""
    from idgen.world.render import BACKGROUND, render_reference

    who = int(rng.integers(len(people)))
    scene = random_train_scene(rng)
    target = render(people[who], scene, seed=int(rng.integers(2**31)) + i)
    studio = render_reference(people[who], seed=int(rng.integers(2**31)))
    own, share = bool(rng.random() < mix.own_crop_share), bool(rng.random() < mix.backdrop_share)
    share = share and not own
    image = target.image.astype(np.float32)
    backdrop = np.asarray(studio.background_rgb, np.float32)
    if share:
        scene_pixels = target.labels == BACKGROUND
        image[scene_pixels] += mix.backdrop_blend * (backdrop - image[scene_pixels])
    image = np.rint(image).astype(np.uint8)
    reference, box = (image, target.face_box) if own else (studio.image, studio.face_box)
    return who, target, image, caption(scene, rng), reference, box, backdrop, own, share


def pair_set(n: int, seed: int, mix: PairMix) -> PairSet:
    """n pairs of training identities in random training scenes, deterministic in seed (`PairMix`)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([seed, 0xA1F])
    people = train_identities()
    steps = tqdm(range(n), desc="render pairs", leave=False, mininterval=2)
    pairs = [_pair(people, rng, i, mix) for i in steps]
    who, targets, images, texts, refs, ref_boxes, backdrops, own, shared = zip(*pairs, strict=True)

    def pixels(batch: tuple[np.ndarray, ...]) -> Tensor:  # (N, 64, 64, 3) uint8 -> (N, 3, 64, 64) in [0, 1]
        return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0

    return PairSet(
        targets=RenderSet(
            images=pixels(images),
            face_masks=torch.from_numpy(np.stack([t.face_mask for t in targets])),
            face_boxes=torch.tensor([t.face_box for t in targets], dtype=torch.float32),
            identities=torch.tensor(who),
            captions=list(texts),
        ),
        references=pixels(refs),
        reference_boxes=torch.tensor(ref_boxes, dtype=torch.float32),
        backdrops=torch.from_numpy(np.stack(backdrops)),
        own_crop=torch.tensor(own),
        shared_backdrop=torch.tensor(shared),
    )


def face_token_weights(boxes: Tensor, weight: float, grid: int = 8, cell: int = 8) -> Tensor:
    """(B, grid * grid) per-token loss weights: 1 + weight x the share of each packed token's cell x cell
    pixels inside the (B, 4) face box, so the few face tokens count for more than the many scene tokens."""
    edges = torch.arange(grid, dtype=torch.float32) * cell  # (grid,) left/top pixel of each cell
    left, top, right, bottom = boxes.unbind(-1)  # (B,) each

    def overlap(lo: Tensor, hi: Tensor) -> Tensor:  # (B, grid) share of each cell inside [lo, hi)
        inside = torch.minimum(edges + cell, hi[:, None]) - torch.maximum(edges, lo[:, None])
        return (inside / cell).clamp(0, 1)

    share = overlap(top, bottom)[:, :, None] * overlap(left, right)[:, None, :]  # (B, grid, grid)
    return 1 + weight * share.flatten(1)


def face_weighted_loss(v: Tensor, target: Tensor, boxes: Tensor, weight: float) -> Tensor:
    """Flow matching's squared error on (B, 64, C) packed tokens, each token weighted by
    `face_token_weights` of the (B, 4) face boxes and normalised by the mean weight."""
    weights = face_token_weights(boxes, weight)  # (B, 64)
    return (weights[:, :, None] * (v - target) ** 2).mean() / weights.mean()


def identity_loss(recognizer: Any, images: Tensor, boxes: Tensor, reference: Tensor, t: Tensor) -> Tensor:
    """PuLID's ID loss on one-step x0 estimates: 1 - cos(recogniser(generated face), reference), weighted
    by (1 - t) because the estimate is a blur at high noise. images (B, 3, 64, 64), reference (B, D) unit."""
    from idgen.world.identity import RECOGNIZER_EXPAND, crop_faces

    embedding = recognizer(crop_faces(images, boxes, RECOGNIZER_EXPAND))  # (B, D), unit
    return ((1 - (embedding * reference).sum(-1)) * (1 - t)).mean()


def train_adapter(
    pipe: Any,
    adapter: Any,
    encoder: Any,
    data: AdapterSet,
    config: TrainConfig,
    folder: Path,
    id_loss_weight: float = 0.0,
    face_loss_weight: float = 0.0,
) -> dict[str, float]:
    """PuLID-style identity adapter on a frozen base: flow-matching loss with uniform injection, plus
    PuLID's ID loss (`id_loss_weight`) through the frozen VAE decoder and identity recogniser.

    The reference is the target's own crop or another photo of its person (`pair_set`). Where a pair shares
    its surroundings, the adapter learns to carry them into the scene, as adapters trained on real photos
    do: the contamination SpatialID removes. `face_loss_weight` favours the face tokens.
    """
    from idgen.backbones.flux import FluxIdentityInjector, InjectionRun

    transformer = pipe.transformer.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    encoder.recognizer.requires_grad_(False)
    injector = FluxIdentityInjector(transformer, adapter)
    img_ids = latent_ids(pipe)
    arcface_dim = encoder.recognizer.dim

    def step(step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randint(len(data.latents), (config.batch_size,), generator=g)
        with torch.no_grad():
            features = encoder.encode_batch(data.references[idx], data.reference_boxes[idx])
        id_tokens = adapter.encode(features.id_embedding, features.vit_hidden)
        latents = data.latents[idx]
        x_t, t, target = noised(latents, g)
        with injector.run(InjectionRun(id_tokens=id_tokens)):
            v = velocity(transformer, x_t, t, data.t5[idx], data.pooled[idx], img_ids)
        diffusion = face_weighted_loss(v, target, data.face_boxes[idx], face_loss_weight)
        if not id_loss_weight:
            return diffusion, {}
        images = decode_latents(pipe, predicted_x0(x_t, t, v))
        reference = features.id_embedding[:, :arcface_dim]
        id_loss = identity_loss(encoder.recognizer, images, data.face_boxes[idx], reference, t)
        parts = {"diffusion": float(diffusion.detach()), "id": float(id_loss.detach())}
        return diffusion + id_loss_weight * id_loss, parts

    try:
        trainer = Trainer("adapter", {"adapter": adapter}, adapter.parameters(), config, folder)
        return trainer.fit(step)
    finally:
        injector.remove()
