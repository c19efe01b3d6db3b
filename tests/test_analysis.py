"""experiments/sft_draws.py carries out the analysis experiments/ANALYSIS.md declares: one value
per SFT draw, an exact two-sided sign-flip test, Holm's correction over the primary contrasts
and over all ten, a tie band of one rl-test problem in the sign counts, the area under a
learning curve censored at the run's end, learning counts that weigh every SFT seed once, and
no table pooled across machines or SFT models without saying so."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import sft_draws as D  # noqa: E402


def test_sign_flip_p_is_exact_and_two_sided():
    # 3 positive seeds: only all-plus and all-minus reach |mean| = 1, so p = 2 / 8
    assert D.sign_flip_p([1.0, 1.0, 1.0]) == 0.25
    assert D.sign_flip_p([-1.0, -1.0, -1.0]) == 0.25   # two-sided: the sign does not matter
    assert D.sign_flip_p([0.1, -0.1]) == 1.0   # every pattern is as extreme as 0
    # 5 of 5 positive: the smallest p five SFT seeds can give, 1/16, not below 0.05
    assert D.sign_flip_p([0.11, 0.11, 0.11, 0.05, 0.06]) == 2 / 32
    assert D.sign_flip_p([0.3, 0.1, 0.1, 0.1]) == 2 / 16
    # sums of +-0.3 and three +-0.1: 8 of the 16 reach |0.4| (0.3 with two or three 0.1s)
    assert D.sign_flip_p([0.3, -0.1, 0.1, 0.1]) == 8 / 16


def test_holm_adjusts_step_down_and_stays_monotone():
    # Holm (1979): sorted p 0.01, 0.02, 0.04 of m = 3 -> 0.03, 0.04, 0.04 (the last one would be
    # 1 x 0.04 = 0.04 and may not fall below the one before it)
    adj = D.holm({"a": 0.04, "b": 0.01, "c": 0.02})
    assert adj == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04})
    # monotone: a larger raw p never gets a smaller adjusted one; capped at 1
    adj = D.holm({"a": 0.01, "b": 0.011, "c": 0.5, "d": 0.9})   # b: 3 x 0.011 < 0.04
    assert adj == pytest.approx({"a": 0.04, "b": 0.04, "c": 1.0, "d": 1.0})
    assert D.holm({"only": 0.03}) == {"only": 0.03}
    # the readme's case: ten contrasts, the smallest sign-flip p of ten seeds (2/1024) survives
    ten = {f"c{i}": 0.5 for i in range(9)} | {"best": 2 / 1024}
    assert D.holm(ten)["best"] == pytest.approx(20 / 1024)


def test_verdict_words_come_only_from_the_adjusted_p():
    assert D.verdict(-0.05, 0.01) == "below" and D.verdict(0.05, 0.049) == "above"
    assert D.verdict(-0.5, 0.05) == "not shown" and D.verdict(0.5, 0.2) == "not shown"


def test_a_difference_of_at_most_one_problem_is_level():
    one = 1 / 216
    # one problem, as arithmetic of two accuracies gives it (not exactly 1/216 in floats)
    d = 191 / 216 - 190 / 216
    assert D.sign(d) == 0 and D.sign(-d) == 0 and D.sign(one) == 0
    assert D.sign(0.5 * one) == 0   # half a problem: two RL seeds disagreeing by one
    assert D.sign(2 / 216) == 1 and D.sign(-2 / 216) == -1
    s = D.over_seeds({0: d, 1: -d, 2: 2 / 216, 3: -0.1, 4: 0.0})
    assert (s["positive"], s["zero"], s["negative"]) == (1, 3, 1)
    # the test itself uses the values, not the signs
    assert s["sign_flip_p"] == D.sign_flip_p([d, -d, 2 / 216, -0.1, 0.0])


def test_each_sft_seed_is_one_value_with_a_t_interval():
    by_run = {(0, 0): 0.1, (0, 1): 0.3, (1, 0): -0.2, (2, 0): None}
    assert D.per_seed(by_run) == {0: 0.2, 1: -0.2}   # RL seeds averaged; None dropped
    s = D.over_seeds({0: 0.2, 1: -0.2, 2: 0.3})
    assert (s["positive"], s["zero"], s["negative"]) == (2, 0, 1)
    assert abs(s["mean"] - 0.1) < 1e-12 and s["t95"][0] < 0 < s["t95"][1]
    half = 4.303 * 0.2646 / 3 ** 0.5   # t(2) x sd / sqrt(n)
    assert abs(s["t95"][1] - (0.1 + half)) < 1e-3


def test_the_area_under_a_censored_learning_curve():
    # 0 at step 0, 1 from step 50 of 200: (50 x 0.5 + 150 x 1) / 200 = 0.875
    curve = {str(s): {"rl-test": 0.0 if s == 0 else 1.0} for s in range(0, 201, 50)}
    assert D.curve_area(curve) == pytest.approx(0.875)
    # learned later -> a smaller area, at the same final value
    later = {str(s): {"rl-test": 1.0 if s == 200 else 0.0} for s in range(0, 201, 50)}
    assert D.curve_area(later) == pytest.approx(25 / 200)
    # uneven steps are weighed by their width, and the order of the keys does not matter
    uneven = {"100": {"rl-test": 1.0}, "0": {"rl-test": 0.0}, "25": {"rl-test": 1.0}}
    assert D.curve_area(uneven) == pytest.approx((25 * 0.5 + 75 * 1.0) / 100)
    # a curve that does not start at step 0 has no area to compare
    assert D.curve_area({"25": {"rl-test": 1.0}, "50": {"rl-test": 1.0}}) is None
    run = {"curve": curve, "final": {"rl-test": {"zero-shot": 1.0}},
           "sampled": {"rl-test": {"mean@8": 0.9}}}
    assert (D.endpoint(run, "auc"), D.endpoint(run, "greedy"), D.endpoint(run, "sampled")) \
        == (pytest.approx(0.875), 1.0, 0.9)


def test_learning_counts_weigh_each_sft_seed_once_and_are_censored():
    # SFT seed 0 has two runs (one learned at 25, one never), seed 1 one run (learned at 150):
    # per seed 0.5 and 1.0 by step 200 -> 0.75; counting runs would give 2/3
    runs = {(0, 0): {"first_learned": {"f": 25}}, (0, 1): {"first_learned": {"f": None}},
            (1, 0): {"first_learned": {"f": 150}}}
    got = D.learned_by(runs, "f")
    assert got == {"50": 0.25, "100": 0.25, "200": 0.75, "runs": 3, "sft_seeds": 2}
    assert D.learned_by(runs, "f", 600)["600"] == 0.75   # never learned stays counted


def result_file(platform, capability, seed_sha, final=0.5):
    run = {"sft_seed": 10, "seed": 0, "final": {"rl-test": {"zero-shot": final}},
           "made_on": [{"platform": platform, "cpu_capability": capability,
                        "sft_sha256": seed_sha}]}
    return {"command": "x", "machine": {"platform": platform, "cpu_capability": capability},
            "summary": {"grpo": {"runs": [run]}}}


def test_strata_refuse_other_machines_and_other_sft_models(tmp_path, monkeypatch):
    same = D.strata_problems({"a": result_file("p", "AVX2", "s1"),
                              "b": result_file("p", "AVX2", "s1")})
    assert same == []
    other_cpu = D.strata_problems({"a": result_file("p", "AVX2", "s1"),
                                   "b": result_file("p", "AVX512", "s1")})
    assert len(other_cpu) == 1 and "different machines" in other_cpu[0]
    other_model = D.strata_problems({"a": result_file("p", "AVX2", "s1"),
                                     "b": result_file("p", "AVX2", "s2")})
    assert other_model == ["SFT seed 10: 2 different SFT models"]
    # one run resumed on another machine is two machines' run, even inside one file
    resumed = result_file("p", "AVX2", "s1")
    resumed["summary"]["grpo"]["runs"][0]["made_on"].append(
        {"platform": "p", "cpu_capability": "AVX512", "sft_sha256": "s1"})
    assert "different machines" in D.strata_problems({"a": resumed})[0]
    # runs_of refuses them unless asked, and then returns what was pooled
    monkeypatch.setattr(D, "RES", str(tmp_path))
    for name, d in (("a", result_file("p", "AVX2", "s1")),
                    ("b", result_file("p", "AVX512", "s1"))):
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    with pytest.raises(SystemExit, match="not one stratum"):
        D.runs_of(["a", "b"])
    runs, _, problems = D.runs_of(["a", "b"], across_machines=True)
    assert problems and list(runs["grpo"]) == [(10, 0)]
    # one machine's files pool without a word
    (tmp_path / "c.json").write_text(json.dumps(result_file("p", "AVX2", "s1")))
    assert D.runs_of(["a", "c"])[2] == []


def test_the_committed_strata_are_what_analysis_md_says():
    """Stratum A (controls.json) and stratum B (controls_sft5-9 + controls_sft3_here) are each
    one machine's; pooling A with B is refused."""
    D.runs_of(["controls"])
    D.runs_of(["controls_sft5-9", "controls_sft3_here"])
    with pytest.raises(SystemExit, match="different machines"):
        D.runs_of(["controls", "controls_sft5-9"])


