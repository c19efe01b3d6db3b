"""experiments/gpu_smoke_check.py fails loudly: fed the files of a good smoke run it passes,
and each kind of bad run (a skipped update, a NaN loss, KL at step 1 of 0.01, the wrong
precision, a peak above the memory plan, an SFT run without a held-out pass, a pool that never
reached a prompt, NaN logits on a left-padded batch) makes it fail with exit code 1."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import gpu_smoke_check as C  # noqa: E402

PLAN = {"SFT setup (load + bootstrap)": 10.0, "SFT step": 12.0, "SFT held-out pass": 11.0,
        "RL step": 14.0}


def good_step(step, **kw):
    return {"step": step, "reward": 0.5, "loss": 0.1, "pg_loss": 0.1, "kl": 0.0 if step == 1
            else 0.002, "grad_norm": 0.3, "skipped_update": False, "precision": "bf16",
            "coverage": 0.5, "peak_gpu_gib": 9.5, "t_generation": 3.0, "t_update": 1.0, **kw}


def write_runs(tmp_path, steps=None, cfg=None, report=None, sft_cfg=None, init=None):
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    sft.mkdir(exist_ok=True)
    rl.mkdir(exist_ok=True)
    history = [{"step": 2, "train_loss": 1.2, "heldout_loss": 1.3, "peak_gpu_gib_train": 8.0,
                "peak_gpu_gib_heldout": 7.0, "t_train": 1.0, "t_heldout": 0.5}]
    (sft / "sft_report.json").write_text(json.dumps(report or {
        "seconds": 30, "seconds_setup": 20, "peak_gpu_gib_setup": 5.0, "history": history}))
    (sft / "sft_config.json").write_text(json.dumps(sft_cfg or {}))
    (rl / "config.json").write_text(json.dumps(cfg or {"precision_used": "bf16",
                                                       "p_feedback": 0.75, "init": init}))
    rows = [{"step": 0, "eval/gsm8k": 0.4}] + (steps if steps is not None else
                                                [good_step(1), good_step(2)])
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(sft), str(rl)


def failures(tmp_path, **kw):
    sft, rl = write_runs(tmp_path, **kw)
    return C.check_runs(sft, rl, "bf16", plan=PLAN)[0]


def test_a_good_run_passes(tmp_path):
    assert failures(tmp_path) == []
    # reserved up to plan x 1.1, and a --compile run within the recompile limit
    assert failures(tmp_path, steps=[good_step(1, peak_gpu_reserved_gib=15.3, compiles=2),
                                     good_step(2, compiles=0)],
                    cfg={"precision_used": "bf16", "p_feedback": 0.75, "compile": True}) == []


def test_each_rl_step_prints_its_sampling_speed(tmp_path):
    """The report's line of an RL step says its ms per decoding step and tokens per second."""
    sft, rl = write_runs(tmp_path, steps=[good_step(1, ms_per_decode_step=21.5,
                                                    tokens_per_s=812.4), good_step(2)])
    _, lines = C.check_runs(sft, rl, "bf16", plan=PLAN)
    step1 = next(l for l in lines if "step 1:" in l)
    assert "21.5 ms per decoding step, 812 tokens/s" in step1
    assert "decoding" not in next(l for l in lines if "step 2:" in l)   # not logged: not said


@pytest.mark.parametrize("bad,needle", [
    (dict(steps=[good_step(1), good_step(2, skipped_update=True)]), "skipped"),
    (dict(steps=[good_step(1), good_step(2, loss=float("nan"))]), "loss is nan"),
    (dict(steps=[good_step(1), good_step(2, grad_norm=float("inf"))]), "grad_norm is inf"),
    (dict(steps=[good_step(1, kl=0.01), good_step(2)]), "KL 0.01 at the first step"),
    (dict(steps=[good_step(1), good_step(2, precision="fp32")]), "precision 'fp32'"),
    (dict(cfg={"precision_used": "fp32", "p_feedback": 0.75}), "precision_used is 'fp32'"),
    (dict(cfg={"p_feedback": 0.75}), "precision_used is None"),
    (dict(steps=[good_step(1), good_step(2, peak_gpu_gib=14.5)]), "above the plan"),
    (dict(steps=[good_step(1), good_step(2, peak_gpu_reserved_gib=15.5)]), "reserved GPU memory"),
    (dict(steps=[good_step(1, compiles=5), good_step(2, compiles=4)],
          cfg={"precision_used": "bf16", "p_feedback": 0.75, "compile": True}),
     "more than torch's recompile limit (8)"),
    (dict(steps=[good_step(1, compiles=1), good_step(2)],
          cfg={"precision_used": "bf16", "p_feedback": 0.75, "compile": True}),
     "do not all log 'compiles'"),
    (dict(steps=[good_step(1), good_step(2, coverage=0.0)]), "coverage 0"),
    (dict(steps=[]), "no training step"),
    (dict(steps=[good_step(1)], cfg={"precision_used": "bf16", "p_feedback": 0.75, "steps": 2}),
     "missing [2]"),
    (dict(steps=[good_step(1), good_step(3)],
          cfg={"precision_used": "bf16", "p_feedback": 0.75, "steps": 3}), "missing [2]"),
    (dict(steps=[good_step(1), good_step(2), good_step(2)],
          cfg={"precision_used": "bf16", "p_feedback": 0.75, "steps": 2}), "(3 rows)"),
    (dict(report={"seconds": 3, "history": []}), "held-out pass never ran"),
    (dict(report={"seconds": 3, "history": [{"step": 2, "train_loss": float("nan"),
                                             "heldout_loss": 1.0}]}), "train_loss is nan"),
    (dict(report={"seconds": 3, "history": [{"step": 2, "train_loss": 1.0,
                                             "heldout_loss": 1.0,
                                             "peak_gpu_gib_heldout": 11.5}]}),
     "above the plan"),
])
def test_each_bad_run_fails(tmp_path, bad, needle):
    fail = failures(tmp_path, **bad)
    assert any(needle in f for f in fail), fail


