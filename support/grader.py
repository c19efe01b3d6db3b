"""A math answer grader: is a predicted final answer equivalent to the gold one?

This is the judge behind LANPO's 0/1 reward (reward.py): `is_equivalent(pred, gold)` says whether
two final answers are the same mathematical object, as a MATH / GSM8K grader would. It reads in
the order the judge works:

1. Boxes: read the content of a `\\boxed{..}` (also used by reward.extract_answer).
2. Normalization: one canonical string per way of writing an answer (`\\dfrac12`, `50\\%`,
   `10,\\!080`, `5 \\text{ cm}` ...).
3. Structure: tuples, intervals, sets, unions and matrices compare element by element.
4. Scalars: plain numbers compare exactly in this process; anything else goes to sympy.
5. The sympy worker: a separate process that answers "equal?" within a time budget.
6. The parser: normalized LaTeX straight into sympy objects, without eval.

What it simplifies, compared with the large graders used in practice (e.g. the MATH grader of
Hendrycks et al. 2021, whose `strip_string` rules inspired section 2, or math-verify):
- Only the LaTeX that MATH / GSM8K answers use: numbers, \\frac, \\sqrt, powers, pi, i (the
  imaginary unit; e is just a letter), trigonometric functions, tuples, intervals, sets,
  unions, matrices. An answer outside that (\\pm, base subscripts like 52_8, |x|) is compared
  as a normalized string only.
- Conventions, each a choice a grader must make: the percent sign is dropped (`50\\%` == `50`,
  as the MATH grader does); units and `x =` are dropped; a bare list `1, 2` is unordered;
  a digit before \\frac is a mixed number (`1\\frac{4}{5}` == 9/5); a letters-only word never
  equals a number; integers and fractions compare exactly, but an answer written with a
  decimal point compares with a relative tolerance of 1e-6 (so `0.5` == 1/2, `0.333` != 1/3).
- Power towers, huge exponents and big factorials are refused (scored 0), not evaluated.

Safety: is_equivalent never raises (anything it cannot judge is False), and no call takes more
than a second (SYMPY_BUDGET + GRACE), except the first symbolic comparison of a process, which
waits once for the worker to start (~0.7 s). Symbolic comparisons run in one persistent worker
process (a thread cannot stop sympy; a process can be killed). Plain numbers, the bulk of GSM8K
rewards, never leave this process.
"""
import atexit
import functools
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

MAX_LEN = 1000         # longer "answers" are compared as exact strings only
MAX_SYMPY_LEN = 200    # longer expressions never reach sympy
SYMPY_BUDGET = 0.6     # seconds of symbolic work per is_equivalent call
GRACE = 0.25           # extra seconds before a worker that ignored its alarm is killed
START_TIMEOUT = 30.0   # one-off: the worker imports sympy (~0.5 s) before its first answer
REL_TOL = Fraction(1, 10**6)  # relative tolerance when a side is written as a decimal
MAX_POWER_BITS = 2e5   # a power whose value would need more bits is refused, not computed
MAX_FACTORIAL = 1000

# =============================================================================================
# 1. Boxes: the content of \boxed{..}
# =============================================================================================
# A grader meets boxes twice: reward.extract_answer looks for the last one in a response, and
# a gold or predicted answer may arrive still in its box (`\boxed{7}` == `7`).

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"\\[{}]|[{}]")


def _braced(text: str, start: int):
    """The content of the {...} group opening at text[start], or None if it never closes.
    Escaped braces \\{ \\} are set delimiters, not grouping, so they do not count."""
    depth = 0
    for m in _BRACE_RE.finditer(text, start):
        if len(m.group()) == 2:
            continue
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start + 1:m.start()]
    return None


def last_boxed(text: str):
    """The content of the last \\boxed{..} (or \\fbox) in text; None if there is none or it
    never closes."""
    last = None
    for last in _BOXED_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end():]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(rest, len(rest) - len(stripped))
    bare = re.match(r"[^\s$]+", stripped)  # `\boxed 5`: one token, up to a space or a `$`
    return bare.group() if bare else None


# =============================================================================================
# 2. Normalization: one canonical string per way of writing an answer
# =============================================================================================
# Each rule removes a difference that a human grader ignores. Order matters: e.g. spacing
# commands must go before thousands separators are recognized (`10,\!080`).

