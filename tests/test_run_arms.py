"""The experiments' bookkeeping. experiments/run_arms.py, behind every reported interval: the
two-level bootstrap resamples SFT seeds and then RL seeds, contrasts pair runs of the same SFT
model and RL seed, and a run is reused, continued from a shorter one, or resumed in place after
a kill, never silently redone or mixed up. experiments/is_weights.py: the weight it reports is
the response's first token's."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import run_arms as R  # noqa: E402


def test_the_bootstrap_resamples_sft_models_not_runs():
    """Two runs per SFT model that agree with each other and not across models: the interval
    must be as wide as five independent draws give, not as narrow as ten would (a bootstrap
    that resampled runs would treat two runs of one SFT model as two draws)."""
    spread = {0: 0.0, 1: 0.4, 2: 0.1, 3: 0.9, 4: 0.5}
    two_level = R.cluster_bootstrap({(s, r): v + 0.001 * r for s, v in spread.items()
                                     for r in (0, 1)})
    as_if_ten = R.cluster_bootstrap({(2 * s + r, 0): v + 0.001 * r for s, v in spread.items()
                                     for r in (0, 1)})
    assert two_level["n"] == 10 and two_level["sft_seeds"] == 5
    assert two_level["mean"] == pytest.approx(0.3805)
    assert two_level["lo"] <= two_level["mean"] <= two_level["hi"]
    assert 0.0 <= two_level["lo"] and two_level["hi"] <= 0.901
    assert (two_level["hi"] - two_level["lo"]) > 1.25 * (as_if_ten["hi"] - as_if_ten["lo"])


def test_the_bootstrap_of_equal_values_is_a_point_and_skips_missing_runs():
    b = R.cluster_bootstrap({(0, 0): 0.5, (1, 0): 0.5, (2, 0): None, (2, 1): 0.5,
                             (3, 0): None})
    assert (b["lo"], b["mean"], b["hi"], b["n"], b["sft_seeds"]) == (0.5, 0.5, 0.5, 3, 3)
    assert R.cluster_bootstrap({(0, 0): None}) is None


def fake_result(greedy, sampled):
    return {"final": {"rl-test": {"zero-shot": greedy}}, "sampled": {"rl-test": {"mean@8": sampled}}}


def test_contrasts_pair_runs_of_the_same_sft_model_and_rl_seed():
    """Arm a is arm b + 0.1 in every pair while the runs themselves differ by up to 0.8: the
    paired difference is exactly 0.1 (an unpaired one would be wide). A run missing from one
    arm drops out of the pairs."""
    base = {(s, r): 0.1 * s + 0.3 * r for s in range(5) for r in (0, 1)}
    runs = {"lanpo": [(s, r, fake_result(v + 0.1, v / 2 + 0.05)) for (s, r), v in base.items()],
            "grpo": [(s, r, fake_result(v, v / 2)) for (s, r), v in base.items() if (s, r) !=
                     (4, 1)]}
    c = R.contrasts("controls", runs)["lanpo - grpo"]
    assert c["greedy"]["n"] == 9 and c["sampled"]["n"] == 9
    for what, d in (("greedy", 0.1), ("sampled", 0.05)):
        assert c[what]["lo"] == pytest.approx(d) and c[what]["hi"] == pytest.approx(d), what
    # the direction is arm minus the other
    runs["lanpo"], runs["grpo"] = runs["grpo"], runs["lanpo"]
    assert R.contrasts("controls", runs)["lanpo - grpo"]["greedy"]["mean"] == pytest.approx(-0.1)


@pytest.fixture
def arms_dir(tmp_path, monkeypatch):
    """run_arms with its runs under tmp_path and train.py replaced by a recorder."""
    monkeypatch.setattr(R, "HERE", str(tmp_path))
    calls = []

    def call(cmd, **kw):
        calls.append(cmd)
        return 0
    monkeypatch.setattr(R.subprocess, "call", call)
    return tmp_path, calls


def make_run(root, suite, arm, flags, steps, eval_every=25, finished=True, checkpoint=True,
             sft_seed=0, seed=0):
    arm_dir = root / "runs" / suite / arm
    d = arm_dir / f"sft{sft_seed}-rl{seed}"
    os.makedirs(d / "checkpoint" if checkpoint else d)
    (arm_dir / "flags.json").write_text(json.dumps(flags))
    (d / "config.json").write_text(json.dumps({"steps": steps, "eval_every": eval_every}))
    (d / "metrics.jsonl").write_text(f"written by the run of {steps} steps\n")
    if finished:
        (d / "eval.json").write_text(json.dumps({"step": steps}))
    return str(d)


def args(steps, name=None):
    return R.argparse.Namespace(steps=steps, eval_every=25, extra=[], name=name)


def test_a_finished_run_with_the_same_flags_is_reused_from_any_suite(arms_dir):
    root, calls = arms_dir
    done = make_run(root, "main", "grpo", ["--p-feedback", "0"], 200)
    # other experiments keep plain files beside the suites' arm folders; they are not arms
    (root / "runs" / "mechanism").mkdir()
    (root / "runs" / "mechanism" / "summaries.json").write_text("{}")
    assert R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(200)) == done
    assert calls == []
    # other flags, another seed, or another length is not the same run
    R.run_one("controls", "lanpo", [], 0, 0, args(200))
    R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 1, args(200))
    assert len(calls) == 2 and all("--overwrite" in c for c in calls)


def test_a_long_run_continues_its_shorter_run_in_a_copy(arms_dir):
    root, calls = arms_dir
    short = make_run(root, "controls", "grpo", ["--p-feedback", "0"], 200)
    d = R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(600, "controls_long"))
    assert d == str(root / "runs" / "controls_long" / "grpo" / "sft0-rl0") and d != short
    cmd = calls[0]
    assert "--resume" in cmd and cmd[cmd.index("--steps") + 1] == "600"
    assert cmd[cmd.index("--run-dir") + 1] == d
    # the copy leaves the short run (and its final eval) as it was, and holds no eval.json
    assert os.path.exists(os.path.join(short, "eval.json"))
    assert not os.path.exists(os.path.join(d, "eval.json"))
    assert open(os.path.join(d, "metrics.jsonl")).read() == "written by the run of 200 steps\n"


def test_a_shorter_run_of_another_checkout_continues_only_from_the_same_sft_weights(
        arms_dir, monkeypatch):
    """A 200-step run made from another checkout names its SFT model by that path; the copy that
    a 600-step run continues is pointed at this checkout's model only when the run's machine
    records show the same weights (sha256), so train.py --resume accepts it; other weights, or no
    record, leave the old path, which train.py refuses."""
    import hashlib
    root, calls = arms_dir
    sft = root / "sft"
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"weights of SFT seed 0")
    monkeypatch.setattr(R, "sft_dir", lambda seed, variant="": str(sft))
    same = hashlib.sha256(b"weights of SFT seed 0").hexdigest()
    for record, adopted in (([{"sft_sha256": same}], True),
                            ([{"sft_sha256": same}, {"sft_sha256": "other weights"}], False),
                            ([], False)):
        short = make_run(root, "controls", "grpo", ["--p-feedback", "0"], 200)
        cfg = {"steps": 200, "eval_every": 25, "init": "/elsewhere/runs/tiny/sft-seed0"}
        (root / "runs" / "controls" / "grpo" / "sft0-rl0" / "config.json").write_text(
            json.dumps(cfg))
        if record:
            with open(os.path.join(short, "made_on.json"), "w") as fh:
                json.dump(record, fh)
        d = R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(600, "long"))
        got = json.load(open(os.path.join(d, "config.json")))
        assert got["init"] == (str(sft) if adopted else cfg["init"]), record
        assert json.load(open(os.path.join(short, "config.json")))["init"] == cfg["init"]
        import shutil
        shutil.rmtree(root / "runs")


def test_a_killed_run_resumes_in_place_instead_of_starting_over(arms_dir):
    """A 600-step run killed at step 580 (checkpoint, config, no eval.json) is continued where
    it stopped; it is not replaced by a fresh copy of its 200-step run."""
    root, calls = arms_dir
    make_run(root, "controls", "grpo", ["--p-feedback", "0"], 200)
    killed = make_run(root, "controls_long", "grpo", ["--p-feedback", "0"], 600, finished=False)
    d = R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(600, "controls_long"))
    assert d == killed and "--resume" in calls[0]
    assert open(os.path.join(d, "metrics.jsonl")).read() == "written by the run of 600 steps\n"


def test_a_run_killed_before_its_first_checkpoint_starts_over(arms_dir):
    root, calls = arms_dir
    make_run(root, "controls", "lanpo", [], 200, finished=False, checkpoint=False)
    R.run_one("controls", "lanpo", [], 0, 0, args(200))
    assert "--overwrite" in calls[0] and "--resume" not in calls[0]


def test_merged_results_summarize_the_union_of_their_runs(tmp_path, monkeypatch):
    """--merge: two committed results of one suite, different SFT seeds, give the summary and
    contrasts of all their runs together; the same pair twice must be the same run, and results
    of another length are refused."""
    monkeypatch.setattr(R, "HERE", str(tmp_path))
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(R, "summarize", lambda runs, seeds: {
        arm: {"runs": [{"sft_seed": ss, "seed": rs, **r} for ss, rs, r in items]}
        for arm, items in runs.items()})

    def result(name, sft_seeds, steps=600, shift=0.0):
        runs = {arm: [(ss, rs, fake_result(0.1 * ss + rs / 100 + (arm == "lanpo") * 0.05 + shift,
                                           0.5)) for ss in sft_seeds for rs in (0, 1)]
                for arm in ("grpo", "lanpo")}
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(
            {"suite": "controls", "steps": steps, "eval_every": 25, "command": name,
             "summary": R.summarize(runs, sft_seeds)}))
        return runs
    a, b = result("a", [0, 1, 2]), result("b", [3, 4])
    runs, made, shape = R.merge(["a", "b"], "controls")
    assert shape == (600, 25) and [m["command"] for m in made] == ["a", "b"]
    assert runs == {arm: a[arm] + b[arm] for arm in a}
    c = R.contrasts("controls", runs)["lanpo - grpo"]["greedy"]
    assert c["n"] == 10 and c["sft_seeds"] == 5 and c["mean"] == pytest.approx(0.05)
    assert R.merge(["a", "a"], "controls")[0] == a   # the same runs twice: counted once
    result("a2", [2], shift=0.01)
    with pytest.raises(SystemExit, match="two different runs"):
        R.merge(["a", "a2"], "controls")
    result("short", [5], steps=200)
    with pytest.raises(SystemExit, match="200 steps"):
        R.merge(["a", "short"], "controls")


def test_is_weights_measures_the_first_response_token_against_a_hand_computed_ratio(
        tiny_dir, monkeypatch):
    """experiments/is_weights.py: with every sample counted a success, the procedure token's
    weight is the mean over samples of min(pi(y_1 | x) / pi(y_1 | x, c), cap) computed here from
    the same samples, and a context equal to the plain prompt gives weight 1 everywhere."""
    import torch
    import is_weights as IW
    from support import model as M
    import prompts
    from support import world as W
    monkeypatch.setattr(IW, "reward", lambda text, gold: 1.0)
    model, tok = M.load_model(tiny_dir, device="cpu")
    problems = IW.training_problems(W.TinyWorld(), 1)[:2]
    plain = [prompts.solve_prompt(p["question"]) for p in problems]
    ctx = [prompts.feedback_prompt(p["question"], ["add then mul"], ["sub then add"])
           for p in problems]
    same = IW.weights_of_successes(model, tok, problems, plain, k=3, cap=2.0, seed=5)
    for fam in same.values():
        assert fam["success"] == 1.0
        assert fam["w_procedure_token"] == pytest.approx(1.0)
        assert fam["w_product"] == pytest.approx(1.0, rel=1e-5)
    got = IW.weights_of_successes(model, tok, problems, ctx, k=3, cap=2.0, seed=5)
    torch.manual_seed(5)
    out = M.sample(model, tok, ctx, n=3, temperature=1.0, max_new_tokens=32, micro_batch=512)
    plain_ids = M.encode_prompts(tok, [p for p in plain for _ in range(3)])
    with torch.no_grad():
        lp_x = M.token_logprobs(model, plain_ids, out.response_ids, out.response_mask)
        lp_xc = M.token_logprobs(model, out.prompt_ids, out.response_ids, out.response_mask)
    first = torch.exp(lp_x[:, 0] - lp_xc[:, 0]).clamp(max=2.0)
    for i, p in enumerate(problems):
        want = float(first[3 * i:3 * i + 3].mean())
        assert got[p["family"]]["w_procedure_token"] == pytest.approx(want, rel=1e-5)
        assert abs(want - 1.0) > 1e-3   # the context does change the first token's probability


def test_a_run_records_the_machine_and_the_sft_model_it_was_made_from(arms_dir, monkeypatch):
    """made_on.json: platform, torch's CPU capability and the SFT model's sha256, one record
    per machine that worked on the run (a run resumed elsewhere keeps both), read back into
    the run's summary record (experiments/ANALYSIS.md pools only one machine's runs)."""
    root, calls = arms_dir
    sft = root / "sft"
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"weights of SFT seed 0")
    monkeypatch.setattr(R, "sft_dir", lambda seed, variant="": str(sft))
    run_dir = make_run(root, "controls", "grpo", ["--p-feedback", "0"], 600, finished=False)
    R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(600))
    made = json.load(open(os.path.join(run_dir, "made_on.json")))
    import hashlib
    import torch
    assert len(made) == 1 and made[0]["sft_sha256"] == hashlib.sha256(
        b"weights of SFT seed 0").hexdigest()
    assert made[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # the same machine again adds nothing; another one is appended
    R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(600))
    assert len(json.load(open(os.path.join(run_dir, "made_on.json")))) == 1
    monkeypatch.setattr(R, "machine", lambda: {"platform": "elsewhere", "cpu_capability": "X"})
    R.run_one("controls", "grpo", ["--p-feedback", "0"], 0, 0, args(600))
    made = json.load(open(os.path.join(run_dir, "made_on.json")))
    assert [m["cpu_capability"] for m in made][1] == "X" and len(made) == 2


def test_collect_runs_nothing_and_summarizes_only_finished_runs_marked_partial(arms_dir,
                                                                              monkeypatch):
    root, calls = arms_dir
    done = make_run(root, "controls", "grpo", ["--p-feedback", "0"], 200, sft_seed=10)
    make_run(root, "controls", "lanpo", [], 200, finished=False, sft_seed=10)   # still running
    seen = {}
    monkeypatch.setattr(R, "read_run", lambda d: {"dir": d})
    monkeypatch.setattr(R, "summarize",
                        lambda runs, seeds: seen.update(runs=runs) or {"grpo": {"final": {}}})
    monkeypatch.setattr(R, "contrasts", lambda suite, runs: {})
    monkeypatch.setattr(R, "plot", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["run_arms.py", "controls", "--sft-seeds", "10", "--seeds",
                                      "0", "1", "--eval-every", "25", "--collect", "--name", "p"])
    R.main()
    assert calls == []   # nothing was started
    assert seen["runs"] == {"grpo": [(10, 0, {"dir": done})]}
    out = json.load(open(root / "results" / "p.json"))
    assert out["partial"] == {"grpo": 1} and "cpu_capability" in out["machine"]
