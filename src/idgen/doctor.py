"""`idgen doctor`: every weight file and package each run needs, where it was looked for, found or
missing, and how to get it. Nothing is downloaded and no model is loaded.

The weight table is idgen.models.sources.WEIGHTS, the same one the loaders take their defaults from;
locations honour what the loaders honour (HF_HOME / HF_HUB_CACHE, facexlib's weights folder, the
insightface root, TORCH_HOME) and the same options, given here as `overrides` keyed by the table's keys.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from idgen.models.checkpoint import DOCTOR_HINT
from idgen.models.sources import NO_DEPS, PATHS, WEIGHTS, WeightSource

__all__ = ["DOCTOR_HINT", "NO_DEPS", "Check", "Section", "check_manifest", "check_path", "format_sections"]

CV2_DISTRIBUTIONS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
TITLES = {
    "world": "demo world (idgen generate with no model options)",
    "pulid": "PuLID-FLUX on real weights (idgen generate --flux ... --pulid ... --encoder pulid)",
    "pidiff": "PIDiff on Stable Diffusion 1.5 (e4e + W+ adapter)",
    "eval": "idgen eval with real metric models",
}


@dataclass(frozen=True)
class Check:
    """One thing a run needs: found or missing, where it was looked for, how to get it."""

    name: str
    found: bool
    location: str  # what was found, or where it was looked for
    files: str = ""  # the files looked for (missing ones when some are missing)
    get: str = ""
    licence: str = ""
    required: bool = True
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.found or not self.required


@dataclass(frozen=True)
class Section:
    path: str
    title: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


# ----------------------------------------------------------------------------- finding files

Probe = Callable[[str], "Path | None"]


def _shards(index: Path) -> list[str]:
    """File names of the shards a *.index.json lists (relative to its folder)."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, AttributeError):
        return []


def missing_files(files: Sequence[str], probe: Probe) -> list[str]:
    """The files `probe` cannot find; a found *.index.json adds its missing shards."""
    missing = []
    for name in files:
        path = probe(name)
        if path is None:
            missing.append(name)
        elif name.endswith(".index.json"):
            folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
            missing += [folder + s for s in _shards(path) if probe(folder + s) is None]
    return missing


def folder_probe(folder: Path) -> Probe:
    return lambda name: (folder / name) if (folder / name).is_file() else None


def cache_probe(repo: str) -> Probe:
    from huggingface_hub import try_to_load_from_cache

    def probe(name: str) -> Path | None:
        hit = try_to_load_from_cache(repo, name)
        return Path(hit) if isinstance(hit, str) else None

    return probe


