"""Where every weight file idgen reads comes from: one table for the loaders' defaults and `idgen doctor`.

Pure data (no torch, no hub calls). `where` says how a default location is found:
  "hub"       the Hugging Face cache (HF_HOME / HF_HUB_CACHE), repo `repo`, files `files`
  "facexlib"  facexlib's own weights folder (<site-packages>/facexlib/weights), files `files`
  "insightface"  an insightface root (default ~/.insightface) holding models/<name>/*.onnx
  "torch_hub" torch's hub folder (TORCH_HOME) / `subfolder`, as pyiqa caches its weights
  "package"   files shipped inside an installed package (`package`)
  "given"     no default: the user passes a path (`flag`)
"""

from __future__ import annotations

from dataclasses import dataclass

PATHS = ("pulid", "pidiff", "eval")  # the runs `idgen doctor --path` checks besides the demo world


@dataclass(frozen=True)
class WeightSource:
    key: str
    what: str  # names the weights in messages: "<what> not found: ..."
    path: str  # which run needs it: one of PATHS
    where: str  # see the module docstring
    files: tuple[str, ...]  # relative to the repo / folder; *.index.json also checks its shards
    get: str  # how to get it: an exact command, or the page to download it from
    licence: str
    repo: str = ""  # default hub repo ("hub") or folder name ("insightface") or subfolder ("torch_hub")
    package: str = ""  # "package": the package holding the files
    flag: str = ""  # the option that points the run (and `idgen doctor`) at another location
    required: bool = True  # False: only some runs need it (the note says which)
    note: str = ""


# Packages whose declared dependencies would add opencv-python (a second owner of cv2 beside
# opencv-python-headless) or CPU onnxruntime: installed with --no-deps after their extra (pyproject.toml),
# which lists the rest of their dependencies.
NO_DEPS: dict[str, tuple[str, ...]] = {
    "pulid": ("facexlib==0.3.0", "insightface==2.1"),
    "facesim": ("insightface==2.1",),
    "iq": ("pyiqa==0.1.16", "facexlib==0.3.0"),
}

FACEXLIB_RELEASES = "https://github.com/xinntao/facexlib/releases/download"

