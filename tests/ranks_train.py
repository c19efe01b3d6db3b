"""Run train.py as one rank of `torchrun`, and record from the outside what the rank did.

    torchrun --nproc_per_node N tests/ranks_train.py LOGDIR KILL_RANK KILL_STEP [train.py flags]

Into LOGDIR (never the run directory), per rank r:
  pool_rank{r}_step{s}.jsonl   the rank's pool after each step s (train_step's `pool`)
  writes_rank{r}.json          every path the rank created, wrote, renamed or removed
                               (open for writing, os.makedirs/mkdir/replace/rename/remove,
                               shutil.rmtree), recorded when main returns
  summarized_rank{r}.json      per step, the ids of the problems the rank wrote summaries of
                               (step 0: the placebo bank's, before step 1)
With NAMED_SUMMARIES=1 in the environment each summary is one principle and one pitfall naming
its problem (a random tiny model writes none that parse).
KILL_RANK >= 0: that rank kills itself with SIGKILL when step KILL_STEP starts sampling (a
crash of one process in the middle of a step), or with a negative KILL_STEP raises
RuntimeError("injected crash") when step -KILL_STEP starts sampling (a bug); -1: no crash.

The reward is len(text) % 3 == 0 (as test_train's resume test uses), so a random tiny model
gets groups with variance and real gradients. test_ranks.py uses this; the training code
carries no test hooks.
"""
import builtins
import json
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import model as M  # noqa: E402
import train  # noqa: E402
from support import ranks  # noqa: E402

LOGDIR, KILL_RANK, KILL_STEP = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
RANK = int(os.environ.get("RANK", "0"))
writes, current, summarized = [], {"step": 0}, {}
real_open = builtins.open


def record(fn, path_arg=0, only_if=lambda *a, **k: True):
    def wrapped(*args, **kwargs):
        if only_if(*args, **kwargs):
            for i in ([path_arg] if isinstance(path_arg, int) else path_arg):
                if i < len(args) and isinstance(args[i], (str, os.PathLike)):
                    writes.append(os.path.abspath(args[i]))
        return fn(*args, **kwargs)
    return wrapped


def writing(file, mode="r", *a, **k):
    return any(c in mode for c in "wax+")


builtins.open = record(real_open, 0, writing)
for name in ("makedirs", "mkdir", "remove", "unlink"):
    setattr(os, name, record(getattr(os, name)))
os.replace, os.rename = record(os.replace, (0, 1)), record(os.rename, (0, 1))
shutil.rmtree = record(shutil.rmtree)

train.reward = lambda text, gold: float(len(text) % 3 == 0)
real_step, real_sample, real_summarize = train.train_step, M.sample, train.summarize_groups


def summarize_and_note(model, tok, problems, *args, **kwargs):
    summarized[current["step"]] = [p["id"] for p in problems]
    if os.environ.get("NAMED_SUMMARIES"):   # a summary naming its problem (a random model's
        return [([f"principle of {p['id']}"], [f"pitfall of {p['id']}"]) for p in problems]
    return real_summarize(model, tok, problems, *args, **kwargs)   # parse as none)


def step_and_dump(step, model, ref_model, tok, opt, pool, *args, **kwargs):
    current["step"] = step
    out = real_step(step, model, ref_model, tok, opt, pool, *args, **kwargs)
    with real_open(os.path.join(LOGDIR, f"pool_rank{RANK}_step{step}.jsonl"), "w") as f:
        f.writelines(json.dumps(vars(e), sort_keys=True) + "\n"
                     for entries in pool.entries.values() for e in entries)
    return out


def sample_or_die(*args, **kwargs):
    if RANK == KILL_RANK and KILL_STEP < 0 and current["step"] >= -KILL_STEP:
        raise RuntimeError("injected crash")
    if RANK == KILL_RANK and KILL_STEP >= 0 and current["step"] >= KILL_STEP:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_sample(*args, **kwargs)


train.train_step, M.sample, train.summarize_groups = step_and_dump, sample_or_die, \
    summarize_and_note

if __name__ == "__main__":
    try:
        ranks.run_cli(train.main, sys.argv[4:])
    finally:
        with real_open(os.path.join(LOGDIR, f"writes_rank{RANK}.json"), "w") as f:
            json.dump(writes, f)
        with real_open(os.path.join(LOGDIR, f"summarized_rank{RANK}.json"), "w") as f:
            json.dump(summarized, f)