def test_holm_keeps_the_declared_family_when_contrasts_are_missing():
    """A partial suite (four of ten contrasts run) is adjusted as one of ten, not of four: the
    smallest p is multiplied by 10."""
    ten = [f"c{i}" for i in range(10)]
    got = D.holm_within({"c0": 0.002, "c1": 0.01, "c2": 0.3, "c3": 0.9}, ten)
    assert got == pytest.approx({"c0": 0.02, "c1": 0.09, "c2": 1.0, "c3": 1.0})
    assert D.holm_within({"a": 0.01}, ["a", "b", "c"]) == pytest.approx({"a": 0.03})
    full = {f"c{i}": 0.5 for i in range(10)} | {"c0": 0.002}
    assert D.holm_within(full, ten) == D.holm(full)   # nothing missing: plain Holm


def test_a_run_without_a_machine_record_is_named():
    """A stratum is checked run by run; a run that finished but lost its record (stopped before
    made_on.json was written) cannot be checked, so it is named, not silently passed."""
    d = result_file("p", "AVX2", "s1")
    lost = {**d["summary"]["grpo"]["runs"][0], "seed": 1, "made_on": None}
    d["summary"]["grpo"]["runs"].append(lost)
    assert D.unrecorded({"c": d}) == ["c: grpo SFT 10 RL 1"]
    assert D.strata_problems({"c": d}) == []   # not a second machine either
    old = result_file("p", None, None)   # a file from before runs recorded their machine
    old["summary"]["grpo"]["runs"][0]["made_on"] = None
    assert D.unrecorded({"a": old}) == []
