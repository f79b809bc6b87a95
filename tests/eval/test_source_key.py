"""How a local model folder is keyed for resuming (`idgen.eval.protocols.source_key`)."""

import hashlib
import json
import os
import shutil

from idgen.eval.protocols import ContentHash, source_key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def model_folder(root, weights: bytes):
    write(root / "config.json", b'{"layers": 2}')
    write(root / "transformer" / "model.safetensors", weights)
    return root


def test_the_rule_is_16_blocks_of_1_mib_above_64_mib():
    assert ContentHash() == ContentHash(whole_max_bytes=64 << 20, blocks=16, block_bytes=1 << 20)


def test_a_folder_is_keyed_by_its_listing_of_paths_sizes_and_full_sha256(tmp_path):
    folder = model_folder(tmp_path / "m", b"weights-1")
    listing = [
        ["config.json", 13, "sha256:" + sha(b'{"layers": 2}')],
        ["transformer/model.safetensors", 9, "sha256:" + sha(b"weights-1")],
    ]
    assert source_key(str(folder)) == "folder sha256:" + sha(json.dumps(listing).encode())


def test_retrained_weights_of_the_same_names_and_sizes_change_the_key(tmp_path):
    old = source_key(str(model_folder(tmp_path / "old", b"weights-1")))
    new = source_key(str(model_folder(tmp_path / "new", b"weights-2")))  # one byte differs
    assert old != new


def test_the_key_is_the_same_for_the_same_content_anywhere_and_at_any_time(tmp_path, monkeypatch):
    a = model_folder(tmp_path / "a", b"weights-1")
    key = source_key(str(a))
    shutil.copytree(a, tmp_path / "elsewhere" / "b")
    os.utime(tmp_path / "elsewhere/b/transformer/model.safetensors", (0, 0))  # mtimes play no part
    assert source_key(str(tmp_path / "elsewhere" / "b")) == key
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert source_key("b") == key  # by a relative path
    assert source_key(str(a)) == key  # stable across calls


def test_hidden_files_and_folders_are_left_out(tmp_path):
    folder = model_folder(tmp_path / "m", b"weights-1")
    key = source_key(str(folder))
    write(folder / ".DS_Store", b"x")
    write(folder / ".cache" / "huggingface" / "download" / "model.safetensors.metadata", b"etag 1234")
    write(folder / "transformer" / ".model.safetensors.lock", b"")
    assert source_key(str(folder)) == key
    write(folder / "transformer" / "extra.json", b"{}")
    assert source_key(str(folder)) != key  # a visible file counts


def test_a_large_file_is_keyed_by_its_size_and_evenly_spaced_blocks(tmp_path):
    rule = ContentHash(whole_max_bytes=1000, blocks=4, block_bytes=100)
    data = bytes(range(256)) * 39 + bytes(16)  # 10_000 bytes
    write(tmp_path / "m" / "big.bin", data)
    starts = (0, 3300, 6600, 9900)  # i * (10_000 - 100) // 3: the first block starts it, the last ends it
    digest = "sampled sha256:" + sha(b"".join(data[s : s + 100] for s in starts))
    assert rule.file_digest(tmp_path / "m" / "big.bin") == digest
    listing = [["big.bin", 10_000, digest]]
    assert source_key(str(tmp_path / "m"), rule) == "folder sha256:" + sha(json.dumps(listing).encode())


def test_a_large_file_changes_key_when_a_sampled_block_changes(tmp_path):
    rule = ContentHash(whole_max_bytes=1000, blocks=4, block_bytes=100)
    data = bytearray(10_000)
    write(tmp_path / "m" / "big.bin", bytes(data))
    key = source_key(str(tmp_path / "m"), rule)
    assert source_key(str(tmp_path / "m"), rule) == key
    for offset in (0, 3350, 6699, 9999):  # inside the first, second, third and last block
        changed = bytearray(data)
        changed[offset] = 1
        write(tmp_path / "m" / "big.bin", bytes(changed))
        assert source_key(str(tmp_path / "m"), rule) != key, offset
    changed = bytearray(data)
    changed[5000] = 1  # between blocks: not seen, the stated limit of sampling
    write(tmp_path / "m" / "big.bin", bytes(changed))
    assert source_key(str(tmp_path / "m"), rule) == key
    write(tmp_path / "m" / "big.bin", bytes(10_001))  # a size change always counts
    assert source_key(str(tmp_path / "m"), rule) != key


def test_a_file_at_the_threshold_is_hashed_whole(tmp_path):
    rule = ContentHash(whole_max_bytes=1000, blocks=2, block_bytes=10)
    write(tmp_path / "w.bin", bytes(1000))
    assert rule.file_digest(tmp_path / "w.bin") == "sha256:" + sha(bytes(1000))
    write(tmp_path / "w.bin", bytes(1001))
    assert rule.file_digest(tmp_path / "w.bin") == "sampled sha256:" + sha(bytes(20))


def test_hub_ids_built_in_names_and_single_files_keep_their_keys(tmp_path):
    write(tmp_path / "pulid.safetensors", b"weights")
    assert source_key(str(tmp_path / "pulid.safetensors")) == "file sha256:" + sha(b"weights")
    assert source_key("guozinan/PuLID") == "guozinan/PuLID"
    assert source_key("tiny-random") == "tiny-random"
    assert source_key(None) is None
