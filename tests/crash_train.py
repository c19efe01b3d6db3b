"""Run train.py, but kill the process with SIGKILL at a chosen point of a chosen step.

    python tests/crash_train.py POINT STEP [train.py flags ...]

POINT is where the crash happens:
  sampling    inside step STEP's rollout sampling (model.sample)
  update      inside step STEP's update, after its first micro-batch's log-probs
  checkpoint  while the checkpoint of step >= STEP is being written: after everything went
              into the temporary directory, before it is renamed into place

The hooks wrap train.py's functions from the outside, so the training code carries no test
hooks. test_faults.py uses this to check that --resume recovers from a crash anywhere.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import model as M  # noqa: E402
import pool as P  # noqa: E402
import train  # noqa: E402
from support.errors import run_cli  # noqa: E402

POINT, STEP = sys.argv[1], int(sys.argv[2])
current = {"step": 0}


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner, name, before=None, after=None):
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        out = real(*args, **kwargs)
        if after:
            after(*args, **kwargs)
        return out
    setattr(owner, name, wrapped)


def at_step(step, *args, **kwargs):
    current["step"] = step


def if_armed(point):
    def check(*args, **kwargs):
        if POINT == point and current["step"] >= STEP:
            kill()
    return check


wrap(train, "train_step", before=at_step)
if POINT == "sampling":
    wrap(M, "sample", before=if_armed("sampling"))
elif POINT == "update":
    wrap(M, "token_logprobs", after=if_armed("update"))
elif POINT == "checkpoint":
    # pool.save is the last write into checkpoint's temporary directory (rundir.save_checkpoint)
    def in_checkpoint(self, path):
        if ".checkpoint.tmp-" in path:
            if_armed("checkpoint")()
    wrap(P.Pool, "save", after=in_checkpoint)
else:
    sys.exit(f"unknown crash point {POINT!r}")

if __name__ == "__main__":
    run_cli(train.main, sys.argv[3:])
