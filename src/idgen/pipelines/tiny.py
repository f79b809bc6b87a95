"""Tiny random-weight FLUX + PuLID (or the W+ branch), and SD1.5 + the W+ adapter, built from configs
in well under a second.

They have the real geometry (VAE /8, 2x2 packing, so a token per 16x16 pixels; 16 latent
channels) and run through exactly the same classes as the released models. Used by the tests,
the benchmark, and the `tiny-random` model name of the CLI. Weights are random: images are noise.
"""

from __future__ import annotations

from typing import Any

import torch

from idgen.models.pulid import PuLIDAdapter, PuLIDConfig

TINY_RANDOM = "tiny-random"  # the model name of all of these

TINY_PULID = PuLIDConfig(
    dim=32,
    depth=5,
    dim_head=8,
    heads=4,
    num_id_token=2,
    num_queries=4,
    output_dim=24,
    ff_mult=2,
    id_dim=48,
    vit_dim=24,
    mapping_dim=32,
    ca_dim=32,
    ca_dim_head=8,
    ca_heads=4,
    num_ca=4,
)

# 3 double + 5 single blocks -> injection after double 0, 2 and single 0, 4: 4 points.
TINY_FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=3,
    num_single_layers=5,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]
TINY_WORDS = (
    "a an the of in on at with and or to from by for is are photo portrait picture image person man woman "
    "boy girl child face smiling wearing red blue green yellow black white shirt dress hat glasses beach "
    "forest city night snow desert library street park room kitchen garden mountain sea sky sun light dark "
    "standing sitting walking looking holding close up half body left right centre center background"
).split()


def word_level_tokenizer(words: list[str], model_max_length: int) -> Any:
    """A transformers fast tokenizer over a fixed word list: lowercase, split on whitespace/punctuation."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(words) - set(SPECIAL_TOKENS)))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_max_length=model_max_length,
    )


def small_text_encoders(vocab_size: int, width: int, ff: int, max_positions: int) -> tuple[Any, Any]:
    """A 2-layer CLIP text encoder and a 2-layer T5 encoder over a word-level vocabulary
    (<pad>=0, </s>=1, <s>=3), built from the current RNG state, CLIP first."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=ff,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_positions,
            projection_dim=width,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=3,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_ff=ff,
            d_kv=width // 4,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    return clip, t5


def tiny_flux_pipeline(seed: int = 0) -> Any:
    """A FluxPipeline with tiny random components (CPU, float32)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tokenizer = word_level_tokenizer(TINY_WORDS, model_max_length=77)
    t5_tokenizer = word_level_tokenizer(TINY_WORDS, model_max_length=512)
    vocab_size = len(clip_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer: Any = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        )
        text_encoder, text_encoder_2 = small_text_encoders(vocab_size, width=32, ff=37, max_positions=77)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=t5_tokenizer,
        transformer=transformer.eval(),
    )


def tiny_pulid_adapter(seed: int = 0) -> PuLIDAdapter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PuLIDAdapter(TINY_PULID).eval()


def tiny_identity_encoder(seed: int = 0, detector: Any = None, require_face: bool = True) -> Any:
    from idgen.identity.random import RandomIdentityEncoder

    c = TINY_PULID
    return RandomIdentityEncoder(
        arcface_dim=16,
        clip_dim=c.id_dim - 16,
        vit_dim=c.vit_dim,
        num_vit_tokens=17,
        num_vit_features=c.num_vit_features,
        seed=seed,
        detector=detector,
        require_face=require_face,
    )


# W+ codes of the tiny models: 18 layers of 8 (the real ones are 18 x 512).
TINY_W_LAYERS, TINY_W_DIM = 18, 8


def tiny_wplus_encoder(seed: int = 0, detector: Any = None, require_face: bool = True) -> Any:
    """A random IdentityEncoder whose id_embedding is a tiny W+ code, flattened (18 * 8)."""
    from idgen.identity.random import RandomIdentityEncoder

    return RandomIdentityEncoder(
        arcface_dim=16,
        clip_dim=TINY_W_LAYERS * TINY_W_DIM - 16,
        vit_dim=4,
        num_vit_tokens=2,
        num_vit_features=1,
        seed=seed,
        detector=detector,
        require_face=require_face,
    )


def tiny_wplus_flux_adapter(seed: int = 0) -> Any:
    """The W+ branch sized for tiny_flux_pipeline's transformer (32 wide, 4 injection points)."""
    from idgen.models.wplus_flux import WPlusFluxAdapter, WPlusFluxConfig

    config = WPlusFluxConfig(num_layers=TINY_W_LAYERS, w_dim=TINY_W_DIM, ca_dim=32, heads=2, num_ca=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WPlusFluxAdapter(config).eval()


TINY_SD_LATENT = 16
TINY_SD_SIZE = 2 * TINY_SD_LATENT  # the tiny VAE halves once: 32x32 images
TINY_UNET = dict(
    sample_size=TINY_SD_LATENT,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)


def tiny_unet(seed: int = 0) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet: Any = UNet2DConditionModel(**TINY_UNET)
        return unet.eval()


def tiny_sd_pipeline(seed: int = 0) -> Any:
    """A StableDiffusionPipeline with tiny random parts: 16x16 latents -> 32x32 images (CPU, float32)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = word_level_tokenizer(TINY_WORDS, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(seed)
        vae: Any = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=32,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                pad_token_id=0,
                eos_token_id=1,
                bos_token_id=3,
            )
        )
    pipe: Any = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wplus_adapter(unet: Any, seed: int = 0) -> Any:
    """A W+ adapter that fits `unet` (tiny W+ codes), projections initialised from the UNet's own."""
    from idgen.backbones.sd15 import init_projections_from_unet, wplus_config_for_unet
    from idgen.models.wplus import WPlusAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = WPlusAdapter(wplus_config_for_unet(unet, num_layers=TINY_W_LAYERS, w_dim=TINY_W_DIM))
    init_projections_from_unet(adapter, unet)
    return adapter.eval()
