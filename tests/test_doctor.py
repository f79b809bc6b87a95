"""`idgen doctor`: where each weight file is looked for, found or missing; it agrees with the loaders."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import idgen.api
from idgen.cli import main
from idgen.doctor import (
    check_manifest,
    check_path,
    check_weights,
    folder_probe,
    format_sections,
    missing_files,
)
from idgen.identity import pulid as P
from idgen.models.checkpoint import DOCTOR_HINT
from idgen.models.loading import PULID_HUB_FILE, PULID_HUB_REPO, resolve_weights
from idgen.models.sources import PATHS, WEIGHTS

HEX = "0" * 40


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, read offline, in place of the user's."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_file(cache: Path, repo: str, name: str, data: bytes = b"x") -> Path:
    """A file laid out as huggingface_hub caches it (refs/main -> snapshots/<commit>/<name>)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(HEX)
    path = folder / "snapshots" / HEX / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- the table is the loaders' --------------------------------------------------------------------


def test_loaders_take_their_defaults_from_the_table() -> None:
    assert WEIGHTS["flux"].repo == idgen.api.FLUX_HUB_REPO
    assert (WEIGHTS["pulid"].repo, WEIGHTS["pulid"].files[0]) == (PULID_HUB_REPO, PULID_HUB_FILE)
    assert WEIGHTS["antelopev2"].repo == P.ANTELOPEV2_REPO
    assert WEIGHTS["antelopev2"].files == (P.ANTELOPEV2_DETECTOR, P.ANTELOPEV2_RECOGNISER)
    assert (WEIGHTS["retinaface"].files[0], WEIGHTS["bisenet"].files[0]) == (
        P.RETINAFACE_FILE,
        P.BISENET_FILE,
    )
    assert (WEIGHTS["eva_clip"].repo, WEIGHTS["eva_clip"].files[0]) == (P.EVA_CLIP_REPO, P.EVA_CLIP_FILE)
    assert {s.path for s in WEIGHTS.values()} == set(PATHS)
    for source in WEIGHTS.values():
        assert (source.get and source.licence and source.flag) or source.where == "package", source.key


def test_doctor_and_loader_agree_on_the_hub_cache(hub_cache: Path) -> None:
    source = WEIGHTS["pulid"]
    missing = check_weights(source)
    assert not missing.found and missing.files == "pulid_flux_v0.9.1.safetensors"
    assert missing.location.startswith(str(hub_cache / "models--guozinan--PuLID"))
    assert missing.get == "hf download guozinan/PuLID pulid_flux_v0.9.1.safetensors"
    path = cache_file(hub_cache, PULID_HUB_REPO, PULID_HUB_FILE)
    assert check_weights(source).found
    assert resolve_weights(PULID_HUB_REPO, source.what, repo_file=PULID_HUB_FILE) == path


def test_doctor_and_loader_agree_on_local_folders(tmp_path: Path) -> None:
    facexlib = tmp_path / "facexlib"
    facexlib.mkdir()
    (facexlib / "detection_Resnet50_Final.pth").write_bytes(b"x")
    assert check_weights(WEIGHTS["retinaface"], str(facexlib)).found
    bisenet = check_weights(WEIGHTS["bisenet"], str(facexlib))
    assert (bisenet.found, bisenet.files) == (False, "parsing_bisenet.pth")
    assert bisenet.get.startswith(f"curl -L --create-dirs -o {facexlib}/parsing_bisenet.pth https://")
    with pytest.raises(P.IdgenError, match=r"parsing_bisenet\.pth; run `idgen doctor`"):
        P.resolve_facexlib_weights(facexlib, None, None)
    nested = tmp_path / "zip" / "antelopev2"
    nested.mkdir(parents=True)
    for name in WEIGHTS["antelopev2"].files:
        (nested / name).write_bytes(b"x")
    found = check_weights(WEIGHTS["antelopev2"], str(tmp_path / "zip"))
    assert (found.found, found.location) == (True, str(nested))
    assert P.resolve_antelopev2_dir(tmp_path / "zip") == nested