_RULES = [(re.compile(p), r) for p, r in [
    (r"\\?\$", ""),                                        # $..$ delimiters and \$ dollars
    (r"(?<!\\)\\[()\[\]]", ""),                            # \( \) \[ \] delimiters
    (r"\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])", ""),   # \left( 1, 2 \right)
    (r"\\displaystyle", ""),
    (r"\\[dt]frac(?![A-Za-z])", r"\\frac"),
    (r"\\(?:mbox|textrm|textbf|textit|textnormal|mathrm|mathbf|mathit)(?![A-Za-z])", r"\\text"),
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°", ""),    # 90^\circ
    (r"\\?%", ""),                                         # convention: 50\% == 50
    (r"(?<!\\)\\!", ""),                                  # negative thin space: 10,\!080
    (r"(?<!\\)\\[,;: ]|\\q?quad(?![A-Za-z])|~", " "),
    # a trailing unit in \text{..} (`5 \text{ cm}`, `864 \mbox{ inches}^2`): drop it
    (r"(?<=\S)\s*\\text\s*\{[A-Za-z .]*\}\s*(?:\^\s*\{?\d\}?)?\s*\.?\s*$", ""),
    (r"\\text\s*\{([^{}]*)\}", r"\1"),                     # other text is the answer: unwrap
    # a trailing plain-word unit after a number (`18 dollars`, but not `2 pi`)
    (r"^([+-]?[\d.,/]+)\s+(?!pi\b|sqrt)[A-Za-z]{2,}(?:\s+[A-Za-z]+)*(?:\^\d)?\.?$", r"\1"),
    (r"\s+", " "),
    (r"(?<![A-Za-z]) | (?![A-Za-z])", ""),                 # spaces matter only in `\cot x`
    (r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:=|\\in(?![A-Za-z]))(?!.*=)", ""),  # x = 5, x \in [1,2]
    (r"[.,;:]+$", ""),                                     # trailing punctuation
    (r"^([+-]?\d{1,3})((?:,\d{3})+)(\.\d*)?$",             # thousands separators: 1,000
     lambda m: m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")),
    (r"\\frac(\d)(\d)", r"\\frac{\1}{\2}"),                # \frac12, \frac 59
    (r"\\frac(\w)\{", r"\\frac{\1}{"),
    (r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}"),        # \frac{270}7
    (r"\\sqrt(\w)", r"\\sqrt{\1}"),                        # 11\sqrt2
    (r"_(\w)", r"_{\1}"),                                  # 52_8 == 52_{8}
    (r"^\(([A-Za-z])\)$", r"\1"),                          # multiple choice (C)
]]


@functools.lru_cache(maxsize=1 << 16)
def _normalize(s: str) -> str:
    s = s.strip()
    if _BOXED_RE.match(s):  # a whole answer passed still in its box
        boxed = last_boxed(s)
        s = s if boxed is None else boxed
    for regex, repl in _RULES:
        s = regex.sub(repl, s)
    return s.strip()


# =============================================================================================
# 3. Structure: tuples, intervals, sets and matrices compare element by element
# =============================================================================================

_OPEN, _CLOSE = "([{", ")]}"


def _split_top(s: str, sep: str) -> list[str]:
    """Split at each `sep` that is outside every bracket."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in _OPEN:
            depth += 1
        elif s[i] in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    return parts + [s[start:]]


def _wraps(s: str) -> bool:
    """Does the bracket at s[0] close at s[-1]? `(1,2)` yes; `(a+5)(b+2)` no."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if depth == 0:
            return i == len(s) - 1
    return False


def _structure(s: str):
    """(kind, items). Kinds: 'scalar' (items is the string), 'unordered' (sets, unions, bare
    lists), 'seq' + its two brackets (tuples, intervals: `seq(]`), 'matrix' of 'row's."""
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix)\}(.*)\\end\{\1\}", s)
    if m:
        rows = [r for r in m.group(2).split("\\\\") if r]
        return "matrix", [("row", [("scalar", c) for c in _split_top(r, "&")]) for r in rows]
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return "unordered", [_structure(p) for p in parts]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "unordered", [_structure(p) for p in _split_top(s[2:-2], ",")]
    if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and _wraps(s):
        items = _split_top(s[1:-1], ",")
        if len(items) > 1:
            return "seq" + s[0] + s[-1], [_structure(p) for p in items]
    items = _split_top(s, ",")
    if len(items) > 1:  # convention: a bare list of answers `1, -2` is unordered
        return "unordered", [_structure(p) for p in items]
    return "scalar", s


def _structures_equal(a, b, budget) -> bool:
    (kind_a, xs), (kind_b, ys) = a, b
    if kind_a != kind_b:
        return False
    if kind_a == "scalar":
        return _scalar_equal(xs, ys, budget)
    if len(xs) != len(ys) or len(xs) > 50:
        return False
    if kind_a != "unordered":
        return all(_structures_equal(x, y, budget) for x, y in zip(xs, ys))
    unused = list(ys)  # greedy matching: each item of a pairs with a distinct item of b
    for x in xs:
        match = next((y for y in unused if _structures_equal(x, y, budget)), None)
        if match is None:
            return False
        unused.remove(match)
    return True


