"""The identity adapter's training pairs: a scene render and a studio photo of the same person, a share of
them with the reference's backdrop colour on the target's scene pixels; and the face-weighted loss."""

from __future__ import annotations

import torch

from idgen.world import generator as gen


def test_face_token_weights_count_each_tokens_share_of_the_face_box() -> None:
    weights = gen.face_token_weights(torch.tensor([[8.0, 8.0, 16.0, 20.0]]), 2.0).view(8, 8)
    expected = torch.ones(8, 8)
    expected[1, 1] = 3.0  # pixels 8-16 x 8-16: all inside the box
    expected[2, 1] = 2.0  # rows 16-24: half of them above the box's bottom edge at 20
    assert torch.equal(weights, expected)
    assert torch.equal(gen.face_token_weights(torch.tensor([[8.0, 8.0, 16.0, 20.0]]), 0.0), torch.ones(1, 64))


def test_shared_backdrop_moves_only_scene_pixels_towards_the_reference_backdrop() -> None:
    plain = gen.pair_set(12, seed=3, mix=gen.PairMix(backdrop_share=0.0, backdrop_blend=0.5))
    shared = gen.pair_set(12, seed=3, mix=gen.PairMix(backdrop_share=1.0, backdrop_blend=0.5))
    assert not plain.shared_backdrop.any() and shared.shared_backdrop.all() and not shared.own_crop.any()
    # Same people, scenes, captions and references: only the targets' scene pixels differ.
    assert plain.targets.captions == shared.targets.captions
    assert torch.equal(plain.targets.identities, shared.targets.identities)
    assert torch.equal(plain.references, shared.references) and torch.equal(plain.backdrops, shared.backdrops)
    before, after = plain.targets.images * 255, shared.targets.images * 255  # (N, 3, 64, 64)
    changed = (before != after).any(1)  # (N, 64, 64)
    assert not (changed & plain.targets.face_masks).any()
    assert changed.float().mean() > 0.3  # most of a frame is scene
    halfway = torch.round(before + 0.5 * (plain.backdrops[:, :, None, None] - before))
    assert torch.equal(torch.round(after)[changed[:, None].expand_as(after)],
                       halfway[changed[:, None].expand_as(after)])  # fmt: skip


def test_pairs_are_deterministic_and_the_share_is_drawn_per_pair() -> None:
    mix = gen.PairMix(own_crop_share=0.5, backdrop_share=0.5, backdrop_blend=0.5)
    a, b = gen.pair_set(40, seed=5, mix=mix), gen.pair_set(40, seed=5, mix=mix)
    assert torch.equal(a.targets.images, b.targets.images) and torch.equal(a.references, b.references)
    own, shared = a.own_crop, a.shared_backdrop
    assert 0 < int(own.sum()) < 40 and 0 < int(shared.sum()) < int((~own).sum())
    assert not (own & shared).any()  # an own-crop pair has no studio backdrop to share
    # The reference is the target itself exactly in the own-crop pairs, with the target's face box.
    same = [torch.equal(t, r) for t, r in zip(a.targets.images, a.references, strict=True)]
    assert same == own.tolist()
    assert torch.equal(a.reference_boxes[own], a.targets.face_boxes[own])


def test_the_adapter_recipes_other_seeds_change_every_seed_and_nothing_else() -> None:
    from idgen.world.build import AdapterRecipe

    recipe = AdapterRecipe()
    assert recipe.reseeded(0) == recipe
    other = recipe.reseeded(1)
    assert (other.train.seed, other.data_seed, other.init_seed) == (23, 3, 24)
    assert other._replace(train=recipe.train, data_seed=2, init_seed=14) == recipe
