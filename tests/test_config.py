"""Flags: --help of every entry point shows each flag's real default, once; a preset's flags
list the value of every preset instead of "None"."""
import os
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


def test_cpu_runs_take_the_cores_that_are_free_unless_told(monkeypatch):
    """On the CPU the default is the cores other programs leave free (at least one, a core free
    when 70% of it is idle); --threads, then OMP_NUM_THREADS, say otherwise; on a GPU torch
    keeps its own default."""
    import argparse
    import torch
    before = torch.get_num_threads()
    cpu = argparse.Namespace(threads=None, device="cpu")
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(config, "usable_cores", lambda: 4)
        for busy, want in ((0.0, 4), (0.2, 4), (0.4, 3), (1.0, 3), (2.6, 1), (3.9, 1), (7.0, 1)):
            monkeypatch.setattr(config, "busy_cores", lambda busy=busy: busy)
            line = config.Threads(cpu).line
            assert torch.get_num_threads() == want and line.startswith(f"threads: {want} ("), \
                (busy, line)
        assert "4 cores, 7.0 busy" in line and "chosen again every 10 steps" in line
        assert "chosen again" not in config.Threads(cpu, every=None).line   # evaluate.py's
        torch.set_num_threads(3)
        monkeypatch.setattr(config.M, "resolve_device", lambda name: torch.device("cuda"))
        gpu = config.Threads(argparse.Namespace(threads=None, device="cuda"))
        assert "torch's default" in gpu.line and torch.get_num_threads() == 3
        assert config.Threads(argparse.Namespace(threads=2, device="cpu")).line.startswith(
            "threads: 2 (--threads")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert "OMP_NUM_THREADS" in config.Threads(cpu).line
        assert torch.get_num_threads() == 2
        with pytest.raises(config.UserError):
            config.Threads(argparse.Namespace(threads=0, device="cpu"))
    finally:
        torch.set_num_threads(before)


def test_a_fixed_thread_count_is_kept_and_said_when_more_than_the_free_cores(monkeypatch):
    """--threads or OMP_NUM_THREADS win even on a busy machine, but the line warns when the count
    is more than the cores other programs leave free; one thread, an idle machine or a GPU: no
    warning (and one thread never measures)."""
    import argparse
    import torch
    before = torch.get_num_threads()
    monkeypatch.setattr(config, "usable_cores", lambda: 2)
    try:
        for busy, threads, env, warned in ((1.0, 2, None, True), (0.0, 2, None, False),
                                           (1.0, None, "2", True), (0.2, 2, None, False),
                                           (1.8, 3, None, True)):
            monkeypatch.setattr(config, "busy_cores", lambda busy=busy: busy)
            if env:
                monkeypatch.setenv("OMP_NUM_THREADS", env)
                torch.set_num_threads(int(env))
            else:
                monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            line = config.Threads(argparse.Namespace(threads=threads, device="cpu")).line
            assert ("warning" in line) == warned, (busy, threads, env, line)
            assert torch.get_num_threads() == (threads or int(env)), line   # kept all the same
        assert "1.8 of 2 cores are busy" in line and "3 threads" in line
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(config, "busy_cores", lambda: pytest.fail("one thread measured"))
        assert "warning" not in config.Threads(argparse.Namespace(threads=1, device="cpu")).line
        monkeypatch.setattr(config, "busy_cores", lambda: 2.0)
        monkeypatch.setattr(config.M, "resolve_device", lambda name: torch.device("cuda"))
        assert "warning" not in config.Threads(argparse.Namespace(threads=2, device="cuda")).line
    finally:
        torch.set_num_threads(before)


def test_threads_follow_what_other_programs_use_during_a_run(monkeypatch):
    """Every `every` steps the count fits the other programs' CPU time since the last look (the
    machine's busy time less this process's): a program that takes a core mid-run takes a
    thread away, and it comes back when the program ends; a fixed count never moves."""
    import argparse
    import torch
    before = torch.get_num_threads()
    marks = iter([(0.0, 0.0, 0.0),       # at the start
                  (10.0, 20.0, 19.5),    # step 5: others 0.05 cores -> 2 threads
                  (20.0, 40.0, 27.0),    # step 10: others 1.2 cores -> 1 thread
                  (30.0, 50.0, 37.0),    # step 15: others 0 -> 2 threads again
                  ])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(config, "usable_cores", lambda: 2)
    monkeypatch.setattr(config, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(config, "cpu_marks", lambda: next(marks))
    try:
        threads = config.Threads(argparse.Namespace(threads=None, device="cpu"), every=5)
        seen = []
        for _ in range(15):
            threads.follow()
            seen.append(torch.get_num_threads())
        assert seen == [2] * 9 + [1] * 5 + [2], seen
        fixed = config.Threads(argparse.Namespace(threads=2, device="cpu"), every=1)
        torch.set_num_threads(2)
        fixed.follow()   # would raise StopIteration if it looked
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_smol_on_a_cpu_is_a_short_smoke_test_and_flags_given_win(monkeypatch):
    """--preset smol on a CPU: 2 steps of 2 problems x 4 rollouts of 64 tokens, a checkpoint each
    step, 4 problems per evaluation set; a flag given wins; on a GPU the preset's own values."""
    import torch
    args = config.train_args(["--preset", "smol", "--device", "cpu"])
    assert (args.steps, args.problems_per_step, args.group_size, args.max_new_tokens,
            args.summary_tokens, args.ckpt_every, args.eval_limit) == (2, 2, 4, 64, 48, 1, 4)
    args = config.train_args(["--preset", "smol", "--device", "cpu", "--steps", "5",
                              "--max-new-tokens", "256"])
    assert (args.steps, args.max_new_tokens, args.summary_tokens) == (5, 256, 48)
    monkeypatch.setattr(config.M, "resolve_device", lambda name: torch.device("cuda"))
    args = config.train_args(["--preset", "smol"])
    assert (args.steps, args.max_new_tokens, args.eval_limit) == (10, 256, 16)
    assert config.train_args(["--preset", "tiny", "--device", "cpu"]).steps == 120


def test_busy_cores_sees_a_program_that_keeps_a_core_busy(monkeypatch):
    """busy_cores measures other programs' CPU time now: a busy loop beside it adds about one
    core (other processes of the machine may add more, never less)."""
    import subprocess
    import sys
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat (the load-average fallback has its own test)")
    calm = config.busy_cores(0.5)
    if calm > (os.cpu_count() or 1) - 1.3:
        pytest.skip(f"{calm:.1f} of {os.cpu_count()} cores busy already: no free core to watch")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)   # the loop is running
        loaded = config.busy_cores(0.5)
    finally:
        hog.kill()
    assert loaded >= 0.6 and loaded >= calm + 0.4, (calm, loaded)
    assert loaded <= (os.cpu_count() or 1) + 1e-6


def test_busy_cores_without_proc_stat_reads_the_load_average(monkeypatch):
    def no_proc(*a, **k):
        raise OSError("no /proc")
    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(config.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert config.cpu_marks() is None and config.busy_cores(0.01) == 1.5


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