# =============================================================================================
# 4. Scalars: a fast exact path for plain numbers, sympy for the rest
# =============================================================================================

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_NUMBER_FORMS = [(re.compile(p), f) for p, f in [
    (rf"({_NUM})", lambda n: Fraction(n)),
    (rf"({_NUM})/({_NUM})", lambda n, d: Fraction(n) / Fraction(d)),
    (rf"([+-]?)\\frac\{{({_NUM})\}}\{{({_NUM})\}}",
     lambda sign, n, d: (-1 if sign == "-" else 1) * Fraction(n) / Fraction(d)),
    (r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}",  # mixed number: 1\frac{4}{5} = 9/5
     lambda sign, w, n, d: (-1 if sign == "-" else 1) * (int(w) + Fraction(int(n), int(d))))]]
_WORD_RE = re.compile(r"[A-Za-z ]{3,}")
_SYMPY_CHARS_RE = re.compile(r"[\w\\{}()\[\]+\-*/^!. ]*", re.ASCII)
_TOWER_RE = re.compile(r"(?:\^|\*\*)\s*\{?\s*-?\d{6,}|\d{4,}\s*!|[)}!]\s*!")


def _number(s: str):
    """(value, exact) for a plain number, fraction or mixed number; None for anything else.
    Values are exact Fractions, so `0.1 + 0.2` style float error never enters."""
    for regex, value in _NUMBER_FORMS if len(s) <= 100 else []:
        m = regex.fullmatch(s)
        if m:
            try:
                return value(*m.groups()), "." not in s
            except ZeroDivisionError:
                return None
    return None


def _scalar_equal(a: str, b: str, budget) -> bool:
    if a == b:
        return True
    if _WORD_RE.fullmatch(a) and a.lower() == b.lower():
        return True  # text answers: `\text{East}` == `east`
    if "=" in a or "=" in b:  # equations: side by side
        sides_a, sides_b = a.split("="), b.split("=")
        return len(sides_a) == len(sides_b) and all(
            _scalar_equal(x, y, budget) for x, y in zip(sides_a, sides_b))
    na, nb = _number(a), _number(b)
    if na and nb:
        (x, exact_x), (y, exact_y) = na, nb
        return x == y if exact_x and exact_y else abs(x - y) <= REL_TOL * max(abs(x), abs(y))
    for n, other in ((na, b), (nb, a)):  # a number vs letters without a digit or a command
        if n and not re.search(r"[\d\\]", other):
            return False
    for s in (a, b):  # cheap guards: never send sympy what it cannot answer fast
        if len(s) > MAX_SYMPY_LEN or not _SYMPY_CHARS_RE.fullmatch(s) or _TOWER_RE.search(s):
            return False
    return _WORKER.ask(a, b, budget)


@functools.lru_cache(maxsize=1 << 16)
def _equivalent_normalized(a: str, b: str) -> bool:
    if a == b:
        return True
    budget = [None, False]  # this call's sympy deadline (set at its first request); see ask
    return _structures_equal(_structure(a), _structure(b), budget)


def is_equivalent(pred: str, gold: str) -> bool:
    """Is `pred` mathematically equivalent to `gold`? Never raises; unparseable is False."""
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        if len(pred) > MAX_LEN or len(gold) > MAX_LEN:
            return pred.strip() == gold.strip() != ""
        a, b = _normalize(pred), _normalize(gold)
        if not a or not b:
            return False
        return _equivalent_normalized(*sorted((a, b)))  # sorted: symmetric by construction
    except Exception:
        return False


# =============================================================================================
# 5. The sympy worker: a separate process, so a runaway computation can be stopped
# =============================================================================================
# The parent sends one JSON line [a, b, seconds] and reads back "1" or "0". Inside the worker a
# SIGALRM interrupts slow Python code (simplify) and the worker answers "0" and lives on. Big-
# integer C code cannot be interrupted, so if no answer comes within the budget plus GRACE the
# parent kills the worker and starts a new one at once, which warms up while the caller goes on.
# Calls that meet the new worker still starting wait only within their own budget.
# The worker is started with `python -c` on this file's path (not multiprocessing), so it works
# the same under pytest, from scripts without a __main__ guard, and after torch is imported; it
# exits when its stdin closes (the parent died) and is killed at the parent's exit (atexit).

