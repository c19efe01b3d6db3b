"""`sft.py --preset qwen` writes its bootstrapped seed data as it is made, one JSONL line per
problem and batch, and a restart of the same command reuses it: the problems already done are
not sampled again, and the seed data is what an uninterrupted bootstrap makes."""
import json

import pytest

from support import data
from support import model as M
import sft
from support import bootstrap
from support.errors import UserError
from test_qwen import qwen_dir, solving_sampler  # noqa: F401 (a fixture)

PROBLEMS = data.train_problems("gsm8k", limit=10)


class Crash(Exception):
    pass


def counting_sampler(monkeypatch, crash_after=None):
    """The solving stand-in of test_qwen, counting the prompts it is asked; raises Crash once
    it has answered `crash_after` generate calls."""
    real = solving_sampler(PROBLEMS)
    asked = []

    def sample(model, tok, prompt_texts, n=1, **kw):
        if crash_after is not None and len(asked) >= crash_after:
            raise Crash
        asked.append(list(prompt_texts))
        return real(model, tok, prompt_texts, n=n, **kw)
    monkeypatch.setattr(M, "sample", sample)
    return asked


def boot(path, header=None):
    return bootstrap.bootstrap_seed_data(None, None, PROBLEMS, 2, 8, 1.0, micro_batch=6, seed=0,
                                   gamma=0.0, progress_path=str(path), header=header or {"a": 1})


def test_an_interrupted_bootstrap_resumes_where_it_stopped(tmp_path, monkeypatch):
    counting_sampler(monkeypatch)
    whole = boot(tmp_path / "whole.jsonl")
    path = tmp_path / "progress.jsonl"
    counting_sampler(monkeypatch, crash_after=4)   # two batches of 3 problems, then a crash
    with pytest.raises(Crash):
        boot(path)
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert lines[0] == {"header": {"a": 1}} and len(lines) == 1 + 6   # written as it was made
    asked = counting_sampler(monkeypatch)
    assert boot(path) == whole
    plain = [q for call in asked for q in call if "Problem:" in q and q.startswith("Solve")]
    first_stage = {q for q in plain if "Principles" not in q and "attempt" not in q.lower()}
    done = {p["question"] for p in PROBLEMS[:6]}
    assert not any(q.split("Problem:")[-1].split("\n")[0].strip() in done for q in first_stage)
    assert len(asked) >= 2                          # the rest was sampled
    asked.clear()
    assert boot(path) == whole and asked == []      # all done: nothing is sampled again


def test_a_torn_last_line_is_dropped_and_other_settings_are_refused(tmp_path, monkeypatch):
    counting_sampler(monkeypatch)
    whole = boot(tmp_path / "whole.jsonl")
    path = tmp_path / "progress.jsonl"
    counting_sampler(monkeypatch, crash_after=2)
    with pytest.raises(Crash):
        boot(path)
    with open(path, "a") as f:
        f.write('{"stage": "skills", "problem_id": "gsm8k/tr')   # the crash came mid-write
    counting_sampler(monkeypatch)
    assert boot(path) == whole
    with pytest.raises(UserError, match="other settings"):
        boot(path, header={"a": 2})


def test_sft_main_continues_an_interrupted_bootstrap(qwen_dir, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "sft"
    argv = ["--preset", "qwen", "--model", qwen_dir, "--out", str(out), "--data", "gsm8k",
            "--bootstrap-problems", "10", "--bootstrap-samples", "2", "--sample-micro-batch", "6",
            "--steps", "1", "--batch-size", "2", "--max-new-tokens", "8", "--eval-limit", "1",
            "--gamma", "0"]
    real_sample = M.sample
    stand_in = solving_sampler(PROBLEMS)
    calls = []

    def sample(model, tok, prompt_texts, **kw):   # bootstrap prompts: the solving stand-in
        if len(calls) == 3 and not kw.get("greedy"):
            calls.append("crash")
            raise Crash
        if kw.get("greedy"):                       # the end-of-SFT report: the real model
            return real_sample(model, tok, prompt_texts, **kw)
        calls.append(len(prompt_texts))
        return stand_in(model, tok, prompt_texts, **kw)
    monkeypatch.setattr(M, "sample", sample)
    with pytest.raises(Crash):
        sft.main(argv)
    assert sorted(p.name for p in out.iterdir()) == [bootstrap.BOOTSTRAP_FILE]
    sft.main(argv)                                 # the same command, no --overwrite
    # batch 1 (3 problems: answers, then summaries + reflections), batch 2's answers, crash;
    # the restart samples batch 2 again (its records were not written) and never batch 1
    assert calls[:6] == [3, 6, 3, "crash", 3, 6]
    assert calls[4:10] == [3, 6, 3, 6, 1, 2]   # batches 2, 3 and 4 (one problem)
    assert (out / "config.json").exists() and not (out / bootstrap.BOOTSTRAP_FILE).exists()
    seed = [json.loads(l) for l in (out / "seed_data.jsonl").read_text().splitlines()]
    report = json.loads((out / "sft_report.json").read_text())
    assert len(seed) == sum(report["seed_examples"].values()) > 0


def test_overwrite_keeps_a_bootstrap_with_the_same_settings_only(qwen_dir, tmp_path,  # noqa: F811
                                                                   monkeypatch):
    out = tmp_path / "sft"
    out.mkdir()
    argv = ["--preset", "qwen", "--model", qwen_dir, "--out", str(out), "--data", "gsm8k",
            "--bootstrap-problems", "4", "--bootstrap-samples", "2", "--steps", "1",
            "--batch-size", "2", "--max-new-tokens", "8", "--eval-limit", "1", "--gamma", "0",
            "--overwrite"]
    real_sample, stand_in = M.sample, solving_sampler(PROBLEMS)
    asked = []

    def sample(model, tok, prompt_texts, **kw):
        if kw.get("greedy"):
            return real_sample(model, tok, prompt_texts, **kw)
        asked.append(len(prompt_texts))
        return stand_in(model, tok, prompt_texts, **kw)
    monkeypatch.setattr(M, "sample", sample)
    # an interrupted bootstrap of these 4 problems, all done: reused, nothing sampled
    counting_sampler(monkeypatch)
    header = {"model": qwen_dir, "gguf_file": None, "data": "gsm8k", "bootstrap_problems": 4,
              "bootstrap_samples": 2, "max_new_tokens": 8, "temperature": 1.0, "seed": 0,
              "gamma": 0.0}
    bootstrap.bootstrap_seed_data(None, None, PROBLEMS[:4], 2, 8, 1.0, 6, 0, 0.0,
                            progress_path=str(out / bootstrap.BOOTSTRAP_FILE), header=header)
    monkeypatch.setattr(M, "sample", sample)
    sft.main(argv)
    assert asked == []
    # with other settings, --overwrite discards it and samples again
    (out / bootstrap.BOOTSTRAP_FILE).write_text(json.dumps({"header": dict(header, seed=5)}) + "\n")
    sft.main(argv)
    assert asked
