"""Several identities in one call, and several photos of one identity, for any FLUX identity pipeline.

    pipe(prompt, id_images=[a, [b1, b2, b3]], boxes=[(0, 0, .5, 1), (.5, 0, 1, 1)], id_weight=[1.0, 0.8])

Each entry of id_images is one person: a photo, or a list of photos whose features a PhotoCombination
joins into one set. Identity i's early prior is centred on its box (or mask), else on the i-th of n equal
vertical strips; in the spatial mode their masks compete (ArgmaxAssignment), in the uniform mode every
residual is added (SummedResiduals).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from idgen.core.gate import MaskPolicy, SpatialMask
from idgen.core.masks import FixedMaskExtractor
from idgen.core.multi import (
    ArgmaxAssignment,
    Box,
    BoxRegion,
    CompetingMasks,
    MaskRegion,
    PriorLayout,
    Region,
    SummedResiduals,
    bounded_attention,
    separated_boxes,
)
from idgen.errors import IdgenError, NoFaceError
from idgen.identity.base import IdentityEncoder, IdentityFeatures
from idgen.pipelines.base import PhotoInput, encode_photo
from idgen.pipelines.names import (
    DEFAULT_PHOTO_COMBINATION,
    NEGATIVE_IDENTITIES,
    OTHERS_NEGATIVE_IDENTITY,
    PULID_NEGATIVE_IDENTITY,
    SPATIAL,
    UNIFORM,
)

MIN_TOKENS_PER_IDENTITY = 4  # a 2x2-token face (32x32 pixels on FLUX): fewer cannot hold a face
MAX_IDENTITIES = 8


class PhotoCombination(Protocol):
    """Several photos' features of one person (each one row) -> one row of features."""

    def __call__(self, features: Sequence[IdentityFeatures]) -> IdentityFeatures: ...


def _mean(rows: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(rows)).mean(dim=0)


@dataclass(frozen=True)
class MeanEmbeddingConcatTokens:
    """Average the ID embeddings (ArcFace ; CLIP class token); concatenate each ViT scale's tokens along the
    token axis, so IDFormer's perceiver reads every photo's features: (1, P * L, vit_dim) per scale."""

    def __call__(self, features: Sequence[IdentityFeatures]) -> IdentityFeatures:
        return IdentityFeatures(
            id_embedding=_mean([f.id_embedding for f in features]),
            vit_hidden=[
                torch.cat(scale, dim=1) for scale in zip(*(f.vit_hidden for f in features), strict=True)
            ],
        )


@dataclass(frozen=True)
class MeanAll:
    """Average the ID embeddings and, token by token, each ViT scale: (1, L, vit_dim) per scale."""

    def __call__(self, features: Sequence[IdentityFeatures]) -> IdentityFeatures:
        return IdentityFeatures(
            id_embedding=_mean([f.id_embedding for f in features]),
            vit_hidden=[_mean(scale) for scale in zip(*(f.vit_hidden for f in features), strict=True)],
        )


COMBINATIONS: dict[str, PhotoCombination] = {
    "mean-embedding-concat-tokens": MeanEmbeddingConcatTokens(),
    "mean-all": MeanAll(),
}
DEFAULT_COMBINATION = DEFAULT_PHOTO_COMBINATION  # chosen on the demo world's validation split


def combine_photos(features: Sequence[IdentityFeatures], rule: PhotoCombination) -> IdentityFeatures:
    """One photo's features as they are; several joined by `rule`. Each must be one row."""
    for f in features:
        if f.batch_size != 1:
            raise IdgenError(f"each photo's features must be one row, got {f.batch_size}")
    if len(features) == 1:
        return features[0]
    return rule(features)


def _photos(entry: Any) -> list[Any]:
    return list(entry) if isinstance(entry, (list, tuple)) else [entry]


def encode_person(
    encoder: IdentityEncoder, photos: Sequence[PhotoInput], person: int
) -> list[IdentityFeatures]:
    """Each photo's features; a photo without a face is skipped with a warning while others remain."""
    found, missing = [], []
    for photo in photos:
        try:
            found.append(encode_photo(encoder, photo))
        except NoFaceError as e:
            missing.append(str(e))
    if not found:
        raise NoFaceError(f"identity {person + 1}: no face in any of its {len(photos)} photos ({missing[0]})")
    for message in missing:
        warnings.warn(f"identity {person + 1}: photo skipped: {message}", stacklevel=3)
    return found