def test_main_exits_1_and_compares_with_the_plan_of_the_runs_settings(tmp_path, tiny_dir,
                                                                         capsys):
    from support import config
    rl_cfg = dict(config.PRESETS["tiny"], precision_used="bf16", p_feedback=0.75, beta=0.04,
                  lora_rank=0, init=tiny_dir, steps=2)
    sft_cfg = dict(config.SFT_PRESETS["tiny"])
    def args(s, r):
        return ["runs", "--sft-dir", s, "--rl-dir", r, "--expect-precision", "bf16"]
    sft_dir, rl_dir = write_runs(tmp_path, cfg=rl_cfg, sft_cfg=sft_cfg)
    # the tiny world's plan is some tens of MB: 9.5 GiB is far above it
    assert C.main(args(sft_dir, rl_dir)) == 1
    err = capsys.readouterr().err
    assert "above the plan" in err and "RL step 1" in err
    small = [good_step(1, peak_gpu_gib=0.001), good_step(2, peak_gpu_gib=0.001)]
    sft_dir, rl_dir = write_runs(tmp_path, cfg=rl_cfg, sft_cfg=sft_cfg, steps=small, report={
        "seconds": 3, "history": [{"step": 2, "train_loss": 1.0, "heldout_loss": 1.0}]})
    assert C.main(args(sft_dir, rl_dir)) == 0
    out = capsys.readouterr().out
    assert "plan" in out and "step 2" in out and "generation 3.0" in out


def test_the_logits_check_passes_a_sound_model_and_fails_nan_or_the_wrong_precision(
        tiny_dir, monkeypatch):
    assert C.check_logits(tiny_dir, "cpu", "fp32", precision="fp32") == []
    assert any("expected bf16" in f for f in C.check_logits(tiny_dir, "cpu", "bf16",
                                                              precision="fp32"))
    from transformers import LlamaForCausalLM
    real = LlamaForCausalLM.forward

    def nan_at_padding(self, *a, **kw):   # what a fully masked row can do in a bf16 kernel
        out = real(self, *a, **kw)
        if kw.get("attention_mask") is None:   # a prompt alone: no padding
            return out
        pad = kw["attention_mask"] == 0
        out.logits = out.logits.masked_fill(pad[:, -out.logits.shape[1]:, None], float("nan"))
        return out
    monkeypatch.setattr(LlamaForCausalLM, "forward", nan_at_padding)
    fail = C.check_logits(tiny_dir, "cpu", "fp32", precision="fp32")
    assert any("non-finite logits" in f and "at padding" in f for f in fail)


def test_the_logits_check_catches_a_padding_leak(tiny_dir, monkeypatch):
    """Finite logits that padding changed (a leak through attention): the padded prompt's
    logits differ from its logits alone, and the check says so."""
    from transformers import LlamaForCausalLM
    real = LlamaForCausalLM.forward

    def leak(self, *a, **kw):
        out = real(self, *a, **kw)
        mask = kw.get("attention_mask")
        if mask is not None and (mask == 0).any():
            out.logits = out.logits + 5.0 * (mask == 0).any(-1)[:, None, None]
        return out
    monkeypatch.setattr(LlamaForCausalLM, "forward", leak)
    fail = C.check_logits(tiny_dir, "cpu", "fp32", precision="fp32")
    assert any("left padding changed the logits" in f for f in fail), fail


def test_the_feedback_check_can_be_switched_off(tmp_path):
    sft, rl = write_runs(tmp_path, steps=[good_step(1), good_step(2, coverage=0.0)])
    assert C.check_runs(sft, rl, "bf16", plan=PLAN, require_feedback=False)[0] == []


def test_the_smoke_scripts_python_imports_what_the_repository_has():
    """Every import in gpu_smoke.sh's inline Python (heredocs and `python -c`) resolves from
    the repository root: a module moved into support/ must be moved there too (it cannot be
    run here: it needs a GPU)."""
    import importlib
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = open(os.path.join(root, "experiments", "gpu_smoke.sh")).read()
    statements = re.findall(r"^\s*(?:from [\w.]+ import [\w, ]+|import [\w, .]+)(?=\s*$|;)",
                            script.replace("; ", "\n"), re.M)
    assert len(statements) >= 4, statements   # sys/torch, json, support.data, support.model
    for s in statements:
        s = s.strip()
        if s.startswith("from "):
            module, names = re.match(r"from ([\w.]+) import (.+)", s).groups()
            mod = importlib.import_module(module)
            for name in names.split(","):   # `from support import data`: a submodule
                name = name.split(" as ")[0].strip()
                assert hasattr(mod, name) or importlib.import_module(f"{module}.{name}"), s
        else:
            for module in s[len("import "):].split(","):
                importlib.import_module(module.split(" as ")[0].strip())
