import json

import pytest

from idgen.errors import IdgenError
from idgen.eval.manifest import (
    Benchmark,
    BenchPrompt,
    IdentityPhoto,
    SeedPolicy,
    benchmark_from_record,
    from_files,
    named,
    photo_ids,
    read_ibench_prompts,
    read_photo_folder,
    read_prompts_text,
)


def write_ibench(path, datas):
    path.write_text(json.dumps({"datas": datas}))
    return path


def test_ibench_prompts_keep_their_numbers_as_ids(tmp_path):
    path = write_ibench(
        tmp_path / "p.json", [{"num": 3, "prompt": " a man "}, {"num": 10, "prompt": "a woman"}]
    )
    assert read_ibench_prompts(path) == [BenchPrompt("003", "a man"), BenchPrompt("010", "a woman")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"datas": []}', "no prompts"),
        ('{"prompts": []}', "no 'datas' list"),
        ('{"datas": [{"prompt": "x"}]}', "lacks 'num' or 'prompt'"),
        ('{"datas": [{"num": 1, "prompt": "  "}]}', "empty prompt"),
        ("{not json", "not valid json"),
        ('{"datas": [{"num": 1, "prompt": null}]}', "entry 0 \\(num 1\\) has 'prompt' null, not text"),
        ('{"datas": [{"num": 1, "prompt": 7}]}', "has 'prompt' 7, not text"),
        ('{"datas": [{"num": "one", "prompt": "x"}]}', "entry 0 has 'num' \"one\", not a whole number"),
        ('{"datas": [{"num": 1.5, "prompt": "x"}]}', "has 'num' 1.5, not a whole number"),
        ('{"datas": [{"num": -1, "prompt": "x"}]}', "has 'num' -1"),
        ("[1, 2]", "no 'datas' list"),
    ],
)
def test_bad_ibench_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(IdgenError, match=message):
        read_ibench_prompts(path)


def test_duplicate_prompt_numbers_are_refused(tmp_path):
    path = write_ibench(tmp_path / "p.json", [{"num": 1, "prompt": "a"}, {"num": 1, "prompt": "b"}])
    (tmp_path / "person.png").write_bytes(b"x")
    with pytest.raises(IdgenError, match="duplicate prompt id '001'"):
        from_files(tmp_path, path)


def test_text_prompts_skip_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n\na cat\n  a dog  \n")
    assert [p.text for p in read_prompts_text(path)] == ["a cat", "a dog"]
    path.write_text("# only a comment\n\n")
    with pytest.raises(IdgenError, match="prompts file has no prompts"):
        read_prompts_text(path)


def test_photo_folder_reads_genders_and_reports_what_it_does_not_use(tmp_path):
    for name, data in (("b.png", b"b"), ("a.jpg", b"a"), ("notes.txt", b"n"), ("empty.png", b"")):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "nested").mkdir()
    (tmp_path / "manifest.json").write_text(
        json.dumps({"faces": [{"num": 0, "file": "a.jpg", "gender": "male"}]})
    )
    photos, ignored = read_photo_folder(tmp_path)
    assert [(p.id, p.gender) for p in photos] == [("a", "male"), ("b", None)]
    assert (
        photos[0].sha256 == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    )  # sha256 "a"
    assert ignored == [
        ("empty.png", "an empty file"),
        ("nested", "a folder (photo folders are not searched recursively)"),
        ("notes.txt", "not an image file name"),
    ]


def test_a_photo_folder_that_is_missing_empty_or_a_file_is_named(tmp_path):
    (tmp_path / "me.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    for folder, message in (
        (tmp_path / "me.png", "photo folder is a file, not a folder: "),
        (tmp_path / "absent", "photo folder not found: "),
        (tmp_path / "empty", r"photo folder has no images \(\.jpg, "),
    ):
        with pytest.raises(IdgenError, match=message):
            read_photo_folder(folder)


def test_same_stem_photos_get_distinct_stable_ids_and_duplicates_count_once(tmp_path):
    # IBench's chineseid folder: R (1).jpg and R (1).png, R.jpg and R.png; two byte-identical copies.
    for name, data in (("R (1).jpg", b"1j"), ("R (1).png", b"1p"), ("R.jpg", b"rj"), ("R.png", b"1j"),
                       ("S.webp", b"s")):  # fmt: skip
        (tmp_path / name).write_bytes(data)
    photos, ignored = read_photo_folder(tmp_path)
    assert [p.id for p in photos] == ["R (1)-jpg", "R (1)-png", "R-jpg", "S"]
    assert ignored == [("R.png", "byte-identical to R (1).jpg")]
    kept, ignored = read_photo_folder(tmp_path, keep_duplicates=True)
    assert [p.id for p in kept] == ["R (1)-jpg", "R (1)-png", "R-jpg", "R-png", "S"]
    assert ignored == [("R.png", "byte-identical to R (1).jpg (kept)")]
    assert [p.id for p in read_photo_folder(tmp_path)[0]] == [
        "R (1)-jpg",
        "R (1)-png",
        "R-jpg",
        "S",
    ]  # stable


