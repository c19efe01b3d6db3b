"""The checks of experiments/gpu_smoke.sh: a smoke run that went wrong must fail loudly.

    python experiments/gpu_smoke_check.py runs --sft-dir D --rl-dir D --expect-precision bf16
    python experiments/gpu_smoke_check.py logits MODEL_DIR --expect-precision bf16

`runs` reads what sft.py and train.py wrote (sft_report.json, sft_config.json, config.json,
metrics.jsonl) and fails (exit code 1, one line per failure) on:
- a skipped update (train.py skips an update whose loss or gradient is not finite);
- a loss, policy loss, KL or gradient norm that is not finite, an SFT or held-out loss that is
  not finite, or an SFT run whose held-out pass never ran;
- a KL above --kl-tol (1e-3) at the first step: the policy starts as the reference, so the
  k3 KL of step 1 is 0 up to rounding (with LoRA exactly: B = 0);
- a precision other than the expected one (config.json's `precision_used`, every step's
  `precision`): bf16 on an Ampere or newer card, where running fp32 would double the memory
  and the time without saying so;
- a peak of GPU memory above experiments/memory_plan.py's plan for the same settings (the SFT
  step, the held-out pass, the setup with its bootstrap, the RL step: the largest RL phase),
  and an RL step whose reserved memory (what the caching allocator held: fragmentation and
  --compile's CUDA graph pools included) is above the plan x 1.1, the fragmentation the plan's
  rule allows;
- a --compile run that built more graphs than torch compiles before it gives up
  (torch._dynamo.config.recompile_limit; beyond it decoding runs uncompiled, with only a log
  line), or that logged no compile count;
- an RL run whose metrics.jsonl does not log every step 1..steps once, in order (a run that
  lost its last steps, or logged one twice);
- an RL run whose pool never put feedback into a prompt (coverage 0 at the last step), so the
  longest prompts were never sampled or scored.
It prints seconds per phase and the peak memory next to the plan either way.

`logits` loads a model as train.py does and runs a left-padded batch of prompts of different
lengths under autocast: every logit, padding positions included, must be finite, and so must
the token log-probs of model.token_logprobs (padding rows whose attention is fully masked are
where bf16 kernels have produced NaN); and each prompt's logits in the padded batch must equal
its logits alone (model.check_finite_left_padded: a padding leak or a wrong position).
"""
import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

GIB = 2 ** 30


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def plan_for(sft_cfg: dict, rl_cfg: dict, model_dir: str) -> dict:
    """The memory plan (GiB per phase) of these runs' settings, for the model in model_dir."""
    import memory_plan as MP
    sft_settings = MP.settings_from(sft_cfg, rl_cfg, lora_rank=sft_cfg.get("lora_rank") or 0)
    rl_settings = MP.settings_from(sft_cfg, rl_cfg)
    sft_plan, rl_plan = MP.plan(model_dir, sft_settings), MP.plan(model_dir, rl_settings)
    rl_phases = [k for k in rl_plan if k.startswith("RL")]
    return {"SFT setup (load + bootstrap)": sft_plan["SFT bootstrap sampling"]["total"] / GIB,
            "SFT step": sft_plan["SFT step"]["total"] / GIB,
            "SFT held-out pass": sft_plan["SFT held-out pass"]["total"] / GIB,
            "RL step": max(rl_plan[k]["total"] for k in rl_phases) / GIB}