_BOOT = ("import importlib.util, sys\n"
         "spec = importlib.util.spec_from_file_location('_grader_worker', sys.argv[1])\n"
         "mod = importlib.util.module_from_spec(spec)\n"
         "spec.loader.exec_module(mod)\n"
         "mod._serve()\n")


class _Unavailable(Exception):
    """The worker is (re)starting: a transient failure. It escapes the lru_cache, so it is
    never remembered, and is_equivalent turns it into False."""


class _Worker:
    def __init__(self):
        self.proc, self.buf, self.ready, self.ever_ready, self.kills = None, b"", False, False, 0
        self.lock = threading.Lock()

    def _spawn(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.buf, self.ready = b"", False

    def _readline(self, deadline: float):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # the worker died
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self):
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=1)
                self.proc.stdin.close()
                self.proc.stdout.close()
            except Exception:
                pass
            self.proc = None

    def forget(self):
        """In a forked child: the parent's worker is not ours to use or kill."""
        self.proc, self.buf, self.ready, self.ever_ready = None, b"", False, False
        self.lock = threading.Lock()

    def ask(self, a: str, b: str, budget: list) -> bool:
        """budget = [deadline, waited], shared by all requests of one is_equivalent call. A call
        that waited for a restarting worker had no fair chance: its "no" is _Unavailable."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._spawn()
            if budget[0] is None and self.ever_ready:
                budget[0] = time.monotonic() + SYMPY_BUDGET
            if not self.ready:  # the first start may take its time; a restart eats the budget
                budget[1] = self.ever_ready
                wait = budget[0] if self.ever_ready else time.monotonic() + START_TIMEOUT
                if self._readline(wait) != b"ready":
                    raise _Unavailable
                self.ready = self.ever_ready = True
            if budget[0] is None:
                budget[0] = time.monotonic() + SYMPY_BUDGET
            ok = self._request(a, b, budget[0])
        if not ok and budget[1]:
            raise _Unavailable
        return ok

    def _request(self, a: str, b: str, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0.01:
            return False  # this call has used its budget: "too slow" counts as not equivalent
        try:
            self.proc.stdin.write(json.dumps([a, b, left]).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:  # the worker died between two calls
            self.close()
            raise _Unavailable
        try:
            line = self._readline(deadline + GRACE)
        except BaseException:  # e.g. Ctrl-C: its late answer must not be read as the next one's
            self.close()
            raise
        if line is None:  # stuck in code the alarm cannot interrupt: kill, start a new one now
            self.close()
            self.kills += 1
            self._spawn()
        return line == b"1"


_WORKER = _Worker()
atexit.register(_WORKER.close)
os.register_at_fork(after_in_child=lambda: _WORKER.forget())


sympy = None  # imported in the worker only: the parent never pays for sympy


class _Refuse(Exception):
    """The expression is outside the grammar, or too big to evaluate safely."""


class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so that sympy's `except Exception` cannot eat it."""


def _serve():
    """The worker's main loop (runs in the child process)."""
    global sympy
    import sympy
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent

    def on_alarm(*_):
        raise _Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    _sympy_equal("2\\sqrt{2}", "\\sqrt{8}")  # load sympy's lazy modules before saying ready
    _sympy_equal("x^2+2x+1", "(x+1)^2")
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            a, b, seconds = json.loads(line)
            signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
            try:
                ok = _sympy_equal(a, b)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException:
            ok = False
        out.write(b"1\n" if ok else b"0\n")
        out.flush()


def _sympy_equal(a_src: str, b_src: str) -> bool:
    try:
        (a, inexact_a), (b, inexact_b) = _Parser(a_src).parse(), _Parser(b_src).parse()
    except (_Refuse, RecursionError, ValueError, TypeError, ZeroDivisionError, OverflowError):
        return False
    if a.has(sympy.zoo, sympy.nan) or b.has(sympy.zoo, sympy.nan):
        return False
    if a == b:
        return True
    d = a - b
    if inexact_a or inexact_b:  # a decimal was written: equal within REL_TOL
        if d.free_symbols:
            return sympy.simplify(d) == 0
        return _close(a, b, float(REL_TOL))
    if d.free_symbols:
        return sympy.expand(d) == 0 or sympy.simplify(d) == 0
    # exact constants: simplify; if that leaves something irrational, agreement to 30 digits
    # decides (it catches nested radicals and the like that simplify does not finish)
    d = sympy.simplify(d)
    return d == 0 or (not d.is_Rational and _close(a, b, 1e-30, digits=50))