def test_a_file_without_a_default_location_must_be_given(tmp_path: Path) -> None:
    e4e = check_weights(WEIGHTS["e4e"])
    assert (e4e.found, e4e.location) == (False, "no default location: pass --e4e PATH")
    (tmp_path / "e4e_ffhq_encode.pt").write_bytes(b"x")
    assert check_weights(WEIGHTS["e4e"], str(tmp_path / "e4e_ffhq_encode.pt")).found
    assert check_weights(WEIGHTS["e4e"], str(tmp_path)).found  # a folder holding it


def test_sharded_weights_need_every_shard(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    index = {"weight_map": {"a": "part-1.safetensors", "b": "part-2.safetensors", "c": "part-1.safetensors"}}
    (tmp_path / "transformer" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "part-1.safetensors").write_bytes(b"x")
    files = ("transformer/model.safetensors.index.json", "config.json")
    assert missing_files(files, folder_probe(tmp_path)) == ["transformer/part-2.safetensors", "config.json"]


# --- the demo world -----------------------------------------------------------------------------


def test_manifest_check_names_missing_and_changed_files(tmp_path: Path) -> None:
    (tmp_path / "flux").mkdir()
    (tmp_path / "pulid").mkdir()
    files = {"flux/a.bin": b"aaa", "flux/b.bin": b"bb", "pulid/c.bin": b"c"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    manifest = {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()}
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    assert [c.found for c in check_manifest(tmp_path)] == [True, True]
    (tmp_path / "flux" / "a.bin").write_bytes(b"aab")  # same size, other bytes
    (tmp_path / "pulid" / "c.bin").unlink()
    flux, pulid = check_manifest(tmp_path)
    assert (flux.found, flux.files, pulid.found, pulid.files) == (False, "flux/a.bin", False, "pulid/c.bin")


def test_the_shipped_demo_world_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "=> world: ready" in out and "MISSING" not in out
    for part in ("flux", "pulid", "identity", "evaluators"):
        assert f"ok      demo world: {part}: " in out


# --- real runs ----------------------------------------------------------------------------------


def test_a_run_without_its_weights_exits_non_zero(
    hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--path", "pulid", "--facexlib-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "  MISSING PuLID-FLUX checkpoint: pulid_flux_v0.9.1.safetensors\n" in out
    assert f"looked in: {hub_cache / 'models--guozinan--PuLID'} (Hugging Face cache" in out
    assert "get: hf download QuanSun/EVA-CLIP EVA02_CLIP_L_336_psz14_s6B.pt" in out
    assert "=> pulid: cannot run:" in out
    assert main(["doctor", "--path", "pidiff"]) == 1  # e4e and the W+ adapter have no default location


def test_every_path_is_checked_without_loading_anything(hub_cache: Path) -> None:
    sections = [check_path(path) for path in PATHS]
    text = format_sections(sections)
    for source in WEIGHTS.values():
        assert source.what in text
    assert "licence: pyiqa: PolyForm-Noncommercial-1.0.0" in text  # MUSIQ: optional, its licence shown
    musiq = next(c for c in sections[2].checks if c.name == WEIGHTS["musiq"].what)
    assert musiq.ok and not musiq.required


def test_the_errors_point_to_the_doctor() -> None:
    assert DOCTOR_HINT == "run `idgen doctor` to see where each weight file goes"


# --- antelopev2's ONNX provider -----------------------------------------------------------------


def test_onnx_provider_follows_the_device_and_what_onnxruntime_has() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert P.onnx_providers(torch.device("cuda"), both) == both
    assert P.onnx_providers(torch.device("cuda:1"), both) == both
    assert P.onnx_providers(torch.device("cuda"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert P.onnx_providers(torch.device("cpu"), both) == ["CPUExecutionProvider"]


def test_safetensors_in_the_cache_load(hub_cache: Path) -> None:
    from idgen.models.loading import load_pulid_adapter
    from idgen.pipelines.tiny import TINY_PULID, tiny_pulid_adapter

    adapter = tiny_pulid_adapter(1)
    path = cache_file(hub_cache, PULID_HUB_REPO, PULID_HUB_FILE)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(path))
    loaded = load_pulid_adapter(PULID_HUB_REPO, config=TINY_PULID)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
