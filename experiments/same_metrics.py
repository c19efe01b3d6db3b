"""Did restructuring train.py change what it computes? Old and new code, same seed, same metrics.

The restructure (run-directory plumbing to rundir.py, the tiny world to world.py, fault hooks
moved out of the training code, flags grouped) was meant to move code, not change it. This
script runs train.py of an earlier revision (default bd966f3, the last one before the move) and
of this checkout on the same small model and data, with the same seed, and compares every
logged metric (timings aside) and every logged sample, for a few configurations that exercise
the GRPO update, the intra-sample pool, the leaky ablation and inner epochs.

What the move deliberately changed is left out of the comparison: the tiny world itself (both
runs use a JSONL file and a small word-level model built here, not the tiny world), the
inter-sample retrieval (gamma is on an absolute scale now) and the summarize prompt (it states
the format now), so no configuration here retrieves or summarizes. The reward is replaced by
one with variance (len(text) % 3 == 0), since a random model never earns the real one.

    python experiments/same_metrics.py [--old bd966f3]

Writes experiments/results/same_metrics.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RUNNER = """import os, sys
repo = sys.argv[1]
sys.path.insert(0, repo); os.chdir(repo)
import torch; torch.set_num_threads(1)
import train
train.reward = lambda text, gold: float(len(text) % 3 == 0)
train.main(sys.argv[2:])
"""
ARMS = {"grpo": ["--p-feedback", "0"],
        "intra": ["--p-feedback", "0.5", "--feedback", "intra"],
        "leaky": ["--p-feedback", "0.75", "--feedback", "intra", "--reflection", "leaky"],
        "inner-epochs": ["--p-feedback", "0", "--inner-epochs", "2", "--aggregation",
                         "token-mean"]}


def build_inputs(tmp):
    """A small random Llama with a word-level tokenizer, and 40 problems as JSONL."""
    sys.path.insert(0, ROOT)
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    import prompts
    from support import world as W
    problems = W.TinyWorld().problems("rl", "train")[:40]
    texts = [p["question"] for p in problems] + prompts.ALL_TEMPLATES + [
        " ".join(map(str, range(60))), "####"]
    words = sorted({t for s in texts for t in W.WORD_RE.findall(s.lower())})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[EOS]"] + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="[EOS]")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0,
        eos_token_id=2, bos_token_id=None, initializer_range=0.2))
    model.save_pretrained(f"{tmp}/model")
    tok.save_pretrained(f"{tmp}/model")
    with open(f"{tmp}/train.jsonl", "w") as f:
        f.writelines(json.dumps({"question": p["question"], "answer": p["answer"]}) + "\n"
                     for p in problems)
    with open(f"{tmp}/test.jsonl", "w") as f:
        f.write(json.dumps({"question": "unused ?", "answer": "1"}) + "\n")


def logged(run_dir):
    from support import rundir
    metrics = [{k: v for k, v in json.loads(line).items()
                if not rundir.is_timing(k)}
               for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    samples = [json.loads(line) for line in open(os.path.join(run_dir, "samples.jsonl"))]
    return metrics, samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="bd966f3", help="the revision to compare with")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    old = os.path.join(tmp, "old")
    subprocess.run(["git", "worktree", "add", "--detach", old, args.old], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        build_inputs(tmp)
        with open(f"{tmp}/run.py", "w") as f:
            f.write(RUNNER)
        common = ["--init", f"{tmp}/model", "--data", f"{tmp}/train.jsonl", "--steps", "6",
                  "--problems-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
                  "--summary-tokens", "6", "--eval-every", "0", "--no-final-eval", "--seed", "3",
                  "--lr", "1e-3", "--ckpt-every", "3", "--overwrite"]
        # the same computation under each revision's flags: one log-prob micro-batch, and the
        # new one evaluates on a separate file (it would otherwise hold a tenth of train.jsonl out)
        extra = {"old": ["--logprob-micro-batch", "512"],
                 "new": ["--logprob-tokens", "100000", "--eval-data", f"{tmp}/test.jsonl"]}
        results = {}
        for arm, flags in ARMS.items():
            logs = {}
            for side, repo in (("old", old), ("new", ROOT)):
                run_dir = f"{tmp}/{side}-{arm}"
                subprocess.run([sys.executable, f"{tmp}/run.py", repo, *common, *flags,
                                *extra[side], "--run-dir", run_dir], check=True,
                               capture_output=True, env=dict(os.environ, TQDM_DISABLE="1"))
                logs[side] = logged(run_dir)
            (m_old, s_old), (m_new, s_new) = logs["old"], logs["new"]
            keys = sorted(set(m_old[0]) & set(m_new[0]))
            results[arm] = {
                "steps": len(m_old), "metrics_compared": keys,
                "metrics_identical": len(m_old) == len(m_new) and all(
                    {k: a[k] for k in keys} == {k: b[k] for k in keys}
                    for a, b in zip(m_old, m_new)),
                "samples_identical": s_old == s_new,
                "reward_by_step": [round(m["reward"], 4) for m in m_new]}
            print(arm, {k: v for k, v in results[arm].items() if k != "metrics_compared"},
                  flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", old], cwd=ROOT,
                       capture_output=True)
    out = {"command": "python experiments/same_metrics.py " + " ".join(sys.argv[1:]),
           "old": args.old, "results": results}
    with open(os.path.join(HERE, "results", "same_metrics.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
