"""One page to look at a run: `python evaluate.py report RUN_DIR` writes RUN_DIR/report.html.

Self-contained (the curves are inline PNGs, no script, nothing fetched), readable for a
finished run and for one still going (its metrics so far and its last checkpoint's pool). What
it shows, each from the run's own files:
- the settings (config.json);
- the curves (metrics.jsonl): reward with and without a context, groups with zero spread
  (A_i = 0 for all G), KL, gradient norm, response length, truncation;
- in the tiny world, each rl family's successes early and late, plain and with a context c,
  against its designed start rate and the final sampled mean@8 per family (eval.json);
- the three inference modes of the final evaluation (eval.json);
- completions: for each problem logged at the last step, a rollout with its context c and a
  plain one side by side, with their rewards (samples.jsonl);
- the pool: its statistics, and a few problems' lessons (in the tiny world, whether each
  states the family's true rule);
- retrieval: for a few questions, the candidates BM25 ranks with their similarity, and which
  of them pass gamma.
"""
import base64
import html
import io
import json
import os
import random
import statistics

from support import world as W

REPORT_FILE = "report.html"
CURVES = [("reward", "reward (all rollouts)"), ("reward_feedback", "reward with a context c"),
          ("reward_plain", "reward without c"), ("zero_std_frac", "groups with zero spread"),
          ("kl", "KL to the reference"), ("grad_norm", "gradient norm"),
          ("response_length", "response length (tokens)"), ("truncated_frac", "truncated")]
STYLE = """body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}pre{white-space:pre-wrap;margin:0;
font-size:90%}.ok{color:#070}.no{color:#a00}.gamma td{border-top:3px solid #c60}
h2{border-bottom:1px solid #999;margin-top:1.6em}.note{color:#666}"""


def _rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _esc(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x))


