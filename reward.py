"""The numerical feedback: LANPO's scalar reward, 1 for a correct final answer, else 0.

LANPO (arXiv 2510.16552) keeps GRPO's outcome reward unchanged: the language feedback only
guides exploration. `extract_answer` finds the final answer (`\\boxed{..}`, `#### x`,
`Answer: x`), `is_equivalent` judges it as a MATH / GSM8K grader would (support/grader.py:
normalization, structures, sympy in a killable worker), `reward` is 1.0 or 0.0. No call
raises, and none takes more than about a second, whatever text the model emits.
"""
import re

from support.grader import is_equivalent, last_boxed

__all__ = ["extract_answer", "is_equivalent", "reward"]

_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_RE = re.compile(r"(?:the[ \t]+(?:final[ \t]+)?answer[ \t]+is"
                        r"|answer[ \t]*(?:\*\*|__|\*|_)?[ \t]*:)"  # also `**Answer**: 18`
                        r"[ \t]*:?[ \t]*([^\n]*)", re.IGNORECASE)

# Markdown emphasis. Instruct models often set the final answer in bold (`#### **18**`, `The
# answer is: **18**.`) or bold the label (`**Answer:** 18`, `**Final Answer: 18**`). The marks
# are formatting, not part of the answer; but `*` and `_` inside an answer are math (`2*3`,
# `x_1`, `a^*`, `52_8`), so marks are dropped only at the ends of the answer: a pair that wraps
# all of it (as CommonMark reads emphasis: no space inside the marks), the closing half of a
# bold label, or a lone bold half whose other half lies outside the answer (on the label).
_MARK = r"\*\*|__|\*|_"
_LABEL_CLOSE_RE = re.compile(rf"(?:{_MARK})(?=[ \t:]|$)[ \t]*:?[ \t]*")  # `**Answer:** 18`
_WRAPPED_RE = re.compile(rf"({_MARK})(\S|\S.*?\S)\1(\.?)")  # `**18**`, `*18*.`, `__18__`


def _unemphasize(answer: str) -> str:
    """`**18**` -> `18`: markdown emphasis around a final answer (see the comment above)."""
    closer = _LABEL_CLOSE_RE.match(answer)  # the label's bold ends where the answer begins
    if closer:
        answer = answer[closer.end():]
    for _ in range(2):  # `***18***` is bold and italic: two layers
        wrapped = _WRAPPED_RE.fullmatch(answer)
        if wrapped is None or wrapped.group(1) in wrapped.group(2):  # `**3** or **4**`: kept
            break
        answer = wrapped.group(2) + wrapped.group(3)
    for mark in ("**", "__"):  # a lone bold mark at an end: `**Answer: 18**` leaves `18**`
        if answer.count(mark) == 1:
            if answer.startswith(mark):
                answer = answer[2:]
            elif answer.endswith(mark) or answer.endswith(mark + "."):
                answer = answer[:answer.rindex(mark)] + answer[answer.rindex(mark) + 2:]
    return answer.strip()


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last \\boxed{..} (or \\fbox), else the rest of the line
    after the last `####`, else the last `Answer: x` / `The answer is x`, else None; markdown
    emphasis around a `####` or `Answer:` answer is dropped. A truncated last \\boxed{ (never
    closed) does not count as an answer."""
    try:
        boxed = last_boxed(text)
        if boxed and boxed.strip():
            return boxed.strip()
        for regex in (_HASHES_RE, _ANSWER_RE):
            last = None
            for last in regex.finditer(text):
                pass
            if last is not None:
                answer = _unemphasize(last.group(1).strip())
                if regex is _ANSWER_RE:  # prose: drop a final period
                    answer = answer[:-1].rstrip() if answer.endswith(".") else answer
                if answer:
                    return answer
        return None
    except Exception:
        return None


def reward(response: str, gold: str) -> float:
    """LANPO's numerical feedback: 1.0 if the response's final answer matches gold, else 0.0."""
    answer = extract_answer(response)
    return 1.0 if answer is not None and is_equivalent(answer, gold) else 0.0
