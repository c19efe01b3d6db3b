"""The tiny world: a synthetic math world where LANPO's question can be asked on a laptop CPU.

LANPO (arXiv 2510.16552) claims that language experience from one problem helps another. To
test that claim in minutes, and to check every link of the method against the truth, this file
builds a world small enough for a from-scratch model of well under a million parameters, and
designed from what prototypes measured (each choice below says what it guards against):

- Problems come in *families*. A family is named by a nonce word ("lomuf") and only the name
  says which of nine two-step procedures applies ("add then mul"). When the words of a question
  gave the procedure away ("gives away" = subtract), a small model ignored correct and wrong
  context alike; with nonce names it reads the context.
- The arithmetic is trivial (operands 1-15, results 0-50, each number one token), so that the
  only thing left to learn is *which procedure* a family uses: exactly what a principle in the
  pool ("add then mul") can transfer and what a sibling's *answer* cannot.
- The numbers carry no procedure. Every problem's numbers are valid for all nine procedures
  (every intermediate and result in range) and the nine give nine different answers. If the
  numbers were drawn to suit only the right procedure, a classifier that sees nothing but the
  three numbers would pick the right procedure far above chance (measured: 0.45 against 0.11),
  and every gain would be partly a number prior. `experiments/world_properties.py` reports
  that classifier's accuracy on this world.
- Three kinds of families. `sft` families (2 per procedure) are taught in SFT. `rl` families
  (1 per procedure) are what RL must learn; their train and test splits share families, not
  problems (rl-test is the main number). `unseen` families (1 per procedure) are in neither
  stage: zero-shot cannot improve on them, only experience read at test time can.
- Designed starting rates. What SFT leaves on each rl family is a property of the world, not
  of the SFT draw: SFT shows an rl family's name in plain problems whose responses follow the
  family's right procedure at a set share (`start_rate`, a ladder from 0 to 0.4 across the
  nine families), its one typical wrong procedure (`pitfall`) at 0.6, and the other seven at
  the rest. A model trained on that answers each family with about those frequencies when it
  samples, and with the pitfall when it decodes greedily, so every SFT seed leaves the same
  room to learn: greedy rl-test accuracy starts near 0, and GRPO gets a signal on a family
  only as often as its start rate lets a sample succeed. (Left to chance, two SFT seeds of an
  earlier world started their rl families at 0.95/0.005/0... and at 0.44/0.21/..., and the
  same RL run learned nothing on one of them.)
- Few filler words (four persons, one sentence frame), so that a family's name is the rarest
  word of a question and BM25 retrieval finds siblings by it.

The world knows the truth, so it also judges the language channel: is a summary's principle the
family's true one, is a retrieved problem from the query's family, which family was learned when.
It also builds the word-level tokenizer and the model config of the from-scratch tiny model.
Everything is deterministic in the world's own seed (fixed by default, independent of the run
seed), so every run and every checkpoint talks about the same world.
"""
import itertools
import operator
import random
import re
import statistics
import string
from dataclasses import dataclass

import prompts
from support.errors import UserError

# --- Procedures ---------------------------------------------------------------------------

# Three operations and the nine two-step procedures built from them. A procedure applied to
# (a, b, c) computes r1 = a op1 b, then r2 = r1 op2 c.
OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
PROCEDURES = list(itertools.product(OPS, OPS))
OPERANDS = range(1, 16)   # a, b, c
MAX_VALUE = 50            # every intermediate and result of every procedure stays in 0..50
PERSONS = ["tom", "ann", "sam", "eve"]   # few fillers: the family name is the rarest word

# The designed zero-shot rates of the nine rl families (sampled at temperature 1 from the SFT
# model), and the share of SFT responses that follow each family's typical wrong procedure.
RL_START_RATES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
PITFALL_SHARE = 0.6


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


def universal_numbers() -> list[tuple[int, int, int]]:
    """Every (a, b, c) on which all nine procedures stay in range and give nine different
    answers: only the procedure decides the answer, and the numbers say nothing about it."""
    out = []
    for t in itertools.product(OPERANDS, repeat=3):
        results = [run_procedure(p, *t) for p in PROCEDURES]
        if all(0 <= v <= MAX_VALUE for r in results for v in r) and \
                len({r2 for _, r2 in results}) == len(PROCEDURES):
            out.append(t)
    return out


