"""The experience pool: LANPO's memory of past rollouts, as text (arXiv 2510.16552, section 4).

Each entry is one rollout: its attempt, its reward, and the principles and pitfalls the current
model distilled from its group when it entered (train.py, step 7). Two ways of reading it:
*intra-sample* (Reward-Agnostic Reflection): `earlier_attempt`, one of this problem's own
attempts drawn without looking at its reward; *inter-sample* (Relevant Abstraction): `retrieve`
ranks *other* problems by BM25 similarity, keeps those at or above gamma, and `lessons` gathers
what was distilled from them. No model is called here.
Simplified relative to the paper: one BM25 document per *problem* (its question), so a problem
never retrieving itself is one comparison; lessons are distilled once per group as it enters,
not again per query; BM25 reads words without digits (numbers vary inside a family).
"""
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from support import data
import prompts
from support import rundir
from support.errors import UserError

CAP_PER_PROBLEM = 32   # the paper's cap on a problem's entries
MAX_PRINCIPLES = 3   # at most this many principles and pitfalls go into one context: a long
MAX_PITFALLS = 4     # list dilutes the signal, and irrelevant context hurts (RESULTS.md)


@dataclass
class Entry:
    problem_id: str
    question: str
    attempt: str                 # the flow of thought: the full response text
    reward: float
    step: int
    principles: list = field(default_factory=list)   # distilled by the model for this group
    pitfalls: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)          # e.g. {"family": ...} in the tiny world


def parse_summary(text: str):
    """Read "Principles: a; b / Pitfalls: c" back into two lists. None if the text does not
    follow the format (the summary is then dropped, not guessed)."""
    m = re.search(r"principles\s*:(.*?)pitfalls\s*:(.*)", text, flags=re.S | re.I)
    if not m:
        return None

    def items(s):
        out = []
        for part in re.split(r"[;\n]|\s-\s", s):
            part = part.strip(" .-*\t")
            if part and part.lower() != prompts.NONE and part not in out:
                out.append(part)
        return out
    return items(m.group(1)), items(m.group(2))


_TOKEN_RE = re.compile(r"[a-z]+")


def bm25_tokens(text: str) -> list[str]:
    """Lowercase words of letters only; digits are dropped (see the module docstring)."""
    return _TOKEN_RE.findall(text.lower())


class BM25Index:
    """Okapi BM25 over the pool's questions, grown one at a time: adding a question costs its
    own words, not a rebuild. Scores equal rank_bm25's BM25Okapi (k1 = 1.5, b = 0.75) with
    epsilon = 0 (tested), so a word in most questions has idf 0 rather than rank_bm25's default
    epsilon x mean idf, which turns negative in a small pool."""
    k1, b = 1.5, 0.75

    def __init__(self):
        self.doc_len, self.total_len, self.df = [], 0, {}
        self.postings = {}   # word -> (document numbers, term frequencies), as lists
        self._arrays, self._changed, self._stale = {}, set(), False
        self.idf, self.norm, self.avgdl = {}, None, 0.0

    def add(self, tokens: list[str]):
        d = len(self.doc_len)
        self.doc_len.append(len(tokens))
        self.total_len += len(tokens)
        tf = {}
        for t in tokens:
            tf[t] = tf.get(t, 0) + 1
        for t, n in tf.items():
            self.df[t] = self.df.get(t, 0) + 1
            docs, freqs = self.postings.setdefault(t, ([], []))
            docs.append(d)
            freqs.append(n)
            self._changed.add(t)
        self._stale = True

    def refresh(self):
        """Recompute what depends on the number of documents (idf, length normalization)."""
        if not self._stale:
            return
        n_docs = len(self.doc_len)
        self.avgdl = self.total_len / n_docs
        self.idf = {}
        for t, n in self.df.items():
            idf = math.log(n_docs - n + 0.5) - math.log(n + 0.5)
            self.idf[t] = idf if idf >= 0 else 0.0
        # the length normalization of each document: k1 (1 - b + b |d| / avgdl)
        self.norm = self.k1 * (1 - self.b + self.b * np.asarray(self.doc_len, float) / self.avgdl)
        for t in self._changed:
            docs, freqs = self.postings[t]
            self._arrays[t] = (np.array(docs), np.array(freqs, float))
        self._changed.clear()
        self._stale = False

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        """BM25 score of every document for the query."""
        self.refresh()
        scores = np.zeros(len(self.doc_len))
        for t in query_tokens:
            idf = self.idf.get(t, 0.0)
            if idf <= 0:   # an unknown word, or a word in most questions: adds nothing
                continue
            d, tf = self._arrays[t]
            # Okapi BM25: idf * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))
            scores[d] += idf * tf * (self.k1 + 1) / (tf + self.norm[d])
        return scores

    def ceiling(self, query_tokens: list[str]) -> float:
        """The score the query would get against a document identical to itself: the most any
        document can score. A query word that no document contains gets the idf of a word in
        no document (the largest there is): a rare word nothing in the pool shares is exactly
        what should make a query unmatched."""
        self.refresh()
        unknown_idf = math.log(len(self.doc_len) + 0.5) - math.log(0.5)
        norm = self.k1 * (1 - self.b + self.b * len(query_tokens) / self.avgdl)
        total = 0.0
        for t in set(query_tokens):
            idf = self.idf.get(t, unknown_idf)   # 0 for a word in most questions (see above)
            if idf > 0:
                tf = query_tokens.count(t)
                total += idf * tf * (self.k1 + 1) / (tf + norm)
        return total


