"""One reader, one strict loader, one resolver for every weight file (idgen.models.checkpoint/loading)."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from idgen.errors import CheckpointError
from idgen.models.checkpoint import (
    DOCTOR_HINT,
    MissingWeightsError,
    load_strict,
    read_state_dict,
    read_weights,
)
from idgen.models.e4e import E4EConfig, load_e4e_encoder
from idgen.models.loading import load_pulid_adapter, resolve_weights, split_hub_id
from idgen.models.wplus import WPlusAdapter, WPlusConfig, load_wplus_adapter
from idgen.pipelines.tiny import TINY_PULID, tiny_pulid_adapter

TINY_WPLUS = WPlusConfig(
    num_layers=4, w_dim=8, groups=((0, 2), (2, 4)), token_dim=16, attention_layers=((1, 8),)
)
TINY_E4E = E4EConfig(
    num_styles=4, w_dim=16, input_size=32, stage_channels=(8, 8, 16, 16), stage_units=(1, 1, 1, 1),
    se_reduction=4, coarse_end=1, middle_end=2,
)  # fmt: skip


class _NotATensor:
    pass


# --- reading -------------------------------------------------------------------------------------


def test_reads_safetensors_and_weights_only_pickles(tmp_path: Path) -> None:
    sd = {"w": torch.arange(3.0)}
    torch.save(sd, tmp_path / "ok.pth")
    save_file(sd, str(tmp_path / "ok.safetensors"))
    for name in ("ok.pth", "ok.safetensors"):
        assert torch.equal(read_weights(tmp_path / name)["w"], sd["w"])
    torch.save({"outer": {"inner": torch.ones(2)}}, tmp_path / "nested.bin")
    assert list(read_state_dict(tmp_path / "nested.bin")) == ["outer.inner"]


def test_a_pickle_that_needs_more_than_tensors_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _NotATensor()}, f, protocol=2)
    with pytest.raises(CheckpointError) as info:
        read_weights(path, "e4e checkpoint")
    message = str(info.value)
    assert message == (
        f"{path} cannot be read with weights_only=True (it needs {_NotATensor.__module__}._NotATensor); "
        "expected e4e checkpoint holding only tensors"
    )
    assert "weights_only=False" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("list.pt", [torch.zeros(1)], "{p} holds a list, expected W+ adapter checkpoint (a dict of tensors)"),
        ("junk.safetensors", b"junk", "{p} is not a readable safetensors file ("),
        ("junk.bin", b"junk", "{p} is not a readable W+ adapter checkpoint file ("),
        (
            "weights.npz",
            b"junk",
            "{p}: unknown weight format '.npz' for W+ adapter checkpoint; expected one of",
        ),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, name: str, content: object, expected: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        read_weights(path, "W+ adapter checkpoint")
    assert str(info.value).startswith(expected.format(p=path))
    assert "\n" not in str(info.value)


def test_missing_file_names_it_and_points_to_doctor(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        read_weights(tmp_path / "gone.safetensors", "EVA-CLIP checkpoint")
    assert str(info.value) == f"EVA-CLIP checkpoint not found: {tmp_path / 'gone.safetensors'}; {DOCTOR_HINT}"


# --- strict loading ------------------------------------------------------------------------------


def test_load_strict_names_the_first_bad_key() -> None:
    layer = torch.nn.Linear(2, 3)
    load_strict(layer, {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}, "x.pt", "Linear layer")
    assert torch.equal(layer.weight, torch.ones(3, 2))
    with pytest.raises(CheckpointError, match=r"^x\.pt is not a Linear layer checkpoint: missing key 'bias'"):
        load_strict(layer, {"weight": torch.ones(3, 2)}, "x.pt", "Linear layer")
    with pytest.raises(
        CheckpointError, match=r"^x\.pt does not fit this Linear layer: 'weight' has shape \(4, 2\), "
    ):
        load_strict(layer, {"weight": torch.ones(4, 2), "bias": torch.zeros(3)}, "x.pt", "Linear layer")


def test_a_weight_file_of_the_wrong_kind_in_the_right_place(tmp_path: Path) -> None:
    """Official key names of one model where another's file is expected: the file and the kind are named."""
    wplus = tmp_path / "pulid_flux_v0.9.1.safetensors"
    save_file({k: v.contiguous() for k, v in WPlusAdapter(TINY_WPLUS).state_dict().items()}, str(wplus))
    with pytest.raises(CheckpointError) as info:
        load_pulid_adapter(wplus, config=TINY_PULID)
    assert str(info.value).startswith(f"{wplus} is not a PuLID-FLUX checkpoint: missing key 'pulid_encoder.")
    pulid = tmp_path / "wplus_adapter.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_pulid_adapter(0).state_dict().items()}, str(pulid))
    with pytest.raises(
        CheckpointError, match=rf"^{pulid} is not a W\+ adapter checkpoint: missing key 'w_proj"
    ):
        load_wplus_adapter(pulid, config=TINY_WPLUS)
    e4e = tmp_path / "e4e_ffhq_encode.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_pulid_adapter(0).state_dict().items()}, str(e4e))
    with pytest.raises(
        CheckpointError,
        match=rf"^{e4e} is not an e4e encoder checkpoint: missing key 'latent_avg' \(and 98 more\)$",
    ):
        load_e4e_encoder(e4e, config=TINY_E4E)


