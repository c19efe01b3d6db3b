"""Every prompt template of LANPO (arXiv 2510.16552), in one place.

The policy sees a problem x either plainly (c empty: "from scratch") or with language feedback c
from the pool: the *inter-sample* block (Relevant Abstraction, section 4: principles and pitfalls
from similar problems) and the *intra-sample* block (Reward-Agnostic Reflection, section 4.1: one
earlier attempt at x, never labelled right or wrong). *Summarize* distills a group's attempts
into the pool's lessons. No function here takes a gold answer, so none can put one into a prompt.
The tiny world's tokenizer builds its vocabulary from these texts: rewording one needs new SFT.
"""

# How a prompt is wrapped for a tokenizer without a chat template (the tiny model). Models with
# a chat template get the prompt as a single user message instead (support/model.py).
PLAIN_FORMAT = "{prompt}\nResponse:"

# Every response ends with "#### <answer>", which reward.extract_answer reads.
_ANSWER_RULE = "End with #### and the final answer."

# --- Solving ------------------------------------------------------------------------------

# From scratch: c is empty. This is also the zero-shot evaluation prompt.
SOLVE = "Solve the problem step by step. " + _ANSWER_RULE + "\nProblem: {question}"

# Relevant Abstraction: what the current model distilled from similar problems that passed the
# similarity filter gamma (pool.py). "none" fills an empty list.
INTER_BLOCK = "Lessons from similar problems:\nPrinciples: {principles}\nPitfalls: {pitfalls}"

# Ablation (experiments only): the raw retrieved attempts, with their outcomes, instead of the
# distilled principles and pitfalls. Each line is ATTEMPT_LINE.
INTER_RAW_BLOCK = "Attempts at similar problems:\n{attempts}"

# Reward-Agnostic Reflection: one earlier attempt at *this* problem. The wording is the same
# whether the attempt was right or wrong, and the attempt was chosen without looking at its
# reward (pool.Pool.earlier_attempt), so the prompt carries no hint of the outcome.
INTRA_BLOCK = ("An earlier attempt at this problem. It may be right or wrong; "
               "check it step by step.\nAttempt: {attempt}")

# TEACHING ABLATION, deliberately wrong: the leaky reflection the paper warns against. The
# attempt is picked *because* it failed and the prompt says so, which leaks the reward into
# the context. Only experiments use it, to show the leakage signature (train accuracy up,
# test accuracy flat).
LEAKY_INTRA_BLOCK = ("An earlier attempt at this problem. It was wrong; "
                     "find the mistake.\nAttempt: {attempt}")

# The feedback-aware solve: blocks first, then the instruction to analyze them (the paper asks
# the model to analyze the feedback before it solves).
FEEDBACK_SOLVE = ("{feedback}\nAnalyze this feedback, then solve the problem step by step. "
                  + _ANSWER_RULE + "\nProblem: {question}")

# --- Summarizing (Relevant Abstraction, the distillation step) -----------------------------

# One problem's attempts with their outcomes -> principles and pitfalls in general terms.
# Outcomes may appear here because the summary is only ever shown to other problems.
SUMMARIZE = ("Summarize these attempts at a problem in general terms, without numbers: the "
             "principles of the right ones and the pitfalls of the wrong ones.\n"
             "Answer in two lines, Principles: and Pitfalls:, with items separated by ;\n"
             "Problem: {question}\n{attempts}")
ATTEMPT_LINE = "Attempt ({outcome}): {attempt}"
OUTCOME = {True: "right", False: "wrong"}

# What a summary looks like; pool.parse_summary reads it back.
SUMMARY = "Principles: {principles}\nPitfalls: {pitfalls}"
NONE = "none"
LIST_SEP = "; "


# --- Builders: formatting only -------------------------------------------------------------

def solve_prompt(question: str) -> str:
    """The plain prompt x (context c empty)."""
    return SOLVE.format(question=question)


def feedback_prompt(question: str, principles: list[str] | None = None,
                    pitfalls: list[str] | None = None, attempt: str | None = None,
                    raw_attempts: list[tuple[str, bool]] | None = None,
                    leaky: bool = False) -> str:
    """The feedback-aware prompt (x, c). Pass principles/pitfalls for the inter-sample block
    (or raw_attempts for the raw-trajectory ablation), attempt for the intra-sample block.
    With no feedback at all this is the plain prompt."""
    blocks = []
    if principles or pitfalls:
        blocks.append(INTER_BLOCK.format(principles=_join(principles), pitfalls=_join(pitfalls)))
    if raw_attempts:
        lines = "\n".join(ATTEMPT_LINE.format(outcome=OUTCOME[ok], attempt=a)
                          for a, ok in raw_attempts)
        blocks.append(INTER_RAW_BLOCK.format(attempts=lines))
    if attempt is not None:
        blocks.append((LEAKY_INTRA_BLOCK if leaky else INTRA_BLOCK).format(attempt=attempt))
    if not blocks:
        return solve_prompt(question)
    return FEEDBACK_SOLVE.format(feedback="\n".join(blocks), question=question)


def summarize_prompt(question: str, attempts: list[tuple[str, bool]]) -> str:
    """Ask for principles and pitfalls from (attempt text, was it right) pairs of one problem."""
    lines = "\n".join(ATTEMPT_LINE.format(outcome=OUTCOME[ok], attempt=a) for a, ok in attempts)
    return SUMMARIZE.format(question=question, attempts=lines)


def summary_text(principles: list[str], pitfalls: list[str]) -> str:
    """A summary in the format the summarize prompt asks for (SFT targets use it)."""
    return SUMMARY.format(principles=_join(principles), pitfalls=_join(pitfalls))


def _join(items):
    return LIST_SEP.join(items) if items else NONE


# Every literal text above, for the tiny world's vocabulary (data.py).
ALL_TEMPLATES = [PLAIN_FORMAT, SOLVE, INTER_BLOCK, INTER_RAW_BLOCK, INTRA_BLOCK, LEAKY_INTRA_BLOCK,
                 FEEDBACK_SOLVE, SUMMARIZE, ATTEMPT_LINE, SUMMARY, NONE, LIST_SEP,
                 *OUTCOME.values()]
