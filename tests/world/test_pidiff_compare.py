"""What `python -m idgen.world.pidiff` keys its eval folders on (the full comparison is not run here)."""

import hashlib

import pytest

from idgen.errors import IdgenError
from idgen.world.bundle import ASSETS, WORLD_DEFAULTS
from idgen.world.pidiff import compare, compare_settings


def assets_with_manifest(root, text: str):
    root.mkdir(parents=True, exist_ok=True)
    (root / "MANIFEST.json").write_text(text)
    return root


def manifest_key(text: str) -> str:
    return "file sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_settings_key_the_branch_and_the_assets_manifest(tmp_path):
    assets = assets_with_manifest(tmp_path / "assets", '{"pidiff/model.safetensors": 1}\n')
    assert compare_settings("pidiff", assets) == {
        "protocol": None,
        "sampling": WORLD_DEFAULTS,
        "explicit": [],
        "models": {"world": "pidiff", "assets": manifest_key('{"pidiff/model.safetensors": 1}\n')},
        "metric_models": "demo-world evaluators",
    }
    assert compare_settings("pulid", assets)["models"]["world"] == "pulid"


def test_settings_change_when_the_manifest_changes_and_not_with_the_folder(tmp_path):
    old = compare_settings("pidiff", assets_with_manifest(tmp_path / "a", "retrain 1\n"))
    assert compare_settings("pidiff", assets_with_manifest(tmp_path / "copy", "retrain 1\n")) == old
    assert compare_settings("pidiff", assets_with_manifest(tmp_path / "a", "retrain 2\n")) != old


def test_the_shipped_assets_are_keyed_by_their_manifest():
    key = "file sha256:" + hashlib.sha256((ASSETS / "MANIFEST.json").read_bytes()).hexdigest()
    assert compare_settings("pulid", ASSETS)["models"]["assets"] == key


def test_missing_manifest_or_unknown_branch_is_refused(tmp_path):
    with pytest.raises(IdgenError, match=r"no MANIFEST\.json"):
        compare_settings("pidiff", tmp_path)
    with pytest.raises(IdgenError, match="unknown identity branch 'w'"):
        compare_settings("w", assets_with_manifest(tmp_path, "{}"))


def test_compare_refuses_a_folder_of_other_weights_before_loading_them(tmp_path, monkeypatch):
    from idgen.eval.folder import check_plan
    from idgen.eval.runner import Method, plan_record
    from idgen.world import bundle, pidiff
    from idgen.world.eval_plugin import builtin

    def no_loading(**_):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(bundle, "load_world", no_loading)
    monkeypatch.setattr(pidiff, "load_pidiff_world", no_loading)
    assets = assets_with_manifest(tmp_path / "assets", "before retraining\n")
    folder = tmp_path / "out" / "pulid"
    methods = [Method("uniform"), Method("spatial")]
    bench = builtin("demo-quick", folder / "references")
    check_plan(folder, plan_record(bench, methods, compare_settings("pulid", assets), 8, folder))
    (assets / "MANIFEST.json").write_text("after retraining\n")
    with pytest.raises(IdgenError, match=r"holds results of a different plan: generation\.models\.assets"):
        compare(tmp_path / "out", "demo-quick", assets=assets)
    assert not (folder / "references").exists()  # refused before anything was written


def test_the_built_in_benchmarks_follow_the_gates_pairs_on_their_split(tmp_path):
    from idgen.world.eval_plugin import builtin
    from idgen.world.gates import pairs, reference_seed

    cases = (("demo", "test", 100), ("demo-quick", "test", 12), ("demo-validation", "validation", 100))
    for name, split, count in cases:
        bench = builtin(name, tmp_path / name)
        chosen = pairs(1, split)[:count]
        assert [p.id for p in bench.identities] == [f"{split}_{p.identity:03d}" for p in chosen]
        assert [seed for _, _, seed in bench.pairs] == [p.seed for p in chosen]
        assert [bench.prompts[i].text for _, i, _ in bench.pairs] == [p.prompt.text for p in chosen]
    assert reference_seed(7, "validation") == 500_007 and reference_seed(7, "test") == 7
    validation = builtin("demo-validation", tmp_path / "v")
    test = builtin("demo", tmp_path / "t")
    assert not {p.text for p in validation.prompts} & {p.text for p in test.prompts}  # held out
    assert validation.identities[0].id == "validation_000" and test.identities[0].id == "test_000"
