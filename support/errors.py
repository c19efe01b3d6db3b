"""Errors caused by the user's input, and how the command-line scripts report them.

Not part of the paper: this is the project's promise that bad input (a missing file, a bad
JSONL line, a flag out of range) ends with one line naming the cause and exit code 2, never a
deep traceback and never a half-written file. Running out of GPU memory is reported the same
way, with the flag that helps (`oom_hint`).
"""
import sys
import time
from contextlib import contextmanager, nullcontext


class UserError(Exception):
    """Bad input from the user. The message is one line that names the cause."""


# What a Ctrl-C says after "interrupted" (train.py: where the run stopped, how to go on).
_on_interrupt = [lambda: ""]


def on_interrupt(say):
    """Register `say()`, the rest of the line a Ctrl-C prints."""
    _on_interrupt[0] = say


def run_cli(main, argv=None):
    """Run `main(argv)`: a UserError becomes `error: ...` on stderr and exit code 2; Ctrl-C one
    line, `interrupted...`, and exit code 130 (the shell's code for an interrupted program)."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted{_on_interrupt[0]()}", file=sys.stderr)
        sys.exit(130)


@contextmanager
def oom_hint(what: str, advice: str):
    """Turn running out of GPU memory into one line that says what was running and which flag
    helps, instead of a deep traceback."""
    import torch   # imported here: errors.py is imported by code that never touches torch
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"out of memory while {what}; {advice}") from None


# What each phase of an RL step runs, and the flag that helps when it runs out of GPU memory.
OOM_ADVICE = {"generation": ("sampling the rollouts", "lower --sample-micro-batch"),
              "update": ("computing log-probs and gradients",
                         "lower --logprob-tokens or pass --grad-checkpointing"),
              "pool": ("writing summaries", "lower --sample-micro-batch")}


class Phases:
    """Seconds spent in each phase of a step (`with phase("update"): ...`, logged as t_update);
    out of GPU memory inside a phase ends in one line with its advice (OOM_ADVICE)."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        with oom_hint(*OOM_ADVICE[name]) if name in OOM_ADVICE else nullcontext():
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