@pytest.mark.parametrize(
    ("names", "ids"),
    [
        (["...png"], ["__"]),  # the stem ".." must never become a path component
        ([".png.png"], ["_png"]),
        (["a#b?.png", "a%b.png"], ["a_b_", "a_b"]),
        (["a_b.png", "a?b.png"], ["a_b-png", "a_b-png-2"]),  # equal after sanitising: a counter
        (["x/../y.png"], ["y"]),
    ],
)
def test_identity_ids_never_escape_the_run_folder_or_collide(names, ids):
    from pathlib import Path

    got = photo_ids([Path(n) for n in names])
    assert got == ids
    assert all("/" not in i and not i.startswith(".") for i in got)


def test_source_code_and_other_files_are_not_prompt_lists(tmp_path):
    code = tmp_path / "prompt.py"
    code.write_text('JUDGE = """You are a judge.\nRate the image."""\n')
    with pytest.raises(
        IdgenError, match=r"must be IBench's json or a \.txt with one prompt per line, not \.py"
    ):
        read_prompts_text(code)
    disguised = tmp_path / "prompt.txt"
    disguised.write_text("import os\nprompt = 'x'\n")
    with pytest.raises(IdgenError, match="looks like source code"):
        read_prompts_text(disguised)
    with pytest.raises(IdgenError, match="prompts file is a folder"):
        read_prompts_text(tmp_path)


def test_limits_take_the_first_photos_and_prompts(tmp_path):
    for name in ("c.png", "a.png", "b.png"):
        (tmp_path / name).write_bytes(name.encode())
    prompts = write_ibench(tmp_path / "p.json", [{"num": n, "prompt": f"p{n}"} for n in (5, 1, 3)])
    bench = from_files(tmp_path, prompts, SeedPolicy("fixed", 42)).limited(2, 2)
    assert [(p.identity.id, p.prompt.id, p.seed) for p in bench.all_pairs()] == [
        ("a", "005", 42), ("a", "001", 42), ("b", "005", 42), ("b", "001", 42)
    ]  # fmt: skip
    with pytest.raises(IdgenError, match="--limit-photos must be >= 1, got 0"):
        bench.limited(0, 1)


def test_seed_policies():
    person, prompt = IdentityPhoto("x", None), BenchPrompt("007", "p")  # type: ignore[arg-type]
    assert SeedPolicy("fixed", 5).seed(person, 3, prompt) == 5
    assert SeedPolicy("per-prompt", 5).seed(person, 3, prompt) == 8
    a = SeedPolicy("per-pair", 5).seed(person, 3, prompt)
    assert a == SeedPolicy("per-pair", 5).seed(person, 0, prompt)  # depends on ids, not positions
    assert a != SeedPolicy("per-pair", 5).seed(IdentityPhoto("y", None), 3, prompt)  # type: ignore[arg-type]
    with pytest.raises(IdgenError, match="unknown seed policy"):
        SeedPolicy("random")


def test_plan_record_round_trips(tmp_path):
    bench = Benchmark(
        "b", (IdentityPhoto("i0", tmp_path / "i0.png"),), (BenchPrompt("000", "p0"), BenchPrompt("001", "p1"))
    )
    out = tmp_path / "runs" / "out"
    record = bench.describe(out)
    assert record["identities"][0]["path"] == "../../i0.png"  # relative to the run folder
    again = benchmark_from_record(record, out)
    assert again.identities[0].path.resolve() == tmp_path / "i0.png"
    assert [(p.identity.id, p.prompt.text, p.seed) for p in again.all_pairs()] == [
        (p.identity.id, p.prompt.text, p.seed) for p in bench.all_pairs()
    ]


def test_demo_quick_is_the_first_gate_pairs_with_rendered_references(tmp_path):
    import idgen.world.eval_plugin  # noqa: F401  (registers the demo benchmarks)
    from idgen.world.gates import pairs

    bench = named("demo-quick", tmp_path)
    got = bench.all_pairs()
    assert [(p.prompt.text, p.seed) for p in got] == [(q.prompt.text, q.seed) for q in pairs(1)[:12]]
    assert not (tmp_path / "references").exists()  # rendered only when a run has checked its plan
    bench.prepare()
    assert all(p.identity.path.is_file() and p.identity.backdrop_rgb is not None for p in got)
    with pytest.raises(
        IdgenError, match="unknown benchmark 'ibench-full' \\(built-in: demo, demo-quick, demo-validation\\)"
    ):
        named("ibench-full", tmp_path)
