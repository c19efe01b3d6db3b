"""Several processes (ranks.py): `torchrun --nproc_per_node 2` on the CPU (gloo) takes the
one-process update on the union batch, keeps one pool identical on every rank, lets rank 0
alone write, and resumes exactly after one of its processes is killed."""
import json
import os
import subprocess
import sys

import pytest
import torch

import ranks_grad
import train
from support import rundir
from support.errors import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def torchrun(script, *args, n=2, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(n), script, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=dict(ENV, **(env or {})), capture_output=True,
                          text=True, timeout=300)


def test_two_process_gradient_is_the_one_process_gradient_of_the_union_batch(tmp_path,
                                                                            tiny_dir):
    """For each loss aggregation (token-mean divides by the step's tokens, the others by its
    sequences), with a rank that has no gradient at all, with the corrected scoring (importance
    weights on the feedback-aware rows) and with two inner epochs: the all-reduced gradient of
    one update on 2 ranks equals train.update's on the whole batch in one process."""
    p = torchrun("tests/ranks_grad.py", tiny_dir, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    for s in ranks_grad.SETTINGS:
        want = ranks_grad.one_process_gradient(tiny_dir, s)
        got = [torch.load(tmp_path / f"grad_{s[0]}_rank{r}.pt") for r in (0, 1)]
        assert want.abs().sum() > 0
        assert torch.equal(got[0], got[1]), s       # every rank steps with the same gradient
        assert torch.allclose(got[0], want, rtol=1e-5, atol=1e-8), s


def flags(run_dir, steps, *extra):
    return ["--init", run_dir[0], "--run-dir", run_dir[1], "--steps", str(steps),
            "--problems-per-step", "3", "--group-size", "4", "--max-new-tokens", "6",
            "--summary-tokens", "6", "--eval-every", "0", "--ckpt-every", "2",
            "--no-final-eval", "--gamma", "0", *extra]


def final_state(run_dir):
    from support import model as M
    model, _ = M.load_model(os.path.join(run_dir, "checkpoint"), device="cpu")
    metrics = [{k: v for k, v in json.loads(line).items()
                if not rundir.is_timing(k)}
               for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return (model.state_dict(), open(os.path.join(run_dir, "checkpoint", "pool.jsonl")).read(),
            metrics, open(os.path.join(run_dir, "samples.jsonl")).read())


def test_two_processes_one_pool_rank0_writes_and_a_killed_run_resumes_exactly(tmp_path,
                                                                              tiny_dir,
                                                                              capsys):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    for d in ("log_s", "log_k", "log_r"):
        os.makedirs(tmp_path / d)
    p = torchrun("tests/ranks_train.py", tmp_path / "log_s", -1, 0,
                 *flags((tiny_dir, straight), 4))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("precision: fp32") == 1, p.stdout[-3000:]   # said once, by rank 0

    # one pool: after every step both ranks hold the same, and it grows with the whole step
    # (3 problems x 4 rollouts, of which rank 0 sampled one problem and rank 1 two)
    for step in (1, 2, 3, 4):
        pools = [open(tmp_path / "log_s" / f"pool_rank{r}_step{step}.jsonl").read()
                 for r in (0, 1)]
        assert pools[0] == pools[1] and pools[0].count("\n") == 12 * step, step
    # each rank wrote the summaries of its own problems: rank 0 one, rank 1 two, together the
    # step's three
    said = [json.load(open(tmp_path / "log_s" / f"summarized_rank{r}.json")) for r in (0, 1)]
    for step in (1, 2, 3, 4):
        in_pool = {json.loads(line)["problem_id"] for line in pools[0].splitlines()
                   if json.loads(line)["step"] == step}
        mine = [said[r][str(step)] for r in (0, 1)]
        assert [len(x) for x in mine] == [1, 2] and set(mine[0] + mine[1]) == in_pool, step

    # rank 0 alone wrote into the run directory; one line of metrics per step (global)
    wrote = [[w for w in json.load(open(tmp_path / "log_s" / f"writes_rank{r}.json"))
              if w.startswith(straight)] for r in (0, 1)]
    assert wrote[1] == [] and any(w.endswith("metrics.jsonl") for w in wrote[0])
    rows = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["pool_size"] == 12 * r["step"]
                                                           for r in rows)

    # killed: rank 1 dies (SIGKILL) in step 3; torchrun stops rank 0 too
    p = torchrun("tests/ranks_train.py", tmp_path / "log_k", 1, 3, *flags((tiny_dir, killed), 4))
    assert p.returncode != 0
    assert not os.path.exists(tmp_path / "log_k" / "pool_rank0_step3.jsonl")
    assert [json.loads(line)["step"] for line in open(os.path.join(killed, "metrics.jsonl"))] \
        == [1, 2]
    # resuming with another number of processes is refused with one line, writing nothing
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, flags((tiny_dir, killed), 4, "--resume"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "2 process" in err and "\n" not in err, err
    # with the same number it continues exactly: weights, pool, metrics and samples
    p = torchrun("tests/ranks_train.py", tmp_path / "log_r", -1, 0,
                 *flags((tiny_dir, killed), 4, "--resume"))
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = final_state(straight), final_state(killed)
    assert a[1] == b[1] and a[2] == b[2] and a[3] == b[3]
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k


def test_an_error_on_one_rank_stops_every_rank_with_that_ranks_one_line(tmp_path, tiny_dir):
    """Rank 1 raises in step 1 while rank 0 waits for it where they meet: rank 1 names itself
    in one line, torchrun stops rank 0 (it never finishes the step), the command fails."""
    p = torchrun("tests/ranks_train.py", tmp_path, 1, -1,
                 *flags((tiny_dir, str(tmp_path / "rl")), 2))
    assert p.returncode != 0
    assert "error (rank 1 of 2): RuntimeError: injected crash\n" in p.stderr, p.stderr[-3000:]
    assert not os.path.exists(tmp_path / "pool_rank0_step1.jsonl")
    assert "error (rank 0" not in p.stderr


def test_two_processes_write_one_placebo_bank_of_both_shares(tmp_path, tiny_dir):
    """A real-data placebo run on 2 ranks: each rank solves and summarizes its share of the
    bank's problems (2 and 3 of 5), both draw from the whole bank, rank 0 alone writes it."""
    from test_controls import jsonl
    from support import world as W
    data = jsonl(tmp_path / "train.jsonl", W.TinyWorld().problems("rl", "train")[:12])
    bank = jsonl(tmp_path / "bank.jsonl", W.TinyWorld().problems("unseen", "test")[:5])
    run_dir = str(tmp_path / "rl")
    os.makedirs(tmp_path / "log")
    p = torchrun("tests/ranks_train.py", tmp_path / "log", -1, 0,
                 *flags((tiny_dir, run_dir), 2, "--data", data, "--feedback", "placebo",
                        "--p-feedback", "1.0", "--placebo-data", bank,
                        "--placebo-problems", "5"), env={"NAMED_SUMMARIES": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    said = [json.load(open(tmp_path / "log" / f"summarized_rank{r}.json"))["0"] for r in (0, 1)]
    assert [len(x) for x in said] == [2, 3]
    written = json.load(open(os.path.join(run_dir, "placebo_bank.json")))
    assert written["principles"] == [f"principle of {i}" for i in said[0] + said[1]]
    assert len(written["attempts"]) == 5 * 4
    wrote = [[w for w in json.load(open(tmp_path / "log" / f"writes_rank{r}.json"))
              if "placebo_bank" in w] for r in (0, 1)]
    assert wrote[0] and not wrote[1]


def test_one_process_is_untouched_and_ranks_draw_their_own_streams(monkeypatch):
    """Without a process group every meeting point hands back what it got (so `python
    train.py` computes what it did before ranks.py); under torchrun rank r > 0 draws from a
    seed of its own, derived from --seed and r."""
    from support import ranks
    import train
    items = [{"id": 1}, {"id": 2}]
    record = train.StepRecord(items, *([["a", "b"]] * 5), None, [1, 2], [False, False], [7], [0])
    assert ranks.share(items) is items
    assert ranks.gather(record) is record
    assert ranks.total(3, 2.5) == [3, 2.5] and ranks.rank_seed(7) == 7
    seeds = set()
    for r in (1, 2):
        monkeypatch.setattr(ranks, "rank", lambda r=r: r)
        seeds |= {ranks.rank_seed(0), ranks.rank_seed(1)}
    assert len(seeds) == 4 and not seeds & {0, 1}