def _table(header, rows, classes=None) -> str:
    """An HTML table; cells are HTML already (escaped by the caller), classes one per row."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        attr = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _curves_png(steps) -> str | None:
    """The curves as one inline PNG (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    for ax, (key, title) in zip(axes.flat, CURVES):
        pts = [(r["step"], r[key]) for r in steps if r.get(key) is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, lw=0.8, alpha=0.45)
            w = max(1, len(y) // 12)   # a running mean over about a twelfth of the run
            ax.plot(x[w - 1:], [statistics.mean(y[i - w + 1:i + 1]) for i in range(w - 1, len(y))],
                    lw=1.8, color="C1")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _settings(cfg, columns=3) -> str:
    """config.json as flag / value pairs, three pairs to a row."""
    pairs = [[_esc(k), f"<b>{_esc(v)}</b>"] for k, v in sorted(cfg.items())]
    per = -(-len(pairs) // columns)
    rows = [sum((pairs[c * per + i] if c * per + i < len(pairs) else ["", ""]
                 for c in range(columns)), []) for i in range(per)]
    return _table(["flag", "value"] * columns, rows)


def _families(steps, evaluation, world, window=10) -> str:
    """Per rl family: successes of its plain rollouts and of those with a context c, over the
    first and the last `window` steps, against the designed start rate and the final sampled
    mean@8 (no context at all)."""
    def counts(rows):
        out = {}
        for r in rows:
            for fam, got in (r.get("rl_family_successes") or {}).items():
                acc = out.setdefault(fam, [0, 0, 0, 0])
                for i in range(4):
                    acc[i] += got[i]
        return out

    def share(right, n):
        return f"{right / n:.2f} ({right}/{n})" if n else "-"
    first, last = counts(steps[:window]), counts(steps[-window:])
    sampled = ((evaluation or {}).get("sampled") or {}).get("rl-test", {}).get("families", {})
    rows = []
    for name, f in sorted(world.by_name.items(), key=lambda kv: (kv[1].start_rate or 0, kv[0])):
        if f.kind != "rl":
            continue
        a, b = first.get(name, [0] * 4), last.get(name, [0] * 4)
        rows.append([_esc(name), _esc(f.start_rate), share(a[0], a[1]), share(b[0], b[1]),
                     share(a[2], a[3]), share(b[2], b[3]),
                     _esc(sampled[name]) if name in sampled else "-"])
    return _table(["family", "designed start rate", f"plain, first {window} steps",
                   f"plain, last {window} steps", f"with c, first {window} steps",
                   f"with c, last {window} steps", "final sampled mean@8, no c (rl-test)"],
                  rows)


def _modes(evaluation) -> str:
    results = (evaluation or {}).get("results") or {}
    modes = sorted({m for by_mode in results.values() for m in by_mode})
    rows = [[_esc(name)] + [_esc(results[name][m].get(f"mean@{results[name][m].get('k', 1)}"))
                            if m in results[name] else "-" for m in modes]
            for name in sorted(results)]
    return _table(["data set"] + [f"{m} (mean@k)" for m in modes], rows)


def _completions(samples) -> str:
    if not samples:
        return "<p class='note'>no samples logged yet</p>"
    last = max(s["step"] for s in samples)
    out = [f"<p>step {last}: per problem, a rollout with its context c (left) and a plain "
           "one (right); the gold answer is what the reward compares with, never shown to "
           "the model.</p>"]
    by_problem = {}
    for s in samples:
        if s["step"] == last:
            by_problem.setdefault(s["problem_id"], []).append(s)
    for pid, rows in by_problem.items():
        ctx = [r for r in rows if r.get("feedback_aware")]
        plain = [r for r in rows if not r.get("feedback_aware")]
        cells = ["<hr>".join(f"<pre>{_esc(r['prompt'])}</pre><hr><pre>{_esc(r['response'])}"
                             f"</pre><p>reward <b>{_esc(r['reward'])}</b></p>" for r in group)
                 or "<span class='note'>none logged</span>" for group in (ctx, plain)]
        out.append(f"<h3>{_esc(pid)} (gold {_esc(rows[0].get('gold'))})</h3>"
                   + _table(["with a context c", "plain"], [cells]))
    return "".join(out)


def _pool_section(pool, world, n=5, seed=0) -> str:
    if pool is None or not len(pool):
        return "<p class='note'>the pool is empty (or not written yet)</p>"
    entries = [e for v in pool.entries.values() for e in v]
    stats = [["entries", len(entries)], ["problems", len(pool.entries)],
             ["mean reward of its attempts", _esc(statistics.mean(e.reward for e in entries))],
             ["entries with a principle", _esc(statistics.mean(bool(e.principles)
                                                               for e in entries))]]
    rows = []
    for pid in random.Random(seed).sample(sorted(pool.entries), min(n, len(pool.entries))):
        principles, pitfalls = pool.lessons([pid])
        fam = pool.entries[pid][0].meta.get("family")
        truth = "-"
        if world is not None and fam in world.by_name and principles:
            ok = world.summary_is_correct(fam, principles)
            truth = f"<span class='{'ok' if ok else 'no'}'>{'true' if ok else 'not true'}</span>"
        rows.append([_esc(pid), _esc("; ".join(principles) or "-"),
                     _esc("; ".join(pitfalls) or "-"), truth])
    return (_table(["the pool", ""], stats)
            + _table(["problem", "principles", "pitfalls", "the family's true rule?"], rows))


def _retrieval(pool, gamma, top_k, n=3, seed=1) -> str:
    if pool is None or len(pool.entries) < 2:
        return "<p class='note'>fewer than two problems in the pool: nothing to retrieve</p>"
    out = [f"<p>gamma = {gamma}: a candidate whose similarity to the question is at least "
           "gamma gives its lessons (above the orange line); a problem never retrieves "
           "itself.</p>"]
    for pid in random.Random(seed).sample(sorted(pool.entries), min(n, len(pool.entries))):
        question = pool.entries[pid][0].question
        found = pool.retrieve(question, exclude_id=pid, k=max(top_k, 1) + 3, gamma=0.0)
        rows = [[_esc(cand), _esc(pool.entries[cand][0].question), _esc(sim),
                 "yes" if sim >= gamma else "no"] for cand, sim in found]
        passing = sum(sim >= gamma for _, sim in found)   # sorted: the passing ones come first
        table = _table(["candidate", "its question", "similarity", "passes gamma"], rows,
                       ["gamma" if i == passing else None for i in range(len(rows))])
        out.append(f"<h3>{_esc(pid)}: {_esc(question)}</h3>{table}")
    return "".join(out)


def write_report(run_dir: str, pool=None) -> str:
    """RUN_DIR/report.html from the run's files; returns its path. pool: the run's Pool (the
    caller reads pool.jsonl, or the last checkpoint's for a running run)."""
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(cfg_path):
        from support.errors import UserError
        raise UserError(f"{run_dir} is not a train.py run directory (no config.json)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    rows = _rows(os.path.join(run_dir, "metrics.jsonl"))
    steps = [r for r in rows if "reward" in r]
    eval_path = os.path.join(run_dir, "eval.json")
    evaluation = None
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            evaluation = json.load(f)
    world = W.TinyWorld() if cfg.get("data") == "tiny" else None
    state = (f"finished: {cfg.get('steps')} steps" if evaluation else
             f"step {steps[-1]['step'] if steps else 0} of {cfg.get('steps')} (still going, or "
             "stopped; the pool is its last checkpoint's)")
    png = _curves_png(steps) if steps else None
    last = steps[-1] if steps else {}
    parts = [
        f"<h1>LANPO run: {_esc(os.path.basename(os.path.abspath(run_dir)))}</h1>"
        f"<p>{_esc(os.path.abspath(run_dir))}: {_esc(state)}</p>",
        "<h2 id='settings'>Settings</h2>" + _settings(cfg),
        "<h2 id='curves'>Curves</h2>"
        + (f"<img alt='curves' src='data:image/png;base64,{png}' style='width:100%'>" if png
           else "<p class='note'>no curves (no steps yet, or no matplotlib)</p>")
        + (_table(["at the last step (%s)" % last.get("step"), "value"],
                  [[title, _esc(last.get(key)) if last.get(key) is not None else "-"]
                   for key, title in CURVES]) if last else ""),
    ]
    if world is not None:
        parts.append("<h2 id='families'>The tiny world's rl families</h2>"
                     + _families(steps, evaluation, world))
    parts.append("<h2 id='modes'>Final evaluation, three modes</h2>"
                 + (_modes(evaluation) if evaluation else
                    "<p class='note'>no final evaluation yet</p>"))
    parts.append("<h2 id='completions'>Completions</h2>"
                 + _completions(_rows(os.path.join(run_dir, "samples.jsonl"))))
    parts.append("<h2 id='pool'>The pool</h2>" + _pool_section(pool, world))
    parts.append("<h2 id='retrieval'>Retrieval</h2>"
                 + _retrieval(pool, cfg.get("gamma", 0.5), cfg.get("top_k", 4)))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>LANPO report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = os.path.join(run_dir, REPORT_FILE)
    from support import rundir
    rundir.atomic_write(out, page)
    return out
