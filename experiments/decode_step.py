"""Where a decoding step's time goes on the CPU: transformers' `generate` against a hand-written
loop (the same sampling: softmax, then torch.multinomial on the whole batch), with the dynamic
KV cache (torch.cat every step), a static one, and the static one with the decode step
compiled (torch.compile, inductor). A 24-layer narrow Llama (hidden 64) at batch 64, one torch
thread; each variant's tokens are compared with generate's at the same seed.

    python experiments/decode_step.py [--new-tokens 32] [--compile]
    python experiments/decode_step.py --sampler

Writes experiments/results/decode_step.json: a measurement of where a faster sampler could come
from. `--sampler` measures the sampler train.py uses, model.sample, as it is and with
`compile=True` (train.py --compile: a static cache and inductor's decoding step), on the same
24-layer model with the tiny world's tokenizer and 64 of its prompts, left-padded, stopping at
EOS; it writes experiments/results/decode_step_sampler.json.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also the compiled static loop")
    ap.add_argument("--sampler", action="store_true",
                    help="model.sample against model.sample(compile=True) instead")
    args = ap.parse_args()
    if args.sampler:
        return measure_sampler(args)
    torch.set_num_threads(1)
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2000, hidden_size=64, intermediate_size=256,
                      num_hidden_layers=24, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, pad_token_id=0, eos_token_id=None,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    B, P, N = args.rows, args.prompt_tokens, args.new_tokens
    ids = torch.randint(3, cfg.vocab_size, (B, P))

    def generate():
        torch.manual_seed(1)
        t = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=N, min_new_tokens=N, do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0, pad_token_id=0)
        return time.perf_counter() - t, out[:, P:]

    def loop(static, forward=model.forward):
        torch.manual_seed(1)
        t = time.perf_counter()
        cache = StaticCache(config=cfg, max_cache_len=P + N) if static else \
            DynamicCache(config=cfg)
        out = model(input_ids=ids, position_ids=torch.arange(P)[None].expand(B, P),
                    past_key_values=cache, use_cache=True, logits_to_keep=1,
                    cache_position=torch.arange(P))
        tokens = []
        for i in range(N):
            nxt = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1)
            tokens.append(nxt)
            if i < N - 1:
                at = torch.tensor([P + i])
                out = forward(input_ids=nxt, position_ids=at[None].expand(B, 1),
                              past_key_values=cache, use_cache=True, cache_position=at)
        return time.perf_counter() - t, torch.cat(tokens, 1)

    variants = {"generate (dynamic cache)": generate,
                "hand-written loop, dynamic cache": lambda: loop(False),
                "hand-written loop, static cache": lambda: loop(True)}
    compile_seconds = None
    if args.compile:
        step = torch.compile(model.forward, dynamic=False)
        t = time.perf_counter()
        loop(True, step)   # the first call compiles
        compile_seconds = round(time.perf_counter() - t, 1)
        variants["hand-written loop, static cache, compiled"] = lambda: loop(True, step)
    with torch.no_grad():
        results = side_by_side({name: lambda run=run: (*run(), N) for name, run in
                                variants.items()}, args.repeats, "vs_generate")
    out = {"command": "python experiments/decode_step.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread",
           "model": "Llama, 24 layers, hidden 64, intermediate 256, vocab 2000",
           "rows": B, "prompt_tokens": P, "new_tokens": N,
           "compile_seconds": compile_seconds, "results": results}
    with open(os.path.join(ROOT, "experiments", "results", "decode_step.json"), "w") as f:
        json.dump(out, f, indent=1)


def side_by_side(variants, repeats, vs):
    """Each variant (a call returning seconds, tokens, decoding steps) `repeats` times,
    interleaved so that drift falls on every variant alike: ms per decoding step, the best
    repeat against the first variant's (key `vs`), and whether its tokens equal the first's."""
    results, reference = {}, None
    for _ in range(repeats):
        for name, run in variants.items():
            seconds, tokens, steps = run()
            reference = tokens if reference is None else reference
            r = results.setdefault(name, {"ms_per_step": [], "same_tokens": True})
            r["ms_per_step"].append(round(seconds / steps * 1000, 2))
            r["same_tokens"] &= bool(torch.equal(tokens, reference))
    base = min(next(iter(results.values()))["ms_per_step"])
    for name, r in results.items():
        r["best_ms_per_step"] = min(r["ms_per_step"])
        r[vs] = round(r["best_ms_per_step"] / base, 2)
        print(f"{name:44} {r['best_ms_per_step']:6.1f} ms/step ({r[vs]:.2f}x), "
              f"same tokens: {r['same_tokens']}")
    return results


def measure_sampler(args):
    """model.sample, today's and compiled, side by side (interleaved repeats; the compiled one
    is warmed up first: its first calls compile)."""
    torch.set_num_threads(1)
    sys.path.insert(0, ROOT)
    from transformers import LlamaForCausalLM
    import prompts
    from support import model as M
    from support import world as W
    world = W.TinyWorld()
    tok = W.tiny_tokenizer(world)
    torch.manual_seed(0)
    cfg = W.tiny_model_config(tok, hidden=64, layers=24, heads=4)
    cfg.eos_token_id = None   # a random model: every row decodes all --new-tokens
    model = LlamaForCausalLM(cfg).eval()
    texts = [prompts.solve_prompt(p["question"])
             for p in world.problems("rl", "train")[:args.rows]]

    def run(compile):
        torch.manual_seed(1)
        t = time.perf_counter()
        r = M.sample(model, tok, texts, max_new_tokens=args.new_tokens, micro_batch=args.rows,
                     compile=compile)
        return time.perf_counter() - t, r

    backend, why = M.compile_backend(torch.device("cpu"))
    t = time.perf_counter()
    run(True)   # compiles
    compile_seconds = round(time.perf_counter() - t, 1)
    def variant(compile):
        seconds, r = run(compile)
        return seconds, r.response_ids, r.decode_steps

    results = side_by_side({"model.sample": lambda: variant(False),
                            "model.sample(compile=True)": lambda: variant(True)},
                           args.repeats, "vs_today")
    out = {"command": "python experiments/decode_step.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread",
           "model": "Llama, 24 layers, hidden 64, intermediate 128, the tiny world's vocabulary",
           "rows": args.rows, "new_tokens": args.new_tokens, "backend": backend, "why": why,
           "compile_seconds_first_call": compile_seconds, "results": results}
    with open(os.path.join(ROOT, "experiments", "results", "decode_step_sampler.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
