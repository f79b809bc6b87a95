"""The real PuLID identity encoder (extra `idgen[pulid]`), following PuLID-FLUX's get_id_embedding.

Per photo (docs/preprocessing.md walks through each step and where it matches the reference):
0. The photo is shrunk so its long side is at most 1024 (PuLID's resize_numpy_image_long: sizes
   truncated, OpenCV Lanczos-4); smaller photos are left as they are.
1. insightface antelopev2: SCRFD detector (det size 640) + glintr100 ArcFace -> 512-d embedding of the
   LARGEST face (raw, not normalised, as PuLID uses it; equal areas: the last one, as PuLID's sort).
2. facexlib RetinaFace (resnet50, confidence 0.97): 5 landmarks of the face nearest the image centre,
   aligned with facexlib's FaceRestoreHelper arithmetic: cv2.estimateAffinePartial2D(method=LMEDS) onto
   the FFHQ 5-point template for 512 px, cv2.warpAffine (bilinear, constant grey border).
   If antelopev2 found no face, glintr100 runs on this aligned crop instead (PuLID's fallback).
3. facexlib BiSeNet parsing of the crop; background/ears/neck/clothes/... labels -> white, the rest -> grey.
4. EVA02-CLIP-L-14-336 vision tower at 336 px (bicubic, no antialias: torchvision 0.15's tensor resize,
   the version PuLID pins; OpenAI mean/std): the L2-normalised projected class embedding (768) and the
   token sequences entering blocks 4, 8, 12, 16, 20 (5 x (1, 577, 1024)).
id_embedding = [arcface 512 ; clip 768].

Only torch/numpy/PIL are imported at module level; the extras are imported when an encoder is built
(or, for OpenCV, when a preprocessing step runs), so this module imports without them. Checkpoints in
pickle formats are loaded with torch.load(weights_only=True) only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from idgen.errors import CheckpointError, IdgenError, NoFaceError
from idgen.identity.base import FaceBox, IdentityFeatures
from idgen.models.checkpoint import load_strict, missing_weights, read_weights
from idgen.models.loading import resolve_weights
from idgen.models.sources import NO_DEPS, WEIGHTS

__all__ = [
    "ANTELOPEV2_REPO",
    "EVA_CLIP_FILE",
    "EVA_CLIP_REPO",
    "PARSING_BACKGROUND_LABELS",
    "PuLIDIdentityEncoder",
    "align_face",
    "alignment_affine",
    "background_mask",
    "center_face_index",
    "eva_clip_visual_state_dict",
    "face_template",
    "l2_normalize",
    "largest_face_index",
    "missing_pulid_packages",
    "normalize_image",
    "pulid_hidden_block_indices",
    "resize_for_clip",
    "resize_long_side",
    "to_gray",
    "warp_face",
    "whiten_background",
]

PULID_EXTRA = f"pip install 'idgen[pulid]' && pip install --no-deps {' '.join(NO_DEPS['pulid'])}"
# import name -> pip package name
PULID_PACKAGES: dict[str, str] = {
    "insightface": "insightface",
    "onnxruntime": "onnxruntime",
    "cv2": "opencv-python-headless",
    "facexlib": "facexlib",
    "timm": "timm",
    "torchvision": "torchvision",  # facexlib's RetinaFace and timm import it
}

ANTELOPEV2_REPO = WEIGHTS["antelopev2"].repo
ANTELOPEV2_DETECTOR, ANTELOPEV2_RECOGNISER = WEIGHTS["antelopev2"].files  # scrfd_10g_bnkps, glintr100
DET_SIZE = 640
DET_THRESHOLD = 0.5  # insightface FaceAnalysis.prepare's default

RETINAFACE_FILE = WEIGHTS["retinaface"].files[0]  # detection_Resnet50_Final.pth
BISENET_FILE = WEIGHTS["bisenet"].files[0]  # parsing_bisenet.pth
RETINAFACE_THRESHOLD = 0.97  # FaceRestoreHelper.get_face_landmarks_5 uses 0.97
FACE_SIZE = 512
PULID_LONG_SIDE = 1024  # app_flux.py: resize_numpy_image_long(id_image, 1024) before get_id_embedding
# facexlib's 5-point FFHQ template for a 512 crop (eyes, nose, mouth corners), (x, y).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
ALIGN_BORDER_BGR = (135, 133, 132)  # facexlib fills outside the photo with this grey

# BiSeNet (CelebAMask-HQ) labels PuLID whitens: background 0, ears 7/8, earring 9, neck 14, necklace 15,
# cloth 16, hat 18. Hair (17) and the face parts stay (in grey).
PARSING_BACKGROUND_LABELS: tuple[int, ...] = (0, 16, 18, 7, 8, 9, 14, 15)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EVA_CLIP_REPO = WEIGHTS["eva_clip"].repo
EVA_CLIP_FILE = WEIGHTS["eva_clip"].files[0]  # EVA02_CLIP_L_336_psz14_s6B.pt
EVA_CLIP_MODEL = "EVA02-L-14-336"
# open_clip's EVA02-L-14-336 vision tower is this timm model with a 768-d "token" head; we build
# only the vision tower through timm rather than the whole open_clip model (no text tower).
_TIMM_EVA_NAMES = {
    "EVA02-L-14-336": "eva02_large_patch14_clip_336",
    "EVA02-CLIP-L-14-336": "eva02_large_patch14_clip_336",
    "eva02_large_patch14_clip_336": "eva02_large_patch14_clip_336",
}
EVA_CLIP_SIZE = 336
EVA_CLIP_EMBED_DIM = 768
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ARCFACE_DIM = 512
EVA_WIDTH = 1024
EVA_DEPTH = 24


# --------------------------------------------------------------------------------------------
# Pure pieces (no extras needed)


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) grey with ITU-R 601 luma weights, repeated on 3 channels."""
    grey = 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]
    return grey.repeat(1, 3, 1, 1)