def check_runs(sft_dir, rl_dir, expect_precision, kl_tol=1e-3, plan=None,
               require_feedback=True):
    """(failures, report lines). plan: {phase: GiB} (plan_for), or None to skip the memory
    comparison (then a peak is only printed). require_feedback: fail when no prompt of the
    last step carried feedback."""
    fail, lines = [], []

    def peak_vs_plan(what, peak, phase, reserved=None):
        if peak is None:
            return
        limit = plan.get(phase) if plan else None
        lines.append(f"  {what}: peak {peak:.2f} GiB"
                     + (f", reserved {reserved:.2f} GiB" if reserved is not None else "")
                     + (f", plan {limit:.2f} GiB" if limit else ""))
        if limit is not None and peak > limit:
            fail.append(f"{what}: peak GPU memory {peak:.2f} GiB is above the plan's "
                        f"{limit:.2f} GiB ({phase})")
        if limit is not None and reserved is not None and reserved > RESERVED_SHARE * limit:
            fail.append(f"{what}: reserved GPU memory {reserved:.2f} GiB is above the plan's "
                        f"{limit:.2f} GiB x {RESERVED_SHARE} ({phase}): fragmentation or "
                        "CUDA graph pools beyond what the plan allows")

    if sft_dir:
        report = _read_json(os.path.join(sft_dir, "sft_report.json"))
        lines.append(f"SFT {sft_dir}: {report.get('seconds')} s in all, setup (load + "
                     f"bootstrap) {report.get('seconds_setup')} s")
        peak_vs_plan("SFT setup", report.get("peak_gpu_gib_setup"),
                     "SFT setup (load + bootstrap)")
        history = report.get("history") or []
        if not history:
            fail.append("SFT: no held-out loss was computed (the held-out pass never ran)")
        for h in history:
            for key in ("train_loss", "heldout_loss"):
                if not _finite(h.get(key)):
                    fail.append(f"SFT step {h.get('step')}: {key} is {h.get(key)}")
            lines.append(f"  SFT step {h.get('step')}: train {h.get('t_train')} s, held-out "
                         f"{h.get('t_heldout')} s, loss {h.get('train_loss')}, held-out "
                         f"{h.get('heldout_loss')}")
            peak_vs_plan(f"SFT steps to {h.get('step')}", h.get("peak_gpu_gib_train"), "SFT step")
            peak_vs_plan(f"SFT held-out at {h.get('step')}", h.get("peak_gpu_gib_heldout"),
                         "SFT held-out pass")

    if rl_dir:
        cfg = _read_json(os.path.join(rl_dir, "config.json"))
        used = cfg.get("precision_used")
        if used != expect_precision:
            fail.append(f"RL {rl_dir}: config.json precision_used is {used!r}, expected "
                        f"{expect_precision!r}")
        with open(os.path.join(rl_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        steps = [r for r in rows if "reward" in r]   # step 0 holds only an evaluation
        if not steps:
            fail.append(f"RL {rl_dir}: no training step in metrics.jsonl")
        elif "steps" in cfg:   # every step of the run, once, in order: none lost at the end
            logged, want = [r.get("step") for r in steps], list(range(1, cfg["steps"] + 1))
            if logged != want:
                missing = sorted(set(want) - set(logged))
                fail.append(f"RL {rl_dir}: metrics.jsonl logs steps {logged[0]}..{logged[-1]} "
                            f"({len(logged)} rows) of the run's 1..{cfg['steps']}"
                            + (f"; missing {missing[:5]}" if missing else ""))
        lines.append(f"RL {rl_dir}:")
        for r in steps:
            step = r.get("step")
            if r.get("skipped_update"):
                fail.append(f"RL step {step}: the update was skipped (non-finite loss or "
                            "gradient)")
            for key in ("loss", "pg_loss", "kl", "grad_norm"):
                if not _finite(r.get(key)):
                    fail.append(f"RL step {step}: {key} is {r.get(key)}")
            if r.get("precision") != expect_precision:
                fail.append(f"RL step {step}: precision {r.get('precision')!r}, expected "
                            f"{expect_precision!r}")
            phases = {k[2:]: v for k, v in r.items() if k.startswith("t_")}
            lines.append(f"  step {step}: {sum(phases.values()):.1f} s ("
                         + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
                         + f"); reward {r.get('reward')}, kl {r.get('kl')}, coverage "
                         f"{r.get('coverage')}" + _decode_speed(r)
                         + (f"; {r['compiles']} graph(s) compiled" if "compiles" in r else ""))
            peak_vs_plan(f"RL step {step}", r.get("peak_gpu_gib"), "RL step",
                         r.get("peak_gpu_reserved_gib"))
        if steps and cfg.get("compile"):
            counts = [r.get("compiles") for r in steps]
            if None in counts:
                fail.append(f"RL {rl_dir}: a --compile run whose steps do not all log "
                            "'compiles'")
            elif sum(counts) > recompile_limit():
                fail.append(f"RL {rl_dir}: --compile built {sum(counts)} graphs, more than "
                            f"torch's recompile limit ({recompile_limit()}): decoding went "
                            "uncompiled after it")
        if steps:
            kl0 = steps[0].get("kl")
            if _finite(kl0) and abs(kl0) > kl_tol:
                fail.append(f"RL step {steps[0].get('step')}: KL {kl0:.3g} at the first step "
                            f"(above {kl_tol:g}): the policy and the reference disagree before "
                            "any update")
            if require_feedback and cfg.get("p_feedback", 0) > 0 and \
                    not (steps[-1].get("coverage") or 0) > 0:
                fail.append(f"RL {rl_dir}: no prompt carried feedback at the last step "
                            "(coverage 0): the pool's longest prompts were never exercised")
    return fail, lines


RESERVED_SHARE = 1.1   # memory_plan.fits: plan x 1.1 (fragmentation) + 1 GiB (CUDA context)


def recompile_limit() -> int:
    """How many graphs Dynamo builds for one function before it runs it uncompiled."""
    import torch._dynamo
    config = torch._dynamo.config
    return getattr(config, "recompile_limit", None) or config.cache_size_limit


def _decode_speed(row) -> str:
    """The rollouts' sampling speed of one step: ms per decoding step (its prefill included)
    and tokens per second (runs from before these were logged print nothing)."""
    ms, tps = row.get("ms_per_decode_step"), row.get("tokens_per_s")
    return "" if ms is None else f"; sampling {ms:.1f} ms per decoding step, {tps:.0f} tokens/s"


def check_logits(model_dir, device, expect_precision, precision="auto"):
    """Failures of a left-padded batch under autocast (see the module docstring)."""
    import torch
    from support import model as M
    fail = []
    dev = M.resolve_device(device)
    model, tok = M.load_model(model_dir, device=dev, precision=precision)
    got = "bf16" if getattr(model, "autocast_dtype", None) == torch.bfloat16 else "fp32"
    if got != expect_precision:
        fail.append(f"logits: {model_dir} runs its forward in {got}, expected "
                    f"{expect_precision}")
    prompts = ["Hi.", "A farmer has 17 sheep and buys 5 more each week for 3 weeks. How many "
               "sheep does the farmer have now? Think step by step."]
    ids = M.encode_prompts(tok, prompts)
    x, attn = M._left_pad(ids, tok.pad_token_id, dev)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad(), M.autocast(model):
        logits = model(input_ids=x, attention_mask=attn, position_ids=positions).logits
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).any(-1)
        fail.append(f"logits: non-finite logits at {int(bad.sum())} of {bad.numel()} positions "
                    f"(at padding: {int((bad & (attn == 0)).sum())})")
    resp = torch.tensor([[5, 6, 7, 8]] * len(ids))
    with torch.no_grad():
        lp = M.token_logprobs(model, ids, resp, torch.ones_like(resp, dtype=torch.float))
    if not torch.isfinite(lp).all():
        fail.append("logits: non-finite token log-probs on a left-padded batch")
    try:   # each prompt's logits in the padded batch against its logits alone
        worst = M.check_finite_left_padded(model, tok, prompts)
        print(f"logits check: padded and alone differ by at most {worst:.3g}")
    except AssertionError as e:
        fail.append(f"logits: {e}")
    print(f"logits check: {model_dir} on {dev}, {got}, left-padded batch of {len(ids)} rows "
          f"({', '.join(str(len(i)) for i in ids)} tokens): "
          + ("finite" if not fail else "FAILED"))
    return fail


def main(argv=None):
    ap = argparse.ArgumentParser(description="The checks of experiments/gpu_smoke.sh.")
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("runs")
    r.add_argument("--sft-dir")
    r.add_argument("--rl-dir")
    r.add_argument("--expect-precision", required=True, choices=["bf16", "fp32"])
    r.add_argument("--kl-tol", type=float, default=1e-3)
    r.add_argument("--no-plan", action="store_true", help="print peaks, compare with nothing")
    r.add_argument("--require-feedback", action=argparse.BooleanOptionalAction, default=True,
                   help="fail when no prompt of the last step carried feedback (off for the "
                        "tiny world's short run, whose summaries may not parse yet)")
    g = sub.add_parser("logits")
    g.add_argument("model_dir")
    g.add_argument("--device", default="cuda")
    g.add_argument("--expect-precision", required=True, choices=["bf16", "fp32"])
    g.add_argument("--precision", default="auto")
    args = ap.parse_args(argv)
    if args.what == "logits":
        fail = check_logits(args.model_dir, args.device, args.expect_precision, args.precision)
    else:
        plan = None
        if not args.no_plan and args.rl_dir:
            rl_cfg = _read_json(os.path.join(args.rl_dir, "config.json"))
            sft_dir = args.sft_dir or rl_cfg["init"]
            sft_cfg = _read_json(os.path.join(sft_dir, "sft_config.json"))
            plan = plan_for(sft_cfg, rl_cfg, rl_cfg["init"])
        fail, lines = check_runs(args.sft_dir, args.rl_dir, args.expect_precision, args.kl_tol,
                                 plan, args.require_feedback)
        print("\n".join(lines))
    for f in fail:
        print(f"gpu_smoke_check: FAIL: {f}", file=sys.stderr)
    if fail:
        print(f"gpu_smoke_check: {len(fail)} check(s) failed", file=sys.stderr)
        return 1
    print("gpu_smoke_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
