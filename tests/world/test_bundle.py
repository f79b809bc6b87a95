"""The asset manifest names a missing or corrupted file; `idgen world render` writes renders with masks."""

import hashlib
import json
import shutil

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


def test_a_corrupt_manifest_is_one_line(tmp_path):
    make_assets(tmp_path)
    for text in ("{not json", '["a list"]', '{"pulid/config.json": {"sha256": 1}}', "\xff"):
        (tmp_path / "MANIFEST.json").write_text(text, encoding="latin-1")
        with pytest.raises(IdgenError, match=r"^demo-world manifest is corrupt: .*MANIFEST\.json$"):
            verify(tmp_path)


def test_shipped_evaluators_are_checked_before_use(tmp_path, monkeypatch):
    """One flipped bit in an evaluator's weights is refused by name (it once made every FaceSim 0)."""
    from idgen.world import bundle
    from idgen.world.evaluators import FaceRecognizer

    shutil.copytree(bundle.ASSETS / "evaluators" / "face", tmp_path / "evaluators" / "face")
    write_manifest(tmp_path)
    monkeypatch.setattr(bundle, "ASSETS", tmp_path)
    FaceRecognizer.from_pretrained(tmp_path / "evaluators" / "face")  # intact: loads
    weights = tmp_path / "evaluators" / "face" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(
        IdgenError, match=r"corrupted \(sha256 mismatch\): .*evaluators/face/model\.safetensors"
    ):
        FaceRecognizer.from_pretrained(tmp_path / "evaluators" / "face")
    with bundle.rebuilding(tmp_path):  # `idgen world train` reads what it has just written
        FaceRecognizer.from_pretrained(tmp_path / "evaluators" / "face")
    bundle.verify_shipped(tmp_path / "references")  # nothing listed under it: nothing to check


def test_each_file_is_hashed_once(tmp_path, monkeypatch):
    from idgen.world import bundle

    make_assets(tmp_path)
    verify(tmp_path)
    opened = []
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    )
    verify(tmp_path)
    assert opened == []  # the manifest is read with read_text; no asset is read again
    (tmp_path / "pulid" / "config.json").write_text('{"changed": 1}')  # new size and mtime: hashed again
    with pytest.raises(IdgenError, match="corrupted"):
        bundle.verify(tmp_path)