def background_mask(parsing: torch.Tensor, labels: Sequence[int] = PARSING_BACKGROUND_LABELS) -> torch.Tensor:
    """Boolean mask, same shape as the label map `parsing`, True where the label is one of `labels`."""
    mask = torch.zeros_like(parsing, dtype=torch.bool)
    for label in labels:
        mask |= parsing == label
    return mask


def whiten_background(
    image: torch.Tensor, parsing: torch.Tensor, labels: Sequence[int] = PARSING_BACKGROUND_LABELS
) -> torch.Tensor:
    """PuLID's CLIP input: background labels -> white (1.0), the face -> grey.

    image: (B, 3, H, W) in [0, 1]; parsing: (B, 1, H, W) integer labels.
    """
    bg = background_mask(parsing, labels)
    return torch.where(bg, torch.ones_like(image), to_gray(image))


def normalize_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of a (B, C, H, W) tensor."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    return (image - m) / s


def resize_for_clip(
    image: torch.Tensor, size: int = EVA_CLIP_SIZE, *, antialias: bool = False
) -> torch.Tensor:
    """Bicubic resize of a square (B, C, H, W) crop to (size, size), not clamped.

    PuLID calls torchvision's tensor resize with its default antialias; PuLID pins torchvision 0.15.2,
    where that default means no antialias for tensors (newer torchvision turns it on: antialias=True).
    """
    return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 along dim 1 (PuLID divides by the norm, no epsilon)."""
    return x / torch.norm(x, p=2, dim=1, keepdim=True)


def center_face_index(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the box whose centre is nearest the image centre (facexlib's only_center_face).

    boxes: (N, >=4) array of (left, top, right, bottom, ...). Ties go to the first box.
    """
    if len(boxes) == 0:
        raise ValueError("no boxes")
    b = np.asarray(boxes, dtype=np.float64)
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    dist = np.linalg.norm(centres - np.array([width / 2, height / 2]), axis=1)
    return int(np.argmin(dist))


def largest_face_index(boxes: np.ndarray) -> int:
    """Index of the largest (left, top, right, bottom, ...) box, as PuLID picks antelopev2's face.

    PuLID sorts the faces by box area and takes the last, so among equal areas the LAST box wins.
    """
    if len(boxes) == 0:
        raise ValueError("no boxes")
    b = np.asarray(boxes)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return int(len(areas) - 1 - np.argmax(areas[::-1]))


def scale_box(box: FaceBox | None, sx: float, sy: float) -> FaceBox | None:
    """A box found on the resized photo, in pixels of the photo as given."""
    if box is None or (sx == 1.0 and sy == 1.0):
        return box
    return FaceBox(box.left * sx, box.top * sy, box.right * sx, box.bottom * sy, box.score)