def identity_features(
    encoder: IdentityEncoder,
    id_images: Sequence[Any] | None,
    id_features: Sequence[Any] | None,
    rule: PhotoCombination,
) -> list[IdentityFeatures]:
    """One row of features per identity, from photos (id_images) or precomputed features (id_features);
    an entry may be a list (several photos of that person)."""
    if id_features is not None:
        return [combine_photos(_photos(entry), rule) for entry in id_features]
    if id_images is None:
        raise IdgenError("several identities need id_images or id_features")
    return [combine_photos(encode_person(encoder, _photos(e), i), rule) for i, e in enumerate(id_images)]


def identity_weights(id_weight: float | Sequence[float], count: int) -> tuple[float, ...]:
    """One weight for every identity, or one each."""
    if isinstance(id_weight, (int, float)):
        weights = (float(id_weight),) * count
    else:
        weights = tuple(float(w) for w in id_weight)
    if len(weights) != count:
        raise IdgenError(f"{len(weights)} id weights for {count} identities")
    if any(not 0 <= w < math.inf for w in weights):  # NaN fails both comparisons
        raise IdgenError(f"id_weight must be >= 0 and finite for every identity, got {list(weights)}")
    return weights


def scalar_weight(id_weight: float | Sequence[float]) -> float:
    """The weight a single-identity check sees: the weight itself, or 0 for a list (checked per identity)."""
    return float(id_weight) if isinstance(id_weight, (int, float)) else 0.0


def several_identities(id_images: Any, id_features: Any, id_weight: Any, boxes: Any, masks: Any) -> bool:
    """Whether a call takes the several-identities path (any of its arguments is given as a list)."""
    listed = isinstance(id_features, (list, tuple)) or not isinstance(id_weight, (int, float))
    return id_images is not None or listed or boxes is not None or masks is not None


def check_boxes(boxes: Sequence[Any], count: int) -> list[Box]:
    """Boxes as float tuples: one per identity, inside [0, 1], left < right and top < bottom, no overlap."""
    if len(boxes) != count:
        raise IdgenError(f"got {len(boxes)} boxes for {count} identities; give one box per identity")
    checked = [_check_box(i, box) for i, box in enumerate(boxes)]
    for i in range(count):
        for j in range(i + 1, count):
            if _overlap(checked[i], checked[j]) > 0:
                raise IdgenError(
                    f"boxes {i + 1} and {j + 1} overlap; identity boxes may touch but not overlap"
                )
    return checked


def _check_box(index: int, box: Any) -> Box:
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not all(v == v for v in values):
        raise IdgenError(f"box {index + 1} must be four numbers (left, top, right, bottom), got {tuple(box)}")
    left, top, right, bottom = values
    if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
        raise IdgenError(
            f"box {index + 1} {values} must satisfy 0 <= left < right <= 1 and 0 <= top < bottom <= 1"
        )
    return left, top, right, bottom