def hub_cache_folder(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def _result(source: WeightSource, missing: Sequence[str], location: str, folder: str = "") -> Check:
    return Check(
        name=source.what,
        found=not missing,
        location=location,
        files=", ".join(missing or source.files),
        get=source.get.format(folder=folder or "<folder>") if missing else "",
        licence=source.licence,
        required=source.required,
        note=source.note,
    )


def _in_folder(source: WeightSource, folder: Path, label: str, nested: Sequence[str] = ()) -> Check:
    """`folder` (or one of its `nested` subfolders) holding every file of `source`."""
    for candidate in (folder, *(folder / n for n in nested)):
        if not missing_files(source.files, folder_probe(candidate)):
            return _result(source, [], str(candidate))
    missing = missing_files(source.files, folder_probe(folder))
    return _result(source, missing, f"{folder} ({label})", str(folder))


def _local(source: WeightSource, path: Path, nested: Sequence[str] = ()) -> Check:
    """A path the user gave: one weight file, or a folder holding the source's files."""
    if path.is_file():
        return _result(source, [], str(path))
    return _in_folder(source, path, f"given with {source.flag}", nested)


def locate_hub(source: WeightSource, override: str | None) -> Check:
    from idgen.models.loading import split_hub_id

    hub = split_hub_id(override) if override else (source.repo, "")
    if hub is None:
        return _local(source, Path(str(override)).expanduser(), nested=("antelopev2",))
    repo, inside = hub
    missing = missing_files((inside,) if inside else source.files, cache_probe(repo))
    where = f"{hub_cache_folder(repo)} (Hugging Face cache: HF_HOME / HF_HUB_CACHE; or {source.flag})"
    return _result(source, missing, where)


def locate_facexlib(source: WeightSource, override: str | None) -> Check:
    from idgen.identity.pulid import default_facexlib_dir

    folder = Path(override).expanduser() if override else default_facexlib_dir()
    if folder is None:
        where = f"facexlib's weights folder (facexlib is not installed; or {source.flag})"
        return _result(source, source.files, where, "<site-packages>/facexlib/weights")
    return _in_folder(source, folder, f"facexlib's weights folder; or {source.flag}")


def locate_insightface(source: WeightSource, override: str | None) -> Check:
    root = Path(override or "~/.insightface").expanduser()
    label = f"insightface root {root}; or {source.flag}"
    return _in_folder(source, root / "models" / source.repo, label, nested=(source.repo,))


def locate_torch_hub(source: WeightSource, override: str | None) -> Check:
    if override:
        return _local(source, Path(override).expanduser())
    import torch.hub

    folder = Path(torch.hub.get_dir()) / source.repo
    return _in_folder(source, folder, f"torch hub folder, TORCH_HOME; or {source.flag}")


def locate_package(source: WeightSource, override: str | None) -> Check:
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return _result(source, source.files, f"package {source.package} (not installed)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return _in_folder(source, folder, f"inside package {source.package}")


def locate_given(source: WeightSource, override: str | None) -> Check:
    if override:
        return _local(source, Path(override).expanduser())
    return _result(source, source.files, f"no default location: pass {source.flag} PATH")


LOCATORS: dict[str, Callable[[WeightSource, str | None], Check]] = {
    "hub": locate_hub,
    "facexlib": locate_facexlib,
    "insightface": locate_insightface,
    "torch_hub": locate_torch_hub,
    "package": locate_package,
    "given": locate_given,
}


def check_weights(source: WeightSource, override: str | None = None) -> Check:
    return LOCATORS[source.where](source, override)


# ----------------------------------------------------------------------------- packages


@dataclass(frozen=True)
class Package:
    module: str
    distribution: str
    get: str
    required: bool = True
    note: str = ""


def _extra(name: str) -> str:
    install = f'pip install -e ".[{name}]"'
    return f"{install} && pip install --no-deps {' '.join(NO_DEPS[name])}" if name in NO_DEPS else install


PACKAGES: dict[str, tuple[Package, ...]] = {
    "pulid": (
        Package("insightface", "insightface", f"pip install --no-deps {' '.join(NO_DEPS['pulid'])}"),
        Package("facexlib", "facexlib", f"pip install --no-deps {' '.join(NO_DEPS['pulid'])}"),
        Package("timm", "timm", _extra("pulid")),
        Package("torchvision", "torchvision", "install the torchvision paired with your torch (README)"),
        Package("onnxruntime", "onnxruntime", _extra("pulid")),
        Package("cv2", "opencv-python-headless", _extra("pulid")),
    ),
    "pidiff": (
        Package("dlib", "dlib-bin", _extra("faces")),
        Package("face_recognition_models", "face_recognition_models", _extra("faces")),
    ),
    "eval": (
        Package("insightface", "insightface", _extra("facesim")),
        Package("onnxruntime", "onnxruntime", _extra("facesim")),
        Package("pyiqa", "pyiqa", _extra("iq"), required=False, note="only for `idgen eval --iq`"),
    ),
}


def _version(distributions: Sequence[str]) -> str | None:
    for name in distributions:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def check_package(package: Package) -> Check:
    try:
        present = importlib.util.find_spec(package.module) is not None
    except (ImportError, ValueError):
        present = False
    # onnxruntime-gpu and the opencv variants provide the same module under another name.
    alternatives = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "cv2": CV2_DISTRIBUTIONS}
    version = _version(alternatives.get(package.module, (package.distribution,))) if present else None
    return Check(
        name=f"package {package.distribution}",
        found=present,
        location=version or (package.module if present else f"import {package.module} fails"),
        get="" if present else package.get,
        required=package.required,
        note=package.note,
    )


def cv2_owners() -> list[str]:
    """Installed distributions that each provide the `cv2` package."""
    return [name for name in CV2_DISTRIBUTIONS if _version([name])]


def check_cv2_owners() -> Check:
    owners = cv2_owners()
    return Check(
        name="one owner of cv2",
        found=len(owners) <= 1,
        location=", ".join(owners) or "no OpenCV installed",
        get="pip uninstall -y " + " ".join(o for o in owners if o != "opencv-python-headless")
        if len(owners) > 1
        else "",
    )


def check_onnx_gpu(extra: str) -> Check | None:
    """On a CUDA machine: does onnxruntime have its CUDA provider? (None elsewhere.)"""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    return Check(
        name="antelopev2 on the GPU (onnxruntime CUDAExecutionProvider)",
        found="CUDAExecutionProvider" in providers,
        location=", ".join(providers),
        get=f'pip uninstall -y onnxruntime && pip install -e ".[{extra}]"',
        required=False,
        note="without it antelopev2 runs on the CPU",
    )


# ----------------------------------------------------------------------------- sections


def check_manifest(assets: Path, manifest_name: str = "MANIFEST.json") -> tuple[Check, ...]:
    """A folder of shipped files against its manifest ({relative path: {"sha256", "bytes"}}), one check
    per top-level part."""
    from idgen.io import file_sha256

    path = assets / manifest_name
    if not path.is_file():
        return (Check(name="manifest", found=False, location=str(path), get="reinstall idgen"),)
    parts: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name, entry in json.loads(path.read_text()).items():
        file = assets / name
        bad = not file.is_file() or file.stat().st_size != entry["bytes"]
        bad = bad or file_sha256(file) != entry["sha256"]
        part = name.split("/", 1)[0]
        parts.setdefault(part, []).extend([name] if bad else [])
        counts[part] = counts.get(part, 0) + 1
    return tuple(
        Check(
            name=f"demo world: {part}",
            found=not bad,
            location=f"{assets / part} ({counts[part]} files match {manifest_name})"
            if not bad
            else f"{assets / part} (checked against {path})",
            files=", ".join(bad),
            get="reinstall idgen (these files ship with it)" if bad else "",
        )
        for part, bad in sorted(parts.items())
    )


def check_path(path: str, overrides: Mapping[str, str | None] | None = None) -> Section:
    """Everything run `path` (one of PATHS) needs."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")
    overrides = overrides or {}
    checks = [check_package(p) for p in PACKAGES[path]]
    if path in ("pulid", "eval"):
        checks.append(check_cv2_owners())
        gpu = check_onnx_gpu("pulid-gpu" if path == "pulid" else "facesim-gpu")
        checks += [gpu] if gpu is not None else []
    checks += [check_weights(s, overrides.get(s.key)) for s in WEIGHTS.values() if s.path == path]
    return Section(path, TITLES[path], tuple(checks))


def format_check(check: Check) -> list[str]:
    status = "ok" if check.found else ("MISSING" if check.required else "absent")
    head = f"  {status:<8}{check.name}"
    lines = [f"{head}: {check.location}" if check.found else f"{head}: {check.files}".rstrip(": ")]
    if not check.found:
        lines.append(f"{'':10}looked in: {check.location}")
        lines += [f"{'':10}get: {check.get}"] if check.get else []
    for label, text in (("licence", check.licence), ("note", check.note)):
        lines += [f"{'':10}{label}: {text}"] if text and not check.found else []
    return lines


def format_sections(sections: Sequence[Section]) -> str:
    lines: list[str] = []
    for section in sections:
        lines.append(section.title)
        for check in section.checks:
            lines += format_check(check)
        missing = sum(not c.ok for c in section.checks)
        verdict = "ready" if section.ok else f"cannot run: {missing} required item(s) missing"
        lines += [f"  => {section.path}: {verdict}", ""]
    return "\n".join(lines).rstrip() + "\n"