class Pool:
    def __init__(self, cap_per_problem: int = CAP_PER_PROBLEM):
        self.cap = cap_per_problem
        self.entries: dict[str, list[Entry]] = {}   # problem id -> entries, oldest first
        self.index = BM25Index()                     # one document per problem: its question
        self._ids: list[str] = []                    # problem id of each document
        self._id_rank = None                         # rank of each id in sorted order (ties)

    def __len__(self):
        return sum(len(v) for v in self.entries.values())

    def add(self, entries: list[Entry]):
        """Add entries; beyond the cap the *oldest* entries of a problem go first, because the
        newest attempts are the ones the current policy would make, and reflecting on them is
        what the intra-sample block is for."""
        for e in entries:
            if e.problem_id not in self.entries:
                self.entries[e.problem_id] = []
                self.index.add(bm25_tokens(e.question))
                self._ids.append(e.problem_id)
                self._id_rank = None
            self.entries[e.problem_id].append(e)
        for pid in {e.problem_id for e in entries}:
            del self.entries[pid][:-self.cap]

    # --- intra-sample: Reward-Agnostic Reflection ---------------------------------------------
    def earlier_attempt(self, problem_id: str, rng: random.Random,
                        failed_only: bool = False) -> Entry | None:
        """One earlier attempt at this problem, uniformly at random. The reward is not looked
        at: every attempt is equally likely, right or wrong. (`failed_only`: the leaky ablation,
        `--reflection leaky`, where the choice itself says "this one is wrong".)"""
        own = [e for e in self.entries.get(problem_id, []) if not failed_only or e.reward <= 0]
        return rng.choice(own) if own else None

    # --- inter-sample: Relevant Abstraction ---------------------------------------------------
    def _scores(self, query_tokens: list[str]) -> np.ndarray:
        """BM25 score of every problem in the pool for the query (the order of self._ids)."""
        return self.index.scores(query_tokens)

    def retrieve(self, question: str, exclude_id: str, k: int = 4, gamma: float = 0.5):
        """The top-k *other* problems whose similarity to `question` is >= gamma, as (problem
        id, similarity), most similar first. Similarity is absolute: BM25 / the score of a
        perfect match (the query against a copy of itself), so a query with nothing relevant
        in the pool retrieves nothing. gamma = 0: the plain top-k. (The paper's gamma = 0.9
        uses a normalization it does not define; the default here is measured, RESULTS.md.)"""
        if not self.entries:
            return []
        if self._id_rank is None:
            self._pos = {pid: i for i, pid in enumerate(self._ids)}
            self._id_rank = np.empty(len(self._ids), dtype=np.int64)
            self._id_rank[np.argsort(np.array(self._ids, dtype=object))] = np.arange(len(self._ids))
        tokens = bm25_tokens(question)
        scores = self._scores(tokens)
        own = self._pos.get(exclude_id)
        if own is not None:
            scores[own] = 0.0   # a problem never retrieves itself
        ceiling = self.index.ceiling(tokens)
        if ceiling <= 0 or scores.max() <= 0:
            return []
        # sim(x, d) = min(BM25(x, d) / BM25(x, x), 1)
        sims = np.minimum(scores / ceiling, 1.0)
        # the gamma filter: keep only what is similar enough (its ablation: section 5.2)
        keep = np.flatnonzero((sims >= gamma) & (scores > 0))
        # most similar first; ties broken by problem id, so the result is deterministic
        top = keep[np.lexsort((self._id_rank[keep], -sims[keep]))][:k]
        return [(self._ids[i], float(sims[i])) for i in top]

    def lessons(self, problem_ids: list[str]) -> tuple[list[str], list[str]]:
        """Principles and pitfalls of the retrieved problems, merged without repeats. For each
        problem the newest summary that states a principle is used, else its newest summary:
        an old success is still a success, while an empty summary says nothing."""
        principles, pitfalls = [], []
        for pid in problem_ids:
            entries = self.entries[pid]
            chosen = next((e for e in reversed(entries) if e.principles), entries[-1])
            principles += [p for p in chosen.principles if p not in principles]
            pitfalls += [p for p in chosen.pitfalls if p not in pitfalls]
        pitfalls = [p for p in pitfalls if p not in principles]
        return principles[:MAX_PRINCIPLES], pitfalls[:MAX_PITFALLS]

    def raw_attempts(self, problem_ids: list[str], rng: random.Random, per_problem: int = 1):
        """Ablation: raw (attempt, was it right) pairs of the retrieved problems instead of
        their distilled lessons."""
        out = []
        for pid in problem_ids:
            for e in rng.sample(self.entries[pid], min(per_problem, len(self.entries[pid]))):
                out.append((e.attempt, e.reward > 0))
        return out

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str):
        """Write the pool as JSONL, atomically: a temporary file, fsync, then rename, so a crash
        leaves either the old pool or the new one, never half of one."""
        rundir.atomic_write(path, "".join(json.dumps(asdict(e)) + "\n"
                                          for entries in self.entries.values() for e in entries))

    @classmethod
    def load(cls, path: str, cap_per_problem: int = CAP_PER_PROBLEM) -> "Pool":
        pool = cls(cap_per_problem)
        entries = []
        for i, row in data.read_jsonl(path):
            try:
                entries.append(Entry(**row))
            except TypeError as e:
                raise UserError(f"{path} line {i}: not a pool entry ({e})")
        pool.add(entries)
        return pool


