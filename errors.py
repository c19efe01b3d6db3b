"""Errors caused by the user's input, and how the command-line scripts report them.

Not part of the paper: this is the project's promise that bad input (a missing file, a bad
JSONL line, a flag out of range) ends with one line naming the cause and exit code 2, never a
deep traceback and never a half-written file. Running out of GPU memory is reported the same
way, with the flag that helps (`oom_hint`).
"""
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input from the user. The message is one line that names the cause."""


def run_cli(main, argv=None):
    """Run `main(argv)`; turn a UserError into `error: ...` on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@contextmanager
def oom_hint(what: str, advice: str):
    """Turn running out of GPU memory into one line that says what was running and which flag
    helps, instead of a deep traceback."""
    import torch   # imported here: errors.py is imported by code that never touches torch
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"out of memory while {what}; {advice}") from None
