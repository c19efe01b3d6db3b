"""Flags: --help of every entry point shows each flag's real default, once; a preset's flags
list the value of every preset instead of "None"."""
import re

import pytest

import evaluate
import sft
import train
from support import config


@pytest.mark.parametrize("main, presets", [(train.main, config.PRESETS),
                                           (sft.main, config.SFT_PRESETS),
                                           (evaluate.main, None)])
def test_help_shows_real_defaults(main, presets, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())   # undo the help's line wrapping
    assert "default: None" not in out and "run_defaults" not in out
    for block in re.findall(r"\(presets: [^)]*\)", out):
        assert block.count("presets:") == 1
    if presets is None:
        assert "(default: 1)" in out and "(default: 0.5)" in out   # --k, --gamma
        return
    steps = ", ".join(f"{name} {p['steps']}" for name, p in presets.items())
    assert f"(presets: {steps})" in out   # --steps, with every preset's value
    shown = len(re.findall(r"\(presets: ", out))
    assert shown == len(set.intersection(*(set(p) for p in presets.values())))
    assert "(default: 0)" in out   # a fixed default: --seed


def test_each_flag_help_is_one_short_line_of_source():
    """Flag help says what a flag does in one line; the why lives in the code and the README."""
    for parser in (config.build_parser(), config.sft_parser()):
        for action in parser._actions:
            text = re.sub(r" \(presets: .*\)$", "", action.help or "")
            assert len(text) <= 160, (action.dest, text)


def test_tiny_world_runs_on_one_thread_unless_told(monkeypatch):
    """One thread on the tiny world by default (two threads on a busy 2-core machine wait for
    each other: RESULTS.md, Costs); --threads, then OMP_NUM_THREADS, say otherwise."""
    import argparse
    import torch
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        line = config.set_threads(argparse.Namespace(threads=None), tiny=True)
        assert torch.get_num_threads() == 1 and line.startswith("threads: 1 ")
        torch.set_num_threads(2)
        config.set_threads(argparse.Namespace(threads=None), tiny=False)   # torch's own
        assert torch.get_num_threads() == 2
        assert config.set_threads(argparse.Namespace(threads=2), tiny=True).startswith(
            "threads: 2 (--threads")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert "OMP_NUM_THREADS" in config.set_threads(argparse.Namespace(threads=None), True)
        assert torch.get_num_threads() == 2
        with pytest.raises(config.UserError):
            config.set_threads(argparse.Namespace(threads=0), tiny=True)
    finally:
        torch.set_num_threads(before)


def test_evaluate_checks_its_flags_before_loading_a_model(monkeypatch, capsys):
    from support import model as M
    from support.errors import run_cli
    monkeypatch.setattr(M, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as e:
        run_cli(evaluate.main, ["--model", "anything", "--mode", "pool"])
    assert e.value.code == 2 and "--pool" in capsys.readouterr().err


def test_the_curves_title_names_the_run():
    from support.rundir import run_title
    base = dict(data="tiny", steps=120, problems_per_step=8, group_size=8, seed=3,
                init="runs/tiny/sft")
    assert run_title({**base, "p_feedback": 0.0}).startswith("GRPO: tiny data, 120 steps")
    lanpo = run_title({**base, "p_feedback": 0.75, "feedback": "placebo",
                       "score_context": "corrected"})
    assert lanpo.startswith("LANPO (feedback placebo, p_t 0.75, scored corrected)")
    assert "seed 3" in lanpo and "G = 8" in lanpo