# =============================================================================================
# The contexts c a run shows: what the pool says about a problem
# =============================================================================================

@dataclass
class Lessons:
    """The inter-sample block of one problem's context."""
    found: list        # the problems retrieved (their ids); logged, never a gold answer
    principles: list
    pitfalls: list
    raw: list | None = None   # a control's (attempt, was it right) pairs instead of lessons


NO_LESSONS = Lessons([], [], [])


class Contexts:
    """The paper's contexts c, read from the pool (section 4). `lessons`: Relevant Abstraction,
    the lessons of the *other* problems whose similarity to x is at least gamma. `attempt`:
    Reward-Agnostic Reflection, an earlier attempt at this very problem, drawn without looking
    at its reward. `--feedback inter` or `intra` shows one of the two. The controls
    (placebo, oracle, raw attempts, the leaky reflection) subclass this in support/controls.py."""
    leaky = False   # the prompt does not say the attempt was wrong (it does not know)

    def __init__(self, pool: Pool, top_k: int, gamma: float, lessons: bool = True,
                 attempts: bool = True):
        self.pool, self.top_k, self.gamma = pool, top_k, gamma
        self.with_lessons, self.with_attempts = lessons, attempts

    def lessons(self, problem: dict, rng: random.Random) -> Lessons:
        if not self.with_lessons:
            return NO_LESSONS
        found = [pid for pid, _ in self.pool.retrieve(problem["question"],
                                                      exclude_id=problem["id"], k=self.top_k,
                                                      gamma=self.gamma)]
        return Lessons(found, *self.pool.lessons(found))

    def attempt(self, problem: dict, rng: random.Random) -> str | None:
        entry = self.earlier_entry(problem, rng)
        return entry.attempt if entry is not None else None

    def earlier_entry(self, problem, rng) -> Entry | None:
        return self.pool.earlier_attempt(problem["id"], rng) if self.with_attempts else None