WEIGHTS: dict[str, WeightSource] = {
    s.key: s
    for s in (
        WeightSource(
            "flux",
            "FLUX.1-dev pipeline",
            "pulid",
            "hub",
            (
                "model_index.json",
                "transformer/diffusion_pytorch_model.safetensors.index.json",
                "text_encoder/model.safetensors",
                "text_encoder_2/model.safetensors.index.json",
                "vae/diffusion_pytorch_model.safetensors",
                "tokenizer/vocab.json",
                "tokenizer_2/spiece.model",
            ),
            "gated: accept the licence on the page huggingface.co/black-forest-labs/FLUX.1-dev, then "
            "`hf auth login` and `hf download black-forest-labs/FLUX.1-dev --exclude flux1-dev.safetensors "
            "--exclude ae.safetensors`",
            "FLUX.1 [dev] Non-Commercial License",
            repo="black-forest-labs/FLUX.1-dev",
            flag="--flux",
        ),
        WeightSource(
            "pulid",
            "PuLID-FLUX checkpoint",
            "pulid",
            "hub",
            ("pulid_flux_v0.9.1.safetensors",),
            "hf download guozinan/PuLID pulid_flux_v0.9.1.safetensors",
            "Apache-2.0",
            repo="guozinan/PuLID",
            flag="--pulid",
        ),
        WeightSource(
            "antelopev2",
            "antelopev2 models",
            "pulid",
            "hub",
            ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            "hf download DIAMONIK7777/antelopev2 scrfd_10g_bnkps.onnx glintr100.onnx",
            "insightface models: non-commercial research use only",
            repo="DIAMONIK7777/antelopev2",
            flag="--antelopev2",
        ),
        WeightSource(
            "retinaface",
            "facexlib weights",
            "pulid",
            "facexlib",
            ("detection_Resnet50_Final.pth",),
            f"curl -L --create-dirs -o {{folder}}/detection_Resnet50_Final.pth "
            f"{FACEXLIB_RELEASES}/v0.1.0/detection_Resnet50_Final.pth",
            "facexlib release (RetinaFace, MIT)",
            flag="--facexlib-dir",
        ),
        WeightSource(
            "bisenet",
            "facexlib weights",
            "pulid",
            "facexlib",
            ("parsing_bisenet.pth",),
            f"curl -L --create-dirs -o {{folder}}/parsing_bisenet.pth "
            f"{FACEXLIB_RELEASES}/v0.2.0/parsing_bisenet.pth",
            "facexlib release (BiSeNet face parsing, MIT)",
            flag="--facexlib-dir",
            note="PuLID parses with BiSeNet; facexlib's parsing_parsenet.pth is not used",
        ),
        WeightSource(
            "eva_clip",
            "EVA-CLIP checkpoint",
            "pulid",
            "hub",
            ("EVA02_CLIP_L_336_psz14_s6B.pt",),
            "hf download QuanSun/EVA-CLIP EVA02_CLIP_L_336_psz14_s6B.pt",
            "MIT",
            repo="QuanSun/EVA-CLIP",
            flag="--eva-clip",
        ),
        WeightSource(
            "sd15",
            "Stable Diffusion 1.5 pipeline",
            "pidiff",
            "hub",
            (
                "model_index.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "tokenizer/vocab.json",
                "safety_checker/model.safetensors",
            ),
            'hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "*.json" --include "*.txt" '
            "--include unet/diffusion_pytorch_model.safetensors "
            "--include vae/diffusion_pytorch_model.safetensors --include text_encoder/model.safetensors "
            "--include safety_checker/model.safetensors",
            "CreativeML OpenRAIL-M",
            repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            flag="--sd15",
            note="`idgen train pidiff` and `idgen edit` take it as --model",
        ),
        WeightSource(
            "wplus",
            "W+ adapter checkpoint",
            "pidiff",
            "given",
            ("wplus_adapter.bin",),
            "the W+ adapter's GitHub page (csxmli2016/w-plus-adapter), file wplus_adapter.bin",
            "non-commercial (W+ adapter release)",
            flag="--wplus",
            note="`idgen edit` takes it as --adapter",
        ),
        WeightSource(
            "e4e",
            "e4e checkpoint",
            "pidiff",
            "given",
            ("e4e_ffhq_encode.pt",),
            "encoder4editing's GitHub page (omertov/encoder4editing), 'Pretrained Models': "
            "e4e_ffhq_encode.pt",
            "MIT",
            flag="--e4e",
        ),
        WeightSource(
            "dlib_landmarks",
            "dlib 68-landmark shape predictor",
            "pidiff",
            "package",
            ("shape_predictor_68_face_landmarks.dat",),
            'pip install -e ".[faces]"',
            "dlib model trained on iBUG 300-W, whose licence excludes commercial use",
            package="face_recognition_models",
        ),
        WeightSource(
            "clip",
            "CLIP ViT-L/14",
            "eval",
            "hub",
            (
                "config.json",
                "model.safetensors",
                "preprocessor_config.json",
                "tokenizer_config.json",
                "vocab.json",
                "merges.txt",
            ),
            'hf download openai/clip-vit-large-patch14 --include "*.json" --include "*.txt" '
            "--include model.safetensors",
            "MIT",
            repo="openai/clip-vit-large-patch14",
            flag="--clip-model",
        ),
        WeightSource(
            "facesim",
            "antelopev2 models (FaceSim)",
            "eval",
            "insightface",
            ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            "hf download DIAMONIK7777/antelopev2 scrfd_10g_bnkps.onnx glintr100.onnx --local-dir {folder}",
            "insightface models: non-commercial research use only",
            repo="antelopev2",
            flag="--face-root",
        ),
        WeightSource(
            "musiq",
            "MUSIQ (SPAQ) checkpoint",
            "eval",
            "torch_hub",
            ("musiq_spaq_ckpt-358bb6af.pth",),
            "hf download chaofengc/IQA-PyTorch-Weights musiq_spaq_ckpt-358bb6af.pth --local-dir {folder}",
            "pyiqa: PolyForm-Noncommercial-1.0.0",
            repo="pyiqa",
            flag="--musiq",
            required=False,
            note="only for `idgen eval --iq`",
        ),
    )
}
