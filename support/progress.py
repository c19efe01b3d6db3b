"""Progress a person can follow: tqdm's bar on a terminal; with the output sent to a file or a
log, a line at the first step, then every EVERY_SECONDS and at the end: the step, the seconds
per step and the time left. TQDM_DISABLE=1 silences both."""
import os
import sys
import time

from tqdm import tqdm

EVERY_SECONDS = 30.0


def bar(iterable, desc: str, total: int, initial: int = 0, enabled: bool = True):
    """An iterable with `set_postfix`, like tqdm."""
    quiet = not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    if quiet or sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, dynamic_ncols=True,
                    disable=True if quiet else None)
    return Lines(iterable, desc, total, initial)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


class Lines:
    def __init__(self, iterable, desc, total, initial=0):
        self.iterable, self.desc, self.total, self.initial = iterable, desc, total, initial
        self.postfix = ""

    def set_postfix(self, **values):
        self.postfix = "; " + ", ".join(f"{k} {v}" for k, v in values.items())

    def __iter__(self):
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now, step = time.monotonic(), self.initial + done
            if done == 1 or now - last >= EVERY_SECONDS or step == self.total:
                per_step = (now - start) / done
                left = _duration(per_step * (self.total - step))
                print(f"{self.desc}: step {step}/{self.total}, {per_step:.2f} s/step, {left} "
                      f"left{self.postfix}", file=sys.stderr, flush=True)
                last = now