def _overlap(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def check_capacity(count: int, grid: tuple[int, int], boxes: Sequence[Box] | None) -> None:
    """Each identity needs MIN_TOKENS_PER_IDENTITY image tokens, and each box at least one token."""
    rows, cols = grid
    if count > MAX_IDENTITIES:
        raise IdgenError(f"at most {MAX_IDENTITIES} identities per image, got {count}")
    if count * MIN_TOKENS_PER_IDENTITY > rows * cols:
        raise IdgenError(
            f"{count} identities need at least {count * MIN_TOKENS_PER_IDENTITY} image tokens "
            f"({MIN_TOKENS_PER_IDENTITY} each); a {rows}x{cols}-token image has {rows * cols}: "
            "make the image larger or use fewer identities"
        )
    for i, box in enumerate(boxes or ()):
        if not BoxRegion(box)(grid, torch.device("cpu")).any():
            raise IdgenError(f"box {i + 1} {box} covers no image token of the {rows}x{cols} token grid")


def check_masks(masks: Sequence[Any], count: int) -> list[Tensor]:
    """Masks as (h, w) float tensors in [0, 1] (pictures and paths are read: white = this identity)."""
    from idgen.pipelines.user_masks import user_mask

    if len(masks) != count:
        raise IdgenError(f"got {len(masks)} masks for {count} identities; give one mask per identity")
    checked = []
    for i, mask in enumerate(masks):
        tensor = mask.detach().float() if isinstance(mask, Tensor) else user_mask(mask)
        if tensor.dim() != 2 or not bool(((tensor >= 0) & (tensor <= 1)).all()):
            raise IdgenError(
                f"mask {i + 1} must be (h, w) with values in [0, 1], got shape {tuple(tensor.shape)}"
            )
        if not bool((tensor > 0.5).any()):
            raise IdgenError(f"mask {i + 1} is black everywhere")
        checked.append(tensor)
    return checked


def competing_masks(
    mode: str, policy: MaskPolicy, count: int, boxes: Sequence[Box] | None, masks: Sequence[Tensor] | None
) -> CompetingMasks:
    """Each identity's policy (a SpatialMask's prior centred on its box, mask, or strip) and the rule:
    uniform mode sums the residuals, any other mode lets the masks compete."""
    from idgen.pipelines.user_masks import mask_box

    regions: tuple[Region | None, ...] = ()
    centres: Sequence[Box | None] = separated_boxes(count) if count > 1 else [None]
    if boxes is not None:
        regions, centres = tuple(BoxRegion(b) for b in boxes), boxes
    elif masks is not None:
        regions, centres = tuple(MaskRegion(m) for m in masks), [mask_box(m) for m in masks]
    if mode == UNIFORM:
        return CompetingMasks((policy,) * count, SummedResiduals(), regions)
    policies = tuple(_centred(policy, box, inside=bool(regions)) for box in centres)
    return CompetingMasks(policies, ArgmaxAssignment(), regions, _layout(policies) if count > 1 else ())


def _layout(policies: Sequence[MaskPolicy]) -> tuple[Region, ...]:
    """Each SpatialMask's early prior as its identity's layout (none where a policy has no prior)."""
    schedulers = [p.scheduler for p in policies if isinstance(p, SpatialMask)]
    return tuple(PriorLayout(s) for s in schedulers) if len(schedulers) == len(policies) else ()


def _centred(policy: MaskPolicy, box: Box | None, inside: bool) -> MaskPolicy:
    """A SpatialMask whose early prior is centred on `box` (None: the policy as it is); `inside`: the
    identity is limited to that box (or mask), so its attention masks are computed there too."""
    if box is None or not isinstance(policy, SpatialMask):
        return policy
    scheduler = dataclasses.replace(policy.scheduler, prior_box=box)
    within = box if inside and not isinstance(policy.extractor, FixedMaskExtractor) else None
    return dataclasses.replace(policy, scheduler=scheduler, anchor=None, attention_box=within)


@dataclass(frozen=True)
class Identities:
    """A call's identities, checked: photos or features per person, and their boxes/masks and weights."""

    entries: list[Any]  # per identity: a photo, a list of photos, features, or a list of features
    given_features: bool
    weights: tuple[float, ...]
    boxes: list[Box] | None = None
    masks: list[Tensor] | None = None
    negative: str | None = None  # what each person's true-CFG negative pass takes; None: the default rule
    bounded: bool = False  # whether the people's regions bound the image's attention (bound_attention)

    @property
    def regions(self) -> list[Region]:
        """Each person's box or mask as a Region on the token grid; [] without either."""
        if self.boxes is not None:
            return [BoxRegion(b) for b in self.boxes]
        return [MaskRegion(m) for m in self.masks] if self.masks is not None else []

    @property
    def count(self) -> int:
        return len(self.entries)


def _entries(id_image: Any, id_images: Any, id_features: Any) -> list[Any]:
    """One entry per identity, from whichever argument holds them."""
    if id_images is not None and (id_image is not None or id_features is not None):
        raise IdgenError("give id_images, or id_image / id_features, not both")
    if id_images is not None:
        entries = list(id_images)
    elif id_features is not None:
        entries = list(id_features) if isinstance(id_features, (list, tuple)) else [id_features]
    else:
        entries = [] if id_image is None else [id_image]
    if not entries or any(_photos(e) == [] for e in entries):
        raise IdgenError("every identity needs at least one photo (id_images=[a, b] or [[a1, a2], b])")
    return entries


def check_identities(
    id_image: Any,
    id_images: Any,
    id_features: Any,
    id_weight: Any,
    boxes: Any,
    masks: Any,
    grid: tuple[int, int],
) -> Identities:
    """Every check of a several-identities call that needs no model, each a one-line IdgenError."""
    entries = _entries(id_image, id_images, id_features)
    given_features = id_images is None and id_features is not None
    if boxes is not None and masks is not None:
        raise IdgenError("give boxes or masks, not both")
    checked_boxes = None if boxes is None else check_boxes(boxes, len(entries))
    checked_masks = None if masks is None else check_masks(masks, len(entries))
    check_capacity(len(entries), grid, checked_boxes)
    weights = identity_weights(id_weight, len(entries))
    return Identities(entries, given_features, weights, checked_boxes, checked_masks)


def check_negative_identity(rule: str, count: int, true_cfg: bool) -> None:
    """`negative_identity` names a known rule; "others" needs two people and a negative pass (true CFG)."""
    if rule not in NEGATIVE_IDENTITIES:
        raise IdgenError(f"unknown negative_identity {rule!r} (choices: {', '.join(NEGATIVE_IDENTITIES)})")
    if rule == OTHERS_NEGATIVE_IDENTITY and count < 2:
        raise IdgenError("negative_identity 'others' needs two or more people in the image")
    if rule == OTHERS_NEGATIVE_IDENTITY and not true_cfg:
        raise IdgenError("negative_identity 'others' steers true CFG's negative pass: set true_cfg_scale > 1")


def negative_identity_rule(rule: str | None, mode: str, count: int, true_cfg: bool) -> str:
    """The negative pass a several-people call runs: the rule given, or by default "others" where two or more
    people's masks compete under true CFG (the spatial mode), and PuLID's "uncond" elsewhere. With summed
    residuals (the uniform mode) the other people's tokens would carry the same identities as the positive
    pass, so guidance would cancel every identity instead of steering each face away from the others."""
    if rule is not None:
        return rule
    competing = mode == SPATIAL and count > 1 and true_cfg
    return OTHERS_NEGATIVE_IDENTITY if competing else PULID_NEGATIVE_IDENTITY


def check_bound_attention(bounded: bool, identities: Identities | None) -> None:
    """Bounding the attention needs two or more people, each with a box or a mask."""
    if not bounded:
        return
    if identities is None or identities.count < 2:
        raise IdgenError("bound_attention needs two or more people in the image")
    if not identities.regions:
        raise IdgenError("bound_attention needs each person's box or mask (boxes=... or masks=...)")


def bounded_attention_kwargs(
    regions: Sequence[Region], grid: tuple[int, int], text_tokens: int, device: torch.device
) -> dict[str, Tensor]:
    """FLUX's `joint_attention_kwargs` that keep each person's image tokens from attending to another's."""
    return {"attention_mask": bounded_attention(regions, grid, text_tokens, device)}


def negative_id_tokens(tokens: Sequence[Tensor], uncond: Sequence[Tensor], rule: str) -> Tensor:
    """The negative pass's identity rows, identity-major as `tokens` (n x (B, K, dim)): PuLID's uncond tokens
    ("uncond"), or the next person's own tokens ("others": for two people, each other's), so that true CFG
    pushes each face towards its own reference and away from the other's."""
    return torch.cat(list(uncond) if rule == PULID_NEGATIVE_IDENTITY else [*tokens[1:], *tokens[:1]])


def competing_run(
    pipe: Any,
    identities: Identities,
    mode: str,
    policy: MaskPolicy,
    batch: int,
    true_cfg: bool,
    **settings: Any,
) -> Any:
    """The InjectionRun of a several-identities call: each identity's tokens (n * B rows, identity-major)."""
    from idgen.backbones.flux import encode_id_tokens
    from idgen.backbones.run import InjectionRun

    combine = settings.pop("combine", None) or COMBINATIONS[DEFAULT_COMBINATION]
    if identities.given_features:
        features = identity_features(pipe.encoder, None, identities.entries, combine)
    else:
        features = identity_features(pipe.encoder, identities.entries, None, combine)
    encoded = [encode_id_tokens(pipe.adapter, f, with_uncond=true_cfg) for f in features]
    rows = [t.expand(batch, -1, -1) for t, _ in encoded]  # n x (B, K, dim)
    tokens = torch.cat(rows)  # (n * B, K, dim)
    uncond = None
    if true_cfg:  # encode_id_tokens gave each identity its uncond tokens too
        blanks = [cast(Tensor, u).expand(batch, -1, -1) for _, u in encoded]
        rule = negative_identity_rule(identities.negative, mode, identities.count, true_cfg)
        uncond = negative_id_tokens(rows, blanks, rule)
    competition = competing_masks(mode, policy, identities.count, identities.boxes, identities.masks)
    return InjectionRun(
        id_tokens=tokens, uncond_id_tokens=uncond, id_weight=max(identities.weights),
        id_weights=identities.weights, competition=competition, policy=policy, **settings,
    )  # fmt: skip
