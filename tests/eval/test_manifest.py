import json

import pytest

from idgen.errors import IdgenError
from idgen.eval.manifest import (
    Benchmark,
    BenchPrompt,
    IdentityPhoto,
    SeedPolicy,
    benchmark_from_record,
    builtin,
    from_files,
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


def test_photo_folder_reads_genders_and_refuses_duplicate_ids(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "manifest.json").write_text(
        json.dumps({"faces": [{"num": 0, "file": "a.jpg", "gender": "male"}]})
    )
    photos = read_photo_folder(tmp_path)
    assert [(p.id, p.gender) for p in photos] == [("a", "male"), ("b", None)]
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(IdgenError, match="duplicate identity id 'a'"):
        read_photo_folder(tmp_path)


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
    again = benchmark_from_record(bench.describe())
    assert [(p.identity.id, p.prompt.text, p.seed) for p in again.all_pairs()] == [
        (p.identity.id, p.prompt.text, p.seed) for p in bench.all_pairs()
    ]


def test_demo_quick_is_the_first_gate_pairs_with_rendered_references(tmp_path):
    from idgen.world.gates import pairs

    bench = builtin("demo-quick", tmp_path)
    got = bench.all_pairs()
    assert [(p.prompt.text, p.seed) for p in got] == [(q.prompt.text, q.seed) for q in pairs(1)[:12]]
    assert all(p.identity.path.is_file() and p.identity.backdrop_rgb is not None for p in got)
    with pytest.raises(IdgenError, match="unknown benchmark"):
        builtin("ibench-full", tmp_path)
