"""The asset manifest names a missing or corrupted file; `idgen world render` writes renders with masks."""

import hashlib
import json

import pytest
from PIL import Image

from idgen.cli import main
from idgen.errors import IdgenError
from idgen.world.bundle import verify, write_manifest


def make_assets(root):
    (root / "flux" / "vae").mkdir(parents=True)
    (root / "flux" / "vae" / "model.safetensors").write_bytes(b"weights")
    (root / "pulid").mkdir()
    (root / "pulid" / "config.json").write_text("{}")
    return write_manifest(root)


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    manifest = make_assets(tmp_path)
    assert sorted(manifest) == ["flux/vae/model.safetensors", "pulid/config.json"]
    assert manifest["flux/vae/model.safetensors"] == {
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "bytes": 7,
    }
    verify(tmp_path)


def test_corrupted_and_missing_assets_are_named(tmp_path):
    make_assets(tmp_path)
    (tmp_path / "flux" / "vae" / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(IdgenError, match=r"corrupted \(sha256 mismatch\): .*flux/vae/model\.safetensors"):
        verify(tmp_path)
    verify(tmp_path, parts=("pulid",))  # only the parts asked for are checked
    (tmp_path / "pulid" / "config.json").unlink()
    with pytest.raises(IdgenError, match=r"asset missing: .*pulid/config\.json"):
        verify(tmp_path, parts=("pulid",))
    (tmp_path / "MANIFEST.json").unlink()
    with pytest.raises(IdgenError, match="missing their manifest"):
        verify(tmp_path)


def test_world_render_writes_images_masks_and_index(tmp_path):
    assert main(["world", "render", "--out", str(tmp_path), "--count", "3", "--split", "test"]) == 0
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [e["image"] for e in index] == ["test_00000.png", "test_00001.png", "test_00002.png"]
    for entry in index:
        image = Image.open(tmp_path / entry["image"])
        mask = Image.open(tmp_path / entry["mask"])
        assert image.size == mask.size == (64, 64)
        assert entry["caption"] and entry["split"] == "test"
        left, top, right, bottom = entry["face_box"]
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64
    again = tmp_path / "again"
    assert main(["world", "render", "--out", str(again), "--count", "3", "--split", "test"]) == 0
    assert (again / "test_00001.png").read_bytes() == (tmp_path / "test_00001.png").read_bytes()