def _close(a, b, rel: float, digits: int = 30) -> bool:
    try:
        va, vb = sympy.N(a, digits), sympy.N(b, digits)
        if not (va.is_finite and vb.is_finite):  # oo <= oo would say "close"
            return False
        return bool(abs(va - vb) <= rel * max(abs(va), abs(vb)))
    except TypeError:  # not a number (nan, a symbol left over): not equal
        return False


# =============================================================================================
# 6. The parser: LaTeX (as normalized above) straight into sympy objects
# =============================================================================================
# It never calls eval (sympy's parse_expr does), and it checks every power and factorial
# before computing it. It runs in the worker only.

_TOKEN_RE = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|(\\[A-Za-z]+)|(\*\*|[-+*/^()\[\]{}!]|[A-Za-z]))")
_FUNCS = {"sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
          "arcsin": "asin", "arccos": "acos", "arctan": "atan", "ln": "log", "log": "log",
          "exp": "exp", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh"}
_GREEK = set("alpha beta gamma delta epsilon theta lambda mu nu rho sigma tau phi psi omega"
             .split())


class _Parser:
    """Recursive descent: sum > product (explicit or implicit) > unary minus > power."""

    def __init__(self, src: str):
        self.toks, pos = [], 0
        while pos < len(src):
            m = _TOKEN_RE.match(src, pos)
            if not m:
                if src[pos:].strip():
                    raise _Refuse(src[pos:])
                break
            self.toks.append(m.group(m.lastindex))
            pos = m.end()
        self.i, self.inexact = 0, False

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected=None):
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Refuse(f"expected {expected}")
        self.i += 1
        return tok

    def accept(self, *toks) -> bool:
        if self.peek() in toks:
            self.i += 1
            return True
        return False

    def parse(self):
        value = self.sum()
        if self.peek() is not None:
            raise _Refuse("trailing tokens")
        return value, self.inexact

    def sum(self):
        value = self.product()
        while self.peek() in ("+", "-"):
            value = value + self.product() if self.take() == "+" else value - self.product()
        return value

    def product(self):
        value = self.unary()
        while True:
            tok = self.peek() or " "
            if self.accept("*", "\\cdot", "\\times"):
                value = value * self.unary()
            elif self.accept("/", "\\div"):
                value = value / self.unary()
            elif tok[0].isalnum() or tok[0] in ".({\\":
                value = value * self.power()  # implicit product: 2x, 2\sqrt{2}, (a+5)(b+2)
            else:
                return value

    def unary(self):
        if self.accept("-"):
            return -self.unary()
        self.accept("+")
        return self.power()

    def power(self, exponent=False):
        """An exponent is one token or a {group}: x^23 is x^{23}; 9^9^9 is 9^(9^9)."""
        if exponent and self.accept("-"):
            return -self.power(exponent=True)
        base = self.primary() if exponent else self.postfix()
        if self.accept("^", "**"):
            return self.pow(base, self.power(exponent=True))
        return base

    def pow(self, base, exp):
        if exp.is_number:  # refuse before computing: the big-integer power cannot be stopped
            base_bits = math.log2(abs(complex(base)) + 2) if base.is_number else 1.0
            if abs(complex(exp)) * base_bits > MAX_POWER_BITS:
                raise _Refuse("power too big")
        return base ** exp

    def postfix(self):
        value = self.primary()
        while self.accept("!"):
            if not (value.is_Integer and 0 <= value <= MAX_FACTORIAL):
                raise _Refuse("factorial")
            value = sympy.factorial(value)
        return value

    def arg(self):
        """A macro argument: a {group} or one token (`\\frac12` reads 1 and 2)."""
        tok = self.peek()
        if tok is not None and tok[0].isdigit() and len(tok) > 1:
            self.toks[self.i] = tok[1:]
            return self.number(tok[0])
        return self.primary()

    def number(self, tok):
        self.inexact |= "." in tok
        value = Fraction(tok)
        return sympy.Rational(value.numerator, value.denominator)

    def primary(self):
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return self.number(tok)
        if tok.isalpha():
            return sympy.I if tok == "i" else sympy.Symbol(tok)
        if tok in ("(", "{"):
            value = self.sum()
            self.take(")" if tok == "(" else "}")
            return value
        name = tok[1:]
        if name == "frac":
            return self.arg() / self.arg()
        if name == "sqrt":
            if self.accept("["):
                n = self.sum()
                self.take("]")
                return sympy.root(self.arg(), n)
            return sympy.sqrt(self.arg())
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCS:
            exp = self.power(exponent=True) if self.accept("^", "**") else None  # \sin^2 x
            value = getattr(sympy, _FUNCS[name])(self.power())
            return value if exp is None else self.pow(value, exp)
        raise _Refuse(tok)
