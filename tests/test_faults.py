"""Reliability: a run killed with SIGKILL anywhere resumes without losing or duplicating
anything; non-finite updates are skipped, counted, and stop the run when they repeat."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import grpo
from support import model as M
from support import rundir
from support.errors import run_cli
import train
from pool import Pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, tiny_dir, steps, *extra, fault=None, fault_step=0):
    """train.py in a subprocess; with `fault`, through tests/crash_train.py, which kills it
    with SIGKILL at that point of step `fault_step`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    script = ["tests/crash_train.py", fault, str(fault_step)] if fault else ["train.py"]
    cmd = [sys.executable, *script, "--init", tiny_dir, "--run-dir", str(tmp_path / "rl"),
           "--steps", str(steps), "--problems-per-step", "2", "--group-size", "4",
           "--max-new-tokens", "6", "--summary-tokens", "6", "--eval-every", "0",
           "--ckpt-every", "2", "--no-final-eval", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fault", ["sampling", "update", "checkpoint"])
def test_sigkill_then_resume(tmp_path, tiny_dir, fault):
    # Killed in step 3 (sampling, update) or while writing the checkpoint of step 4.
    p = run(tmp_path, tiny_dir, 6, fault=fault, fault_step=3)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    rl = tmp_path / "rl"
    ckpt = rundir.find_checkpoint(str(rl))
    assert ckpt is not None                      # a complete checkpoint survived
    assert rundir.load_state(ckpt)["step"] == 2
    Pool.load(os.path.join(ckpt, "pool.jsonl"))  # parses: not half-written
    M.load_model(ckpt, device="cpu")
    if fault == "checkpoint":                    # the half-written one is still there
        assert any(".checkpoint.tmp-" in n for n in os.listdir(rl))
    p = run(tmp_path, tiny_dir, 6, "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    steps = [json.loads(l)["step"] for l in open(rl / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]           # no duplicates, no holes
    samples = {json.loads(l)["step"] for l in open(rl / "samples.jsonl")}
    assert samples == {1, 2, 3, 4, 5, 6}
    assert not any(".tmp" in n or ".old" in n for n in os.listdir(rl))   # leftovers cleaned
    final_pool = open(rl / "pool.jsonl").read()
    assert final_pool == open(rl / "checkpoint" / "pool.jsonl").read()   # pool of the last ckpt


def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path, tiny_dir, monkeypatch):
    real = grpo.policy_loss

    def nan_loss(*a, **k):
        loss, stats = real(*a, **k)
        return loss * float("nan"), {**stats, "loss": float("nan")}
    monkeypatch.setattr(grpo, "policy_loss", nan_loss)
    before, _ = M.load_model(tiny_dir, device="cpu")
    argv = ["--init", tiny_dir, "--run-dir", str(tmp_path / "rl"), "--steps", "6",
            "--problems-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
            "--summary-tokens", "6", "--eval-every", "0", "--ckpt-every", "5",
            "--no-final-eval", "--max-bad-updates", "3", "--beta", "0.1"]
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 1
    rows = [json.loads(l) for l in open(tmp_path / "rl" / "metrics.jsonl")]
    assert [r["skipped_update"] for r in rows] == [True] * 3
    assert rows[-1]["skipped_total"] == 3
    after, _ = M.load_model(str(tmp_path / "rl" / "checkpoint"), device="cpu")
    for k, v in before.state_dict().items():   # the checkpoint holds the untouched weights
        assert torch.equal(v, after.state_dict()[k])


def test_same_seed_same_metrics(tmp_path, tiny_dir):
    rows = []
    for name in ("a", "b"):
        train.main(["--init", tiny_dir, "--run-dir", str(tmp_path / name), "--steps", "2",
                    "--problems-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
                    "--summary-tokens", "6", "--eval-every", "1", "--no-final-eval"])
        rows.append([{k: v for k, v in json.loads(l).items()
                      if not rundir.is_timing(k)}
                     for l in open(tmp_path / name / "metrics.jsonl")])
    assert rows[0] == rows[1] and len(rows[0]) == 3


@pytest.mark.parametrize("content,needle", [
    (None, "cannot read"), ("", "no rows"), ('{"question": "q"}\n', "answer"),
    ('{"question": "q", "answer": "1"}\nnot json\n', "line 2"),
])
def test_bad_data_file_exits_2_and_writes_nothing(tmp_path, tiny_dir, capsys, content, needle):
    from support.errors import run_cli
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, ["--init", tiny_dir, "--data", str(path),
                             "--run-dir", str(tmp_path / "rl"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and "\n" not in err, err
    assert not (tmp_path / "rl").exists()


# --- a newcomer's first hour: resume keeps the run's settings; every failure is one line ----

def test_resume_takes_the_runs_own_settings_and_does_not_extend_a_finished_run(tmp_path,
                                                                               tiny_dir):
    """--resume with nothing else continues the run as it was started (its --init, steps,
    checkpoint and evaluation settings), says a changed resumable flag, refuses to extend a
    finished run unless --steps asks for more, and refuses a flag that changes the run."""
    p = run(tmp_path, tiny_dir, 3, "--final-eval", "--eval-limit", "3", "--seed", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    rl = str(tmp_path / "rl")
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    again = lambda *flags: subprocess.run(   # noqa: E731  (nothing but --resume and these)
        [sys.executable, "train.py", "--resume", "--run-dir", rl, *flags], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300)
    p = again()
    assert p.returncode == 2 and "finished (step 3)" in p.stderr and "--steps" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    os.remove(os.path.join(rl, "eval.json"))   # as if killed in its final evaluation
    p = again()
    assert p.returncode == 0 and os.path.exists(os.path.join(rl, "eval.json")), p.stderr[-2000:]
    assert [json.loads(l)["step"] for l in open(os.path.join(rl, "metrics.jsonl"))] == [1, 2, 3]
    p = again("--steps", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resume: --steps 3 -> 5" in p.stdout
    cfg = json.load(open(os.path.join(rl, "config.json")))
    assert (cfg["init"], cfg["steps"], cfg["ckpt_every"], cfg["eval_every"], cfg["seed"],
            cfg["eval_limit"], cfg["group_size"]) == (tiny_dir, 5, 2, 0, 5, 3, 4)
    assert [json.loads(l)["step"] for l in open(os.path.join(rl, "metrics.jsonl"))] == \
        [1, 2, 3, 4, 5]
    p = again("--steps", "6", "--lr", "1e-3")
    assert p.returncode == 2 and "lr" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_ctrl_c_is_one_line_that_says_how_to_go_on(tmp_path, tiny_dir, monkeypatch, capsys):
    real = train.train_step

    def interrupted_in_step_3(step, *a, **k):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, *a, **k)
    monkeypatch.setattr(train, "train_step", interrupted_in_step_3)
    rl = tmp_path / "rl"
    argv = ["--init", tiny_dir, "--run-dir", str(rl), "--steps", "4", "--problems-per-step", "2",
            "--group-size", "4", "--max-new-tokens", "6", "--summary-tokens", "6",
            "--eval-every", "0", "--ckpt-every", "2", "--no-final-eval"]
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, argv)
    err = "\n".join(l for l in capsys.readouterr().err.strip().splitlines()
                    if l.strip() and not l.startswith("lanpo: step"))   # progress: no terminal
    assert e.value.code == 130 and len(err.splitlines()) == 1, err
    assert "interrupted at step 2" in err and "checkpoint of step 2 is kept" in err
    assert f"python train.py --resume --run-dir {rl}" in err
    monkeypatch.setattr(train, "train_step", real)
    train.main(["--resume", "--run-dir", str(rl)])   # the command it gave, as it is
    assert [json.loads(l)["step"] for l in open(rl / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.parametrize("damaged", ["model.safetensors", "state.pt"])
def test_a_damaged_checkpoint_is_one_line_that_names_it(tmp_path, tiny_dir, damaged):
    assert run(tmp_path, tiny_dir, 2).returncode == 0
    path = tmp_path / "rl" / "checkpoint" / damaged
    with open(path, "r+b") as f:   # cut in half, as a full disk or a killed copy leaves it
        f.truncate(os.path.getsize(path) // 2)
    p = run(tmp_path, tiny_dir, 4, "--resume")
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err, err
    assert (damaged if damaged == "state.pt" else "damaged") in err and "to start the run" in err


def test_every_file_a_run_writes_has_the_same_mode(tmp_path, tiny_dir):
    """The weights too (safetensors writes them through a private temporary file)."""
    assert run(tmp_path, tiny_dir, 2).returncode == 0
    modes = {os.path.relpath(os.path.join(root, f), tmp_path):
             os.stat(os.path.join(root, f)).st_mode & 0o777
             for root, _, files in os.walk(tmp_path / "rl") for f in files}
    assert "rl/checkpoint/model.safetensors" in modes and "rl/final/model.safetensors" in modes
    assert len(set(modes.values())) == 1, modes


def test_a_directory_reaches_the_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """atomic_dir flushes every file and directory it wrote before the rename that makes them
    visible, then the renames themselves: a power cut leaves the old version or the new one."""
    events, rename = [], os.rename
    monkeypatch.setattr(rundir, "_sync", lambda p: events.append(("sync", p)))
    monkeypatch.setattr(rundir.os, "rename", lambda a, b: events.append(("rename", a, b))
                        or rename(a, b))

    def write(tmp):
        os.makedirs(os.path.join(tmp, "sub"))
        for name in ("a.txt", os.path.join("sub", "b.txt")):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)
    out = tmp_path / "ckpt"
    rundir.atomic_dir(str(out), write)
    (into_place,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out)]
    tmp = events[into_place][1]
    synced_before = {e[1] for e in events[:into_place] if e[0] == "sync"}
    assert {os.path.join(tmp, "a.txt"), os.path.join(tmp, "sub", "b.txt"),
            os.path.join(tmp, "sub"), tmp} <= synced_before
    assert events[into_place + 1:] == [("sync", str(tmp_path))]   # the renames, last
    assert (out / "sub" / "b.txt").read_text() == os.path.join("sub", "b.txt")


def test_atomic_write_flushes_the_file_then_the_rename(tmp_path, monkeypatch):
    """A single file (the pool, a report) is on the disk before its rename, and the rename is
    flushed after it: a power cut leaves the old text or the new, and the new once returned."""
    events, replace, fsync = [], os.replace, os.fsync
    monkeypatch.setattr(rundir, "_sync", lambda p: events.append(("sync", p)))
    monkeypatch.setattr(rundir.os, "fsync", lambda fd: events.append(("fsync",)) or fsync(fd))
    monkeypatch.setattr(rundir.os, "replace", lambda a, b: events.append(("replace", b))
                        or replace(a, b))
    path = tmp_path / "pool.jsonl"
    rundir.atomic_write(str(path), "new\n")
    assert events == [("fsync",), ("replace", str(path)), ("sync", str(tmp_path))]
    assert path.read_text() == "new\n" and not (tmp_path / "pool.jsonl.tmp").exists()