def resize_long_side(rgb: np.ndarray, long_side: int = PULID_LONG_SIDE) -> np.ndarray:
    """PuLID's resize_numpy_image_long: shrink an (H, W, C) photo so its long side is `long_side`.

    Photos already small enough are returned as they are (never enlarged). The new sizes are
    truncated, int(side * long_side / max(H, W)), and resampled with OpenCV's Lanczos-4.
    """
    height, width = rgb.shape[:2]
    if max(height, width) <= long_side:
        return rgb
    k = long_side / max(height, width)
    cv2 = _import("cv2")
    return np.asarray(cv2.resize(rgb, (int(width * k), int(height * k)), interpolation=cv2.INTER_LANCZOS4))


def face_template(face_size: int = FACE_SIZE) -> np.ndarray:
    """facexlib's 5-point FFHQ template scaled to a face_size crop (FaceRestoreHelper, crop ratio 1)."""
    return FFHQ_TEMPLATE_512 * (face_size / 512.0)


def alignment_affine(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray | None:
    """The 2x3 similarity taking 5 (x, y) landmarks onto `template`, as facexlib estimates it.

    cv2.estimateAffinePartial2D with LMEDS (least median of squares, then Levenberg-Marquardt on
    the inliers); None when OpenCV finds no transform (degenerate landmarks).
    """
    cv2 = _import("cv2")
    affine = cv2.estimateAffinePartial2D(np.asarray(landmarks), np.asarray(template), method=cv2.LMEDS)[0]
    return None if affine is None else np.asarray(affine)


def warp_face(bgr: np.ndarray, affine: np.ndarray, face_size: int = FACE_SIZE) -> np.ndarray:
    """facexlib's crop: cv2.warpAffine (bilinear) to face_size x face_size, outside the photo grey."""
    cv2 = _import("cv2")
    return np.asarray(
        cv2.warpAffine(
            bgr, affine, (face_size, face_size), borderMode=cv2.BORDER_CONSTANT, borderValue=ALIGN_BORDER_BGR
        )
    )


def align_face(
    bgr: np.ndarray, landmarks: np.ndarray, face_size: int = FACE_SIZE
) -> tuple[np.ndarray, np.ndarray] | None:
    """(crop, affine) of the face with these 5 landmarks, or None when they give no transform."""
    affine = alignment_affine(landmarks, face_template(face_size))
    if affine is None:
        return None
    return warp_face(bgr, affine, face_size), affine


def pulid_hidden_block_indices(depth: int = EVA_DEPTH) -> list[int]:
    """Blocks whose OUTPUT PuLID keeps: its EVA ViT stores x before blocks 4, 8, 12, 16, 20.

    For depth 24 this is [3, 7, 11, 15, 19].
    """
    return [i - 1 for i in range(depth) if 0 < i <= 20 and i % 4 == 0]


_EVA_RENAMES = (
    ("mlp.ffn_ln.", "mlp.norm."),
    ("attn.inner_attn_ln.", "attn.norm."),
    ("mlp.w12.", "mlp.fc1."),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)


def _eva_prefix(keys: Sequence[str]) -> str:
    """The vision tower's key prefix: open_clip's "visual.trunk.", EVA-CLIP's "visual.", or timm's ""."""
    if any(k.startswith("visual.trunk.") for k in keys):
        return "visual.trunk."
    return "visual." if any(k.startswith("visual.") for k in keys) else ""


def _timm_eva_key(key: str, separate_qkv: bool) -> str:
    for old, new in _EVA_RENAMES:
        key = key.replace(old, new)
    if separate_qkv:
        key = re.sub(r"attn\.q_bias$", "attn.q_proj.bias", key)
        key = re.sub(r"attn\.v_bias$", "attn.v_proj.bias", key)
    return key


def eva_clip_visual_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vision-tower weights of an EVA02-CLIP checkpoint, renamed to timm's Eva layout.

    Accepts the original EVA-CLIP file (keys "visual.blocks.0.mlp.w1.weight", ...), an open_clip
    checkpoint ("visual.trunk.blocks..."), or timm keys as they are. Text tower, logit scale and the
    rotary-embedding buffers (recomputed by timm) are dropped.
    """
    sd: Mapping[str, Any] = state_dict
    for wrapper in ("state_dict", "model", "module"):
        inner = sd.get(wrapper)
        if isinstance(inner, Mapping):
            sd = inner
    keys = list(sd)
    prefix = _eva_prefix(keys)
    separate_qkv = any(k.endswith("attn.q_proj.weight") for k in keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[len(prefix) :]
        if key.startswith(prefix) and not (k.startswith("rope.") or ".rope." in k):
            out[_timm_eva_key(k, separate_qkv)] = value
    return out


def missing_pulid_packages() -> list[str]:
    """pip names of the `pulid` extra's packages that cannot be found (nothing is imported)."""
    missing = []
    for module, pip_name in PULID_PACKAGES.items():
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            missing.append(pip_name)
    return missing


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pip_name = PULID_PACKAGES.get(module.split(".")[0], module)
        raise IdgenError(f"PuLID identity encoding needs {pip_name} ({e}): {PULID_EXTRA}") from e


# --------------------------------------------------------------------------------------------
# Locating weights: one resolver (idgen.models.loading) and the defaults of idgen.models.sources


def resolve_antelopev2_dir(source: str | os.PathLike[str]) -> Path:
    """Local folder with the antelopev2 ONNX files, from a folder path or a hub repo id."""
    return resolve_weights(
        source,
        WEIGHTS["antelopev2"].what,
        folder_files=(ANTELOPEV2_DETECTOR, ANTELOPEV2_RECOGNISER),
        nested=("antelopev2",),  # antelopev2.zip unpacks one level down
    )


def default_facexlib_dir() -> Path | None:
    """Where facexlib itself caches its weights: <site-packages>/facexlib/weights."""
    try:
        spec = importlib.util.find_spec("facexlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def resolve_facexlib_weights(
    facexlib_dir: str | os.PathLike[str] | None,
    retinaface: str | os.PathLike[str] | None,
    bisenet: str | os.PathLike[str] | None,
) -> tuple[Path, Path]:
    """Paths of RetinaFace-resnet50 and BiSeNet weights; explicit files win over the folder."""
    folder = Path(facexlib_dir).expanduser() if facexlib_dir is not None else default_facexlib_dir()
    what = WEIGHTS["retinaface"].what
    paths = []
    for explicit, name in ((retinaface, RETINAFACE_FILE), (bisenet, BISENET_FILE)):
        if explicit is None and folder is None:
            raise missing_weights(what, f"{name} (facexlib is not installed; pass facexlib_dir)")
        path = Path(explicit).expanduser() if explicit is not None else Path(str(folder)) / name
        if not path.is_file():
            raise missing_weights(what, path)
        paths.append(path)
    return paths[0], paths[1]


def resolve_eva_clip_checkpoint(source: str | os.PathLike[str], filename: str = EVA_CLIP_FILE) -> Path:
    """EVA02-CLIP checkpoint file: a file path, a folder holding `filename`, or a hub repo id."""
    return resolve_weights(source, WEIGHTS["eva_clip"].what, folder_file=filename, repo_file=filename)


CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def onnx_providers(device: torch.device, available: Sequence[str]) -> list[str]:
    """onnxruntime providers for antelopev2: CUDA first when the encoder runs on a CUDA device and this
    onnxruntime has the CUDA provider (onnxruntime-gpu, extra `idgen[pulid-gpu]`), else the CPU."""
    if device.type == "cuda" and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


# --------------------------------------------------------------------------------------------
# The encoder


class PuLIDIdentityEncoder:
    """PuLID-FLUX's identity features from one photo (see the module docstring for the pipeline).

    antelopev2: folder with scrfd_10g_bnkps.onnx + glintr100.onnx, or a hub repo id.
    eva_clip: EVA02-CLIP-L-14-336 checkpoint file, a folder holding `eva_clip_filename`, or a hub repo id
        (original EVA-CLIP, open_clip and timm key layouts are all accepted).
    facexlib_dir: folder with detection_Resnet50_Final.pth and parsing_bisenet.pth (default: facexlib's
        own weights folder); `retinaface` / `bisenet` point at the files directly.
    dtype: EVA-CLIP compute dtype (PuLID uses bfloat16 on GPU). Outputs are always float32.
    Not thread-safe (the CLIP hidden states are captured with forward hooks).
    """

    arcface_dim = ARCFACE_DIM
    clip_dim = EVA_CLIP_EMBED_DIM
    id_dim = ARCFACE_DIM + EVA_CLIP_EMBED_DIM
    vit_dim = EVA_WIDTH

    def __init__(
        self,
        antelopev2: str | os.PathLike[str] = ANTELOPEV2_REPO,
        *,
        eva_clip: str | os.PathLike[str] = EVA_CLIP_REPO,
        eva_clip_filename: str = EVA_CLIP_FILE,
        clip_model: str = EVA_CLIP_MODEL,
        facexlib_dir: str | os.PathLike[str] | None = None,
        retinaface: str | os.PathLike[str] | None = None,
        bisenet: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        onnx_providers: Sequence[str] | None = None,
        det_size: int = DET_SIZE,
    ) -> None:
        missing = missing_pulid_packages()
        if missing:
            raise IdgenError(f"PuLID identity encoding needs {', '.join(missing)}: {PULID_EXTRA}")
        if clip_model not in _TIMM_EVA_NAMES:
            raise IdgenError(f"unsupported CLIP model {clip_model!r}: PuLID uses {EVA_CLIP_MODEL!r}")
        self.device = torch.device(device)
        self.dtype = dtype

        # Find every file before loading anything, so a missing one fails fast.
        antelope_dir = resolve_antelopev2_dir(antelopev2)
        retina_path, bisenet_path = resolve_facexlib_weights(facexlib_dir, retinaface, bisenet)
        eva_path = resolve_eva_clip_checkpoint(eva_clip, eva_clip_filename)

        self._cv2 = _import("cv2")
        self._load_antelopev2(antelope_dir, onnx_providers, det_size)
        self._retinaface = self._load_retinaface(retina_path)
        self._bisenet = self._load_bisenet(bisenet_path)
        self._vision = self._load_eva_clip(eva_path, _TIMM_EVA_NAMES[clip_model])
        self._hidden: list[torch.Tensor] = []
        for index in pulid_hidden_block_indices(len(self._vision.blocks)):
            self._vision.blocks[index].register_forward_hook(self._keep_hidden)

    # -- loading --------------------------------------------------------------------------------

    def _load_antelopev2(self, folder: Path, providers: Sequence[str] | None, det_size: int) -> None:
        model_zoo = _import("insightface.model_zoo")
        self._face_cls = _import("insightface.app.common").Face
        if providers is None:
            providers = onnx_providers(self.device, _import("onnxruntime").get_available_providers())
            if self.device.type == "cuda" and CUDA_PROVIDER not in providers:
                warnings.warn(
                    "antelopev2 runs on the CPU: this onnxruntime has no CUDAExecutionProvider "
                    "(for the GPU: pip install 'idgen[pulid-gpu]')",
                    stacklevel=3,
                )
        try:
            # The same two models FaceAnalysis("antelopev2") uses for detection and recognition;
            # loading them directly works with any folder name and skips the unused ones.
            self._det = model_zoo.get_model(str(folder / ANTELOPEV2_DETECTOR), providers=list(providers))
            self._rec = model_zoo.get_model(str(folder / ANTELOPEV2_RECOGNISER), providers=list(providers))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{folder} does not hold loadable antelopev2 models ({first})") from e
        if self._det is None or self._rec is None:
            raise CheckpointError(f"{folder} does not hold the antelopev2 detector and recogniser")
        names = [p[0] if isinstance(p, tuple) else p for p in providers]  # (name, options) pairs too
        ctx_id = 0 if CUDA_PROVIDER in names else -1  # insightface: -1 pins the sessions to the CPU
        self._det.prepare(ctx_id, input_size=(det_size, det_size), det_thresh=DET_THRESHOLD)
        self._rec.prepare(ctx_id)
        session = getattr(self._det, "session", None)
        # The provider onnxruntime actually uses (it falls back to the CPU silently otherwise).
        self.onnx_provider = session.get_providers()[0] if session is not None else str(names[0])

    def _load_retinaface(self, path: Path) -> Any:
        retinaface = _import("facexlib.detection.retinaface")
        model = retinaface.RetinaFace(network_name="resnet50", half=False, device=self.device)
        weights = read_weights(path, "facexlib RetinaFace-resnet50 weights")
        state = {k.removeprefix("module."): v for k, v in weights.items()}
        load_strict(model, state, str(path), "facexlib RetinaFace-resnet50")
        return model.to(self.device).eval()

    def _load_bisenet(self, path: Path) -> Any:
        bisenet = _import("facexlib.parsing.bisenet")
        model = bisenet.BiSeNet(num_class=19)
        load_strict(model, read_weights(path, "facexlib BiSeNet weights"), str(path), "facexlib BiSeNet")
        return model.to(self.device).eval()

    def _load_eva_clip(self, path: Path, timm_name: str) -> Any:
        timm = _import("timm")
        # Same construction as open_clip's timm adapter for EVA02-L-14-336 (class-token pool, the
        # trunk's own head as the 1024 -> 768 projection).
        model = timm.create_model(
            timm_name, pretrained=False, num_classes=EVA_CLIP_EMBED_DIM, global_pool="token"
        )
        state = eva_clip_visual_state_dict(read_weights(path, f"{EVA_CLIP_MODEL} weights"))
        load_strict(model, state, str(path), f"{EVA_CLIP_MODEL} vision tower")
        return model.to(self.device, self.dtype).eval()

    def _keep_hidden(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._hidden.append(output)

    # -- encoding -------------------------------------------------------------------------------

    def _antelope_largest(self, bgr: np.ndarray) -> tuple[np.ndarray | None, FaceBox | None]:
        dets, kpss = self._det.detect(bgr, max_num=0, metric="default")  # as FaceAnalysis.get
        if len(dets) == 0 or kpss is None:
            return None, None
        i = largest_face_index(dets[:, 0:4])
        face = self._face_cls(bbox=dets[i, 0:4], kps=kpss[i], det_score=dets[i, 4])
        box = FaceBox(*(float(v) for v in dets[i, 0:5]))
        return np.asarray(self._rec.get(bgr, face), dtype=np.float32), box

    def _align_center_face(self, bgr: np.ndarray, what: str) -> tuple[np.ndarray, FaceBox]:
        with torch.no_grad():
            dets = self._retinaface.detect_faces(bgr, RETINAFACE_THRESHOLD)
        if len(dets) == 0:  # PuLID needs the aligned crop even when antelopev2 found a face
            raise NoFaceError(f"no face found in {what}")
        height, width = bgr.shape[:2]
        i = center_face_index(dets[:, 0:4], width, height)
        aligned = align_face(bgr, dets[i, 5:15].reshape(5, 2))  # float32, as facexlib passes them
        if aligned is None:
            raise NoFaceError(f"the face in {what} cannot be aligned (its landmarks are degenerate)")
        return aligned[0], FaceBox(*(float(v) for v in dets[i, 0:5]))

    def _clip_features(self, crop_bgr: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Parse, whiten and encode the aligned crop: (normalised class embedding, hidden states)."""
        crop = torch.from_numpy(np.ascontiguousarray(crop_bgr[:, :, ::-1])).permute(2, 0, 1)
        crop = crop.unsqueeze(0).float().div(255.0).to(self.device)
        parsing = self._bisenet(normalize_image(crop, IMAGENET_MEAN, IMAGENET_STD))[0]
        face_only = whiten_background(crop, parsing.argmax(dim=1, keepdim=True))
        clip_in = normalize_image(
            resize_for_clip(face_only, EVA_CLIP_SIZE), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        )
        self._hidden = []
        try:
            clip_cls = self._vision(clip_in.to(self.dtype))
            hidden = [h.float() for h in self._hidden]
        finally:
            self._hidden = []
        return l2_normalize(clip_cls.float()), hidden

    @torch.no_grad()
    def __call__(self, image: Image.Image, *, what: str = "image") -> IdentityFeatures:
        photo = np.asarray(image.convert("RGB"), dtype=np.uint8)
        rgb = resize_long_side(photo)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface and facexlib take OpenCV BGR

        arcface, face_box = self._antelope_largest(bgr)
        crop_bgr, crop_box = self._align_center_face(bgr, what)
        if arcface is None:  # PuLID's fallback: glintr100 on the aligned crop
            arcface = np.asarray(self._rec.get_feat(crop_bgr), dtype=np.float32)
            face_box = crop_box
        arcface_t = torch.from_numpy(arcface.reshape(1, -1)).to(self.device, torch.float32)
        clip_cls, hidden = self._clip_features(crop_bgr)
        return IdentityFeatures(
            id_embedding=torch.cat([arcface_t, clip_cls], dim=-1),
            vit_hidden=hidden,
            face_box=scale_box(face_box, photo.shape[1] / rgb.shape[1], photo.shape[0] / rgb.shape[0]),
        )

    def __repr__(self) -> str:
        provider = getattr(self, "onnx_provider", None)
        return f"PuLIDIdentityEncoder(device={self.device}, dtype={self.dtype}, onnx_provider={provider})"