@pytest.mark.parametrize(
    ("load", "what"),
    [(load_pulid_adapter, "PuLID-FLUX checkpoint"), (load_wplus_adapter, "W+ adapter checkpoint"),
     (load_e4e_encoder, "e4e checkpoint")],
)  # fmt: skip
def test_every_loader_names_missing_weights_and_points_to_doctor(tmp_path: Path, load, what: str) -> None:
    gone = tmp_path / "nowhere" / "weights.bin"
    with pytest.raises(MissingWeightsError) as info:
        load(gone)
    assert str(info.value) == f"{what} not found: {gone}; {DOCTOR_HINT}"


# --- resolving -----------------------------------------------------------------------------------


def test_split_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_hub_id("guozinan/PuLID") == ("guozinan/PuLID", "")
    assert split_hub_id("guozinan/PuLID/pulid_flux_v0.9.0.safetensors") == (
        "guozinan/PuLID",
        "pulid_flux_v0.9.0.safetensors",
    )
    assert split_hub_id("owner/name/sub/file.pt") == ("owner/name", "sub/file.pt")
    for not_hub in ("./a/b", "/abs/path", "~/a/b", "a\\b/c", "single", "a//b"):
        assert split_hub_id(not_hub) is None, not_hub
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "file.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert split_hub_id("local/file.pt") is None  # an existing relative path is a path


def test_resolve_local_file_and_folders(tmp_path: Path) -> None:
    file = tmp_path / "eva.pt"
    file.write_bytes(b"x")
    assert resolve_weights(file, "EVA") == file
    assert resolve_weights(tmp_path, "EVA", folder_file="eva.pt") == file
    assert resolve_weights(tmp_path, "a folder") == tmp_path
    nested = tmp_path / "zip" / "antelopev2"
    nested.mkdir(parents=True)
    for name in ("a.onnx", "b.onnx"):
        (nested / name).write_bytes(b"x")
    assert (
        resolve_weights(tmp_path / "zip", "ante", folder_files=("a.onnx", "b.onnx"), nested=("antelopev2",))
        == nested
    )
    with pytest.raises(
        MissingWeightsError, match=rf"^ante not found: {tmp_path / 'zip'} lacks a.onnx, b.onnx; "
    ):
        resolve_weights(tmp_path / "zip", "ante", folder_files=("a.onnx", "b.onnx"))
    with pytest.raises(CheckpointError, match="is a file; expected a folder of ante"):
        resolve_weights(file, "ante", folder_files=("a.onnx",))
    with pytest.raises(MissingWeightsError, match=r"^EVA not found: .*eva\.pt; run `idgen doctor`"):
        resolve_weights(tmp_path / "zip", "EVA", folder_file="eva.pt")


def test_resolve_hub_ids_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls = []

    def file_download(repo_id: str, filename: str) -> str:
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    def snapshot(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, tuple(allow_patterns)))
        for name in allow_patterns:
            (tmp_path / name).write_bytes(b"x")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", file_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert resolve_weights("guozinan/PuLID", "P", repo_file="p.safetensors") == tmp_path / "p.safetensors"
    assert resolve_weights("o/n/sub/f.pt", "P", repo_file="ignored") == tmp_path / "sub/f.pt"
    assert resolve_weights("o/n", "W") == tmp_path  # config.json + model.safetensors
    assert resolve_weights("o/ante", "A", folder_files=("x.onnx",)) == tmp_path
    assert calls == [
        ("guozinan/PuLID", "p.safetensors"),
        ("o/n", "sub/f.pt"),
        ("o/n", ("config.json", "model.safetensors")),
        ("o/ante", ("x.onnx",)),
    ]


def test_hub_id_not_in_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in cache\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError) as info:
        load_pulid_adapter("guozinan/PuLID")
    assert str(info.value) == (
        "PuLID-FLUX checkpoint: guozinan/PuLID/pulid_flux_v0.9.1.safetensors is not in the local "
        f"Hugging Face cache and cannot be downloaded (LocalEntryNotFoundError); {DOCTOR_HINT}"
    )


def test_relative_paths_resolve_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "eva.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights(os.path.join("w", "eva.pt"), "EVA") == Path("w/eva.pt")