@dataclass(frozen=True)
class Family:
    name: str                  # the nonce word that names the family in every question
    procedure: tuple           # its true procedure: the principle a summary should state
    kind: str                  # "sft", "rl" or "unseen"
    start_rate: float = None   # rl only: the designed share of its right procedure after SFT
    pitfall: tuple = None      # rl only: its typical wrong procedure (the SFT model's favorite)

    @property
    def principle(self) -> str:
        return procedure_text(self.procedure)


def _nonce_names(consonants: str, n: int, rng: random.Random, taken: set) -> list[str]:
    """n distinct five-letter nonce words (CVCVC) from the given consonants. Each kind of family
    draws from its own consonants, so a held-out name never looks like a taught one (a model
    maps an unseen name to a similar-looking seen one)."""
    names = []
    while len(names) < n:
        w = "".join(rng.choice(consonants) if i % 2 == 0 else rng.choice("aeiou")
                    for i in range(5))
        if w not in taken:
            taken.add(w)
            names.append(w)
    return names


class TinyWorld:
    """Families, problems, splits and the ground truth about them."""

    TRAIN_PER_FAMILY = 48   # RL train problems per rl family
    TEST_PER_FAMILY = 24    # test problems per family of every kind

    def __init__(self, seed: int = 0, n_fresh_names: int = 200):
        rng = random.Random(seed)
        taken = set(PERSONS)
        consonants = {"sft": "bdgkpt", "rl": "flmnrs", "unseen": "vwzjh"}
        self.families: list[Family] = []
        for kind, per_proc in (("sft", 2), ("rl", 1), ("unseen", 1)):
            names = _nonce_names(consonants[kind], per_proc * len(PROCEDURES), rng, taken)
            if kind != "rl":
                self.families += [Family(n, p, kind) for n, p in zip(names, PROCEDURES * per_proc)]
                continue
            # The ladder of start rates in a shuffled order, and a pitfall per family taken from
            # a shuffled cycle of the procedures: each procedure is the pitfall of exactly one rl
            # family and never its own, so no procedure is favored overall.
            rates = list(RL_START_RATES)
            rng.shuffle(rates)
            order = list(range(len(PROCEDURES)))
            rng.shuffle(order)
            pitfall_of = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
            self.families += [Family(n, p, kind, rates[i], PROCEDURES[pitfall_of[i]])
                              for i, (n, p) in enumerate(zip(names, PROCEDURES))]
        self.by_name = {f.name: f for f in self.families}
        # Fresh nonce names that name no family: SFT uses them to teach reading context ("a
        # name I do not know -> follow the principle in the feedback"). The rl and unseen names
        # are used that way too, each time with a *random* procedure given by the context: that
        # teaches nothing about what those families do, but teaches that for them, too, the
        # context decides (in a prototype without it, the right principle in context reached
        # only 0.57 of rl-test for one SFT seed), and gives an unseen name an embedding (a name
        # never seen is a random vector). The rl families' plain prior stays as designed because SFT teaches
        # it as a soft target (sft.py).
        self.fresh_names = _nonce_names("bdgkptflmnrs", n_fresh_names, rng, taken)
        self.context_names = self.fresh_names + [f.name for f in self.families
                                                 if f.kind in ("rl", "unseen")]
        # One list of numbers for the whole world; each family cuts its own test and train
        # numbers from its own shuffle of it, so which numbers a family uses says nothing about
        # its procedure.
        self.numbers = universal_numbers()
        need = self.TEST_PER_FAMILY + self.TRAIN_PER_FAMILY
        assert len(self.numbers) >= need, (len(self.numbers), need)
        self._split = {}
        for f in self.families:
            nums = list(self.numbers)
            random.Random(f"{seed}/{f.name}/numbers").shuffle(nums)
            self._split[f.name] = {"test": nums[:self.TEST_PER_FAMILY],
                                   "train": nums[self.TEST_PER_FAMILY:need]}
        self._seed = seed

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
        """The problems of every family of one kind, for split "train" or "test". Train and
        test numbers are disjoint inside a family: the splits share families, not problems.
        RL trains on the rl families' train split; the other kinds are evaluated."""
        if kind not in ("sft", "rl", "unseen") or split not in ("train", "test"):
            raise UserError(f"tiny world has kinds sft/rl/unseen and splits train/test, "
                            f"not {kind}/{split}")
        out = []
        for fam in self.families_of(kind):
            rng = random.Random(f"{self._seed}/{fam.name}/{split}")
            for i, t in enumerate(self._split[fam.name][split]):
                out.append(self.make_problem(fam, t, rng.choice(PERSONS),
                                             f"tiny/{kind}/{split}/{fam.name}/{i}"))
        return out

    def families_of(self, kind: str) -> list[Family]:
        return [f for f in self.families if f.kind == kind]

    def sft_numbers(self, name: str) -> list:
        """Numbers SFT may use with a name: all but that family's test numbers, so no test
        problem (a family's name with its test numbers) is ever an SFT example. A fresh name
        has no test problems and may use them all (its procedure is random, so this teaches
        only arithmetic)."""
        test = set(self._split[name]["test"]) if name in self._split else set()
        return [t for t in self.numbers if t not in test]

    def rl_prior(self, family: Family) -> dict:
        """The designed distribution of procedures in SFT's plain responses for an rl family:
        the right one at its start rate, its pitfall at PITFALL_SHARE, the rest shared evenly."""
        others = [p for p in PROCEDURES if p not in (family.procedure, family.pitfall)]
        rest = (1.0 - family.start_rate - PITFALL_SHARE) / len(others)
        return {family.procedure: family.start_rate, family.pitfall: PITFALL_SHARE,
                **{p: rest for p in others}}

    # --- ground truth ---------------------------------------------------------------------
    def family_of(self, problem_or_question) -> Family | None:
        """The family of a problem (dict) or of a question (str), or None if not tiny."""
        if isinstance(problem_or_question, dict):
            return self.by_name.get(problem_or_question.get("family"))
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
        return set(parse_procedures(text)) == {self.by_name[family_name].procedure}

    def oracle_principle(self, problem: dict) -> str:
        """The family's true principle, for `--feedback oracle`: a procedure, never a number."""
        return self.by_name[problem["family"]].principle

    # --- diagnostics: the language channel and learning, checked against the truth ---------
    def language_channel(self, problems, retrieved, summaries, rewards, G, pool, step) -> dict:
        """How well each link of the language channel worked in RL step `step`:
        - retrieval_precision: retrieved problems that are from the query's own family;
        - retrieval_recall: among problems whose family had another problem in the pool when
          the step began, the fraction that retrieved at least one problem;
        - summary_correct: this step's summaries that state exactly the family's true principle
          (an unparseable one counts as wrong);
        - summary_correct_given_right: the same, among groups with at least one right attempt
          (a summary of only wrong attempts cannot know the principle).
        `retrieved` holds, per problem, the ids it retrieved (None: no inter-sample retrieval
        was made); summaries is None when none were asked for. A metric with nothing to
        measure is None (absent, not faked)."""
        family_of = {pid: entries[0].meta.get("family") for pid, entries in pool.entries.items()
                     if entries[0].step < step}   # in the pool before this step's insert
        same = [family_of.get(pid) == p["family"] for p, ids in zip(problems, retrieved or [])
                for pid in ids]
        found = [float(bool(ids)) for p, ids in zip(problems, retrieved or [])
                 if any(f == p["family"] and pid != p["id"] for pid, f in family_of.items())]
        judged, given_right = [], []
        for i, (p, s) in enumerate(zip(problems, summaries or [])):
            ok = s is not None and self.summary_is_correct(p["family"], s[0])
            judged.append(float(ok))
            if any(r > 0 for r in rewards[i * G:(i + 1) * G]):
                given_right.append(float(ok))
        return {"retrieval_precision": _mean([float(s) for s in same]),
                "retrieval_recall": _mean(found), "summary_correct": _mean(judged),
                "summary_correct_given_right": _mean(given_right)}

    def rl_train_accuracy(self, problems, rewards, has_context, G) -> dict:
        """This step's training accuracy on the rl families, for plain and for feedback-aware
        rollouts. Next to the zero-shot test accuracy on the same families it shows the paper's
        leakage signature: a training accuracy that climbs while the test accuracy stays flat."""
        on_rl = [self.by_name[p["family"]].kind == "rl" for p in problems for _ in range(G)]
        return {f"train_acc_rl_{kind}": _mean([r for r, c, rl in zip(rewards, has_context, on_rl)
                                               if rl and c == (kind == "feedback")])
                for kind in ("plain", "feedback")}

    def family_successes(self, problems, rewards, has_context, G) -> dict:
        """This step's rollouts and successes per rl family and rollout kind:
        {family: [right plain, plain rollouts, right feedback-aware, feedback-aware rollouts]}.
        Counted, not estimated: whether GRPO ever saw a success on a family is read here."""
        out = {}
        for i, p in enumerate(problems):
            if self.by_name[p["family"]].kind != "rl":
                continue
            row = out.setdefault(p["family"], [0, 0, 0, 0])
            for r, c in zip(rewards[i * G:(i + 1) * G], has_context[i * G:(i + 1) * G]):
                row[2 * c] += int(r > 0)
                row[2 * c + 1] += 1
        return out

    def per_family(self, problems, correct) -> dict:
        """Accuracy per family, from per-problem scores: which families a run has learned."""
        by = {}
        for p, c in zip(problems, correct):
            by.setdefault(p["family"], []).append(c)
        return {name: statistics.mean(v) for name, v in by.items()}

    # --- the tiny model's vocabulary ------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Every word the tiny model can read or write: specials, the numbers a response may
        contain, the words of every prompt template, and every name of the world."""
        words = set()
        literal = " ".join(part for t in prompts.ALL_TEMPLATES
                           for part, *_ in string.Formatter().parse(t))
        words.update(WORD_RE.findall(literal.lower()))
        words.update(PERSONS)
        words.update(f.name for f in self.families)
        words.update(self.fresh_names)
        words.update(OPS)
        words.update(["has", "and", "does", "with", "how", "many", "now", "then", "?", ".", ",",
                      ":", "=", "+", "-", "*", "####"])
        numbers = [str(i) for i in range(0, 1000)]
        words.difference_update(numbers)
        return SPECIALS + numbers + sorted(words)


def _mean(xs):
    return statistics.mean(xs) if xs else None


# --- The tiny model: word-level tokenizer and config ---------------------------------------

# Word-level tokens: runs of letters/digits, or runs of other symbols ("####", "?", ",").
WORD_RE = re.compile(r"\w+|[^\w\s]+")
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
    number and word is one token: with characters, a prototype spelled nonce names wrong and
    wrote the right summary 18% of the time instead of 96%. Text is lowercased; newlines are
    whitespace, so the tiny model reads a prompt as a flat sequence of words."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(world.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()   # the same split as WORD_RE
    # Each fixed instruction sentence of prompts.py is one token: the tiny model only needs to
    # tell the instructions apart, and this halves the length of a feedback-aware prompt,
    # which is most of the compute of SFT and RL on a CPU.
    # Each procedure ("add then mul") is one token too, so choosing a procedure is a single
    # categorical choice; with three tokens, the frequencies SFT teaches an rl family came out
    # wrong by up to 0.27 (the second operation fell back on its overall frequency).
    tok.add_tokens([AddedToken(s, normalized=True) for s in instruction_sentences()] +
                   [AddedToken(procedure_text(p), normalized=True) for p in PROCEDURES])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")


def is_tiny_tokenizer(tokenizer, world: TinyWorld) -> bool:
    """Was this tokenizer made by tiny_tokenizer for this world? (train.py refuses to run the
    tiny world with any other model: its prompts would be read as unknown words.)"""
    return tokenizer.get_vocab() == tiny_tokenizer(world).get_vocab()


def tiny_model_config(tokenizer, hidden: int = 128, layers: int = 3, heads: int = 4,
                      max_len: int = 512):
    """A small Llama built from a transformers config, so the tiny model goes through the same
    from_pretrained / save_pretrained path as a real one."""
    from transformers import LlamaConfig
    # An MLP of 2 x hidden (not the usual 4x): it costs most of the compute, and halving it made
    # an SFT step 1.7x faster on a 2-core CPU with no loss in the skills.
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                       intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_len, tie_word_embeddings=True,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=None)
