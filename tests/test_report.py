"""`python evaluate.py report RUN_DIR`: every section of report.html holds what the run's files
say (parsed as HTML), for a finished run and for one still going; and the page, rendered in
headless Chromium as a person would open it, loads and shows the run's numbers."""
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

import evaluate
import train
from pool import Pool
from support import rundir
from support.report import REPORT_FILE, _esc

SECTIONS = ("settings", "curves", "families", "modes", "completions", "pool", "retrieval")


class Page(HTMLParser):
    """The page's text per section (h2 id), its tables as lists of cell texts, its images."""

    def __init__(self):
        super().__init__()
        self.section, self.text, self.tables, self.images = None, {}, {}, []
        self._cell, self._row = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self.section = attrs.get("id")
            self.text[self.section] = ""
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self._row = []
            self.tables[self.section][-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self.section is not None:
            self.text[self.section] = self.text.get(self.section, "") + data
        if self._cell is not None:
            self._cell += data


def run_args(run_dir, tiny_dir, *extra):
    return ["--init", tiny_dir, "--run-dir", str(run_dir), "--steps", "4",
            "--problems-per-step", "3", "--group-size", "4", "--max-new-tokens", "8",
            "--summary-tokens", "12", "--eval-every", "0", "--ckpt-every", "2",
            "--eval-limit", "4", "--gamma", "0", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dir):
    """A finished 4-step run on 6 problems drawn every step, so that from step 2 on their
    prompts carry an earlier attempt (completions with and without a context c), two of each
    of three families (retrieval finds siblings)."""
    from support import data
    from support import world as W
    run_dir = tmp_path_factory.mktemp("report") / "rl"
    rl = W.TinyWorld().problems("rl", "train")
    problems = [p for f in sorted({p["family"] for p in rl})[:3]
                for p in [q for q in rl if q["family"] == f][:2]]   # siblings find each other
    with pytest.MonkeyPatch.context() as m:
        m.setattr(data, "train_problems", lambda spec, **kw: problems)
        train.main(run_args(run_dir, tiny_dir, "--problems-per-step", "6"))
    evaluate.main(["report", str(run_dir)])
    return run_dir


def parsed(run_dir):
    page = Page()
    page.feed(open(os.path.join(run_dir, REPORT_FILE)).read())
    return page


def rows_of(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_every_section_holds_the_runs_files(finished):
    page = parsed(finished)
    assert [s for s in SECTIONS if s in page.text] == list(SECTIONS)
    cfg = json.load(open(finished / "config.json"))
    cells = [c for row in page.tables["settings"][0][1:] for c in row]
    pairs = dict(zip(cells[::2], cells[1::2]))
    assert all(pairs[k] == _esc(v) for k, v in cfg.items())
    # the curves: an inline PNG, and the last step's numbers
    assert any(src.startswith("data:image/png;base64,") for src in page.images)
    last = [r for r in rows_of(finished / "metrics.jsonl") if "reward" in r][-1]
    table = dict(page.tables["curves"][0][1:])
    assert table["reward (all rollouts)"] == _esc(last["reward"])
    assert table["KL to the reference"] == _esc(last["kl"])
    # the three modes: eval.json's mean@k per data set
    results = json.load(open(finished / "eval.json"))["results"]
    header, *rows = page.tables["modes"][0]
    for row in rows:
        for mode, cell in zip(header[1:], row[1:]):
            m = mode.split(" (")[0]
            assert cell == _esc(results[row[0]][m][f"mean@{results[row[0]][m]['k']}"])
    # completions: the last step's logged rollouts, their responses and rewards
    samples = rows_of(finished / "samples.jsonl")
    last_step = [s for s in samples if s["step"] == max(x["step"] for x in samples)]
    assert all(s["response"] in page.text["completions"] for s in last_step)
    assert all(s["problem_id"] in page.text["completions"] for s in last_step)
    # one table per problem: rollouts with a context c on the left, plain ones on the right
    tables = page.tables["completions"]
    problems = list(dict.fromkeys(s["problem_id"] for s in last_step))
    assert len(tables) == len(problems) and any(s["feedback_aware"] for s in last_step)
    for pid, (header, (left, right)) in zip(problems, tables):
        assert header == ["with a context c", "plain"]
        for s in (s for s in last_step if s["problem_id"] == pid):
            assert " ".join(s["prompt"].split()) in " ".join(
                (left if s["feedback_aware"] else right).split())


def test_the_pool_and_retrieval_sections_read_the_pool(finished):
    page = parsed(finished)
    pool = Pool.load(str(finished / "pool.jsonl"))
    stats = dict(page.tables["pool"][0][1:])
    assert stats["entries"] == str(len(pool)) and stats["problems"] == str(len(pool.entries))
    for pid, principles, pitfalls, truth in page.tables["pool"][1][1:]:
        want_p, want_f = pool.lessons([pid])
        assert principles == ("; ".join(want_p) or "-") and pitfalls == ("; ".join(want_f) or "-")
        assert truth in ("true", "not true", "-")
    # each retrieval table: candidates of the pool, most similar first
    assert any(t[1:] for t in page.tables["retrieval"])   # a table with candidates
    for table in page.tables["retrieval"]:
        sims = [float(sim) for _, _, sim, _ in table[1:]]
        assert sims == sorted(sims, reverse=True)
        assert all(cand in pool.entries for cand, *_ in table[1:])


def test_retrieval_marks_gamma_between_the_candidates_that_pass_and_the_rest():
    """Every candidate at or above gamma says yes, every one below says no, and the orange
    line sits on the first one below; the question's own problem is never a candidate."""
    from pool import Entry
    from support.report import _retrieval
    pool = Pool()
    questions = {"a": "ann adds apples and pears", "b": "ann adds apples and plums",
                 "c": "ann sells boats", "d": "carl paints fences", "e": "dora bakes bread",
                 "f": "eve rides horses", "g": "fred fixes bikes"}
    for pid, q in questions.items():
        pool.add([Entry(pid, q, "x", 1.0, 0)])
    page = Page()
    page.section = "retrieval"
    page.feed(_retrieval(pool, gamma=0.5, top_k=2, n=7))
    for table in page.tables["retrieval"]:
        for cand, question, sim, passes in table[1:]:
            assert passes == ("yes" if float(sim) >= 0.5 else "no")
            assert question == questions[cand]
    html = _retrieval(pool, gamma=0.5, top_k=2, n=7)
    assert "<td>yes</td>" in html and "<td>no</td>" in html   # both sides of the line occur
    for block in html.split("<h3>")[1:]:
        pid = block.split(":")[0]
        assert f"<td>{pid}</td>" not in block   # never itself
        rows = block.split("<tr")[2:]
        first_no = next((i for i, r in enumerate(rows) if "<td>no</td>" in r), None)
        marked = [i for i, r in enumerate(rows) if 'class="gamma"' in r]
        assert marked == ([] if first_no is None else [first_no])


def test_a_running_run_reports_its_checkpoint(tmp_path, tiny_dir, monkeypatch):
    """A run stopped after its checkpoint of step 2 (no eval.json, no pool.jsonl yet): the
    report says how far it is, and its pool is the checkpoint's."""
    run_dir = tmp_path / "rl"
    calls = []
    real = train.train_step

    def stop_at_3(step, *a, **kw):
        if step == 3:
            raise KeyboardInterrupt
        calls.append(step)
        return real(step, *a, **kw)
    monkeypatch.setattr(train, "train_step", stop_at_3)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train.main(run_args(run_dir, tiny_dir))
    assert not (run_dir / "pool.jsonl").exists() and not (run_dir / "eval.json").exists()
    evaluate.main(["report", str(run_dir)])
    page = parsed(run_dir)
    html = open(run_dir / REPORT_FILE).read()
    assert "step 2 of 4" in html and "no final evaluation yet" in html
    ckpt_pool = Pool.load(str(run_dir / rundir.CHECKPOINT / "pool.jsonl"))
    assert dict(page.tables["pool"][0][1:])["entries"] == str(len(ckpt_pool))


def test_not_a_run_directory_is_one_clear_error(tmp_path):
    from support.errors import UserError
    with pytest.raises(UserError, match="not a train.py run directory"):
        evaluate.main(["report", str(tmp_path)])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM and os.environ.get("CI") != "true",
                    reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_the_page_renders_in_headless_chromium(finished, tmp_path):
    """Opened as a person would (a file:// page, headless Chromium): the DOM after loading holds
    the run's numbers, and the screenshot is a picture, not a blank page."""
    assert CHROMIUM, "CI: Chromium is missing (.ci/run installs it)"
    url = "file://" + str(finished / REPORT_FILE)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    last = [r for r in rows_of(finished / "metrics.jsonl") if "reward" in r][-1]
    assert "LANPO run" in dom.stdout and _esc(last["reward"]) in dom.stdout
    assert all(f"id=\"{s}\"" in dom.stdout for s in SECTIONS)
    png = tmp_path / "report.png"
    shot = subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={png}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    import matplotlib.image
    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (2400, 1200) and pixels.std() > 0.05   # text, tables, curves


def test_family_table_counts_the_first_and_last_steps_apart(finished):
    """The families table against metrics.jsonl's per-family counts: plain and with c, over
    the first and the last `window` steps (2 of this run's 4), and eval.json's sampled mean@8."""
    from support import world as W
    from support.report import _families
    steps = [r for r in rows_of(finished / "metrics.jsonl") if "reward" in r]
    evaluation = json.load(open(finished / "eval.json"))
    page = Page()
    page.section = "families"
    page.feed(_families(steps, evaluation, W.TinyWorld(), window=2))
    header, *rows = page.tables["families"][0]
    assert len(rows) == 9 and header[2:6] == ["plain, first 2 steps", "plain, last 2 steps",
                                              "with c, first 2 steps", "with c, last 2 steps"]

    def share(part, fam, i):
        right = sum(r["rl_family_successes"].get(fam, [0] * 4)[i] for r in part)
        n = sum(r["rl_family_successes"].get(fam, [0] * 4)[i + 1] for r in part)
        return f"{right / n:.2f} ({right}/{n})" if n else "-"
    seen = 0
    for fam, _, *cells, sampled in rows:
        want = [share(steps[:2], fam, 0), share(steps[-2:], fam, 0), share(steps[:2], fam, 2),
                share(steps[-2:], fam, 2)]
        assert cells == want, fam
        seen += cells != ["-"] * 4
        fams = evaluation["sampled"]["rl-test"]["families"]   # --eval-limit 4: a few families
        assert sampled == (_esc(fams[fam]) if fam in fams else "-")
    assert seen == 3   # the run's three families


def test_a_real_data_run_shows_what_it_has(finished, tmp_path):
    """A run on real data (here: the same files, its config saying gsm8k): no tiny-world
    families section, and no ground truth for the lessons ("-")."""
    real = tmp_path / "real"
    shutil.copytree(finished, real)
    cfg = json.load(open(real / "config.json"))
    json.dump(dict(cfg, data="gsm8k"), open(real / "config.json", "w"))
    evaluate.main(["report", str(real)])
    page = parsed(real)
    assert "families" not in page.text and "modes" in page.text and "pool" in page.text
    assert {row[3] for row in page.tables["pool"][1][1:]} == {"-"}
