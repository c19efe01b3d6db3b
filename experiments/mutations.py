"""Mutation checks: each defect a test is meant to catch is put back into the code, one at a
time, and the tests that guard it run; every line must say CAUGHT. The source is restored after
each run (nothing is left modified; `git status` at the end shows it).

    python experiments/mutations.py [NAME-PREFIX ...]      # e.g. R (the redesign's), N (later)

Writes experiments/results/mutations.json (mutations_<PREFIXES>.json for a part). The P list
guards the GPU path (tests/test_precision.py and two of tests/test_evaluate.py); the R list
guards what the redesign moved or rewrote: the controls' seam, the paper's path in train.py, the
rank-0 writer and resume, the update's sums over ranks, the SFT split and --help; the N list
--compile, resume after a final evaluation, the smoke script, experiments/sft_draws.py, the
real-data placebo's bank; the G list the GPU sampler (--compile's probe, shapes, grouped heads, the
bf16 copy, the plan and the smoke check), the context object and the layout; the S list a killed
SFT's resume and the size axis' prediction check.
"""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = "tests/test_precision.py::"
TC, TT, TF, TR = ("tests/test_controls.py", "tests/test_train.py", "tests/test_faults.py",
                  "tests/test_ranks.py")
MUT = [
 ("2a auto asks is_bf16_supported()", "support/model.py", "return torch.cuda.get_device_capability(device) >= (8, 0)", "return torch.cuda.is_bf16_supported()", P + "test_auto_is_bf16_only_on_the_chosen_gpu_when_it_does_bf16_natively"),
 ("2b auto asks the current device", "support/model.py", "return torch.cuda.get_device_capability(device) >= (8, 0)", "return torch.cuda.get_device_capability() >= (8, 0)", P + "test_auto_is_bf16_only_on_the_chosen_gpu_when_it_does_bf16_natively"),
 ("2c no precision in metrics rows", "train.py", '        m["precision"] = args.precision_used\n', "", P + "test_the_precision_used_is_in_config_json_and_every_metrics_row"),
 ("3a reference in bf16 outright", "support/model.py", "        _bf16_linears(model)\n", "        model.to(torch.bfloat16); model.autocast_dtype = None\n", P + "test_kl_to_the_reference_is_zero_at_step_zero_under_bf16_autocast"),
 ("3b tied output layer cast to bf16", "support/model.py", "if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in not_linear:", "if isinstance(mod, torch.nn.Linear):", P + "test_kl_to_the_reference_is_zero_at_step_zero_under_bf16_autocast"),
 ("3d train.py makes the policy its own reference", "train.py", "        ref_model.requires_grad_(False)\n", "        ref_model.requires_grad_(False)\n        ref_model = model\n", P + "test_the_precision_used_is_in_config_json_and_every_metrics_row"),
 ("3c update scores the reference with the policy", "train.py", "ref = [logprobs(ref_model, c) if", "ref = [logprobs(model, c) if", P + "test_kl_is_to_the_frozen_sft_model_not_the_current_policy"),
 ("4 no one-dtype cache", "support/model.py", "if compile else _one_dtype_cache(model)", "if compile else {}", P + "test_kv_cache_holds_one_dtype_under_bf16_autocast"),
 ("5a no pad-safe attention", "support/model.py", "    _pad_safe_sdpa(model)\n    return model.to(device)", "    return model.to(device)", P + "test_left_padded_batch_is_finite_where_a_kernel_gives_nan"),
 ("5b guard returns the mask unchanged", "support/model.py", "    return mask | ~mask.any(-1, keepdim=True)", "    return mask", P + "test_left_padded_batch_is_finite_where_a_kernel_gives_nan"),
 ("8a torch.load without map_location", "support/rundir.py", 'map_location="cpu", weights_only=False', "weights_only=False", P + "test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_host"),
 ("8b set_rng_state_all", "support/rundir.py", "        for i, s in enumerate(saved[:n]):\n            torch.cuda.set_rng_state(s, i)", "        torch.cuda.set_rng_state_all(saved)", P + "test_cuda_random_streams_restore_on_fewer_gpus"),
 ("8c peak memory of the current device", "support/model.py", "torch.cuda.max_memory_allocated(device) / 2**30", "torch.cuda.max_memory_allocated() / 2**30", P + "test_peak_memory_is_read_from_the_models_device"),
 ("8d peak reset of the current device", "support/model.py", "torch.cuda.reset_peak_memory_stats(device)", "torch.cuda.reset_peak_memory_stats()", P + "test_peak_memory_is_read_from_the_models_device"),
 ("8e gradients kept after the step", "train.py", "        opt.zero_grad(set_to_none=True)   # free the gradients before the next sampling\n", "", P + "test_gradients_are_freed_after_the_optimizer_step"),
 ("8f final/ saved in float32", "support/model.py", "    cast = dtype is not None and any(", "    cast = False and any(", P + "test_saved_models_keep_the_checkpoints_dtype_and_checkpoints_float32"),
 ("8g save_dtype not in state.pt", "support/rundir.py", '"counters": counters, "save_dtype": getattr(model, "save_dtype", None),', '"counters": counters,', P + "test_saved_models_keep_the_checkpoints_dtype_and_checkpoints_float32"),
 ("6 torch>=2.4 again", "requirements.txt", "torch>=2.6", "torch>=2.4", P + "test_requirements_ask_for_a_torch_that_transformers_5_uses"),
 ("7a evaluate: fixed 256", "evaluate.py", "        args.max_new_tokens = args.max_new_tokens or max_new\n", "        args.max_new_tokens = args.max_new_tokens or (48 if args.data == 'tiny' else 256)\n", "tests/test_evaluate.py::test_cli_takes_length_and_precision_from_the_training_run"),
 ("7b evaluate: float32 load", "evaluate.py", "                              precision=precision, frozen=True)", "                              precision=precision)", "tests/test_evaluate.py::test_cli_takes_length_and_precision_from_the_training_run"),
 ("7c evaluate: fixed precision", "evaluate.py", "        args.precision = args.precision or precision\n", "        args.precision = args.precision or ('fp32' if args.data == 'tiny' else 'auto')\n", "tests/test_evaluate.py::test_cli_takes_length_and_precision_from_the_training_run"),
 # --- the redesign: (name, file, old, new, tests) ------------------------------------------
 ("R01 placebo passes the real lessons", "support/controls.py", 'if self.feedback == "placebo" and (real.principles or real.pitfalls):', 'if False:', TC),
 ("R02 placebo passes the real attempt", "support/controls.py", 'if self.feedback == "placebo" and entry is not None:', 'if False:', TC),
 ("R03 placebo knows the true procedure", "support/controls.py", 'return W.solution_text(rng.choice(W.PROCEDURES), *problem["numbers"])', 'return W.solution_text(rng.choice([world.family_of(problem).procedure] * 3 + W.PROCEDURES), *problem["numbers"])', TC),
 ("R04 plain scoring scores under the sampled prompt", "support/controls.py", 'if args.score_context == "prompt":', 'if True:', f"{TT} {TC}"),
 ("R05 corrected drops the importance weight", "support/controls.py", "    if not weighs_tokens(args):\n        return [None] * len(chunks)", "    return [None] * len(chunks)", TC),
 ("R06 importance weight not capped", "support/controls.py", ".clamp(max=math.log(cap))", "", TC),
 ("R07 a problem retrieves itself", "pool.py", 'exclude_id=problem["id"], k=self.top_k,', 'exclude_id=None, k=self.top_k,', f"{TT} {TC}"),
 ("R08 leaky reflection ignored", "support/controls.py", 'failed_only=self.leaky)', "failed_only=False)", TT),
 ("R09 reflection picks failed attempts", "pool.py", 'self.pool.earlier_attempt(problem["id"], rng) if', 'self.pool.earlier_attempt(problem["id"], rng, failed_only=True) if', f"{TT} tests/test_pool.py"),
 ("R10 inner epochs ignore pi_old", "train.py", "old_logp = old[j] if old is not None else logp.detach()", "old_logp = logp.detach()", TT),
 ("R11 k = round(p_t G) rounds half to even", "train.py", "int(math.floor(p_feedback * group_size + 0.5))", "round(p_feedback * group_size)", TT),
 ("R12 grow_pool drops the summaries", "train.py", "principles, pitfalls = s.summaries[i] if s.summaries and s.summaries[i] else ([], [])", "principles, pitfalls = [], []", f"{TT} tests/test_world.py"),
 ("R13 no summaries at all", "train.py", 'if not (C.inter_sample(args) and args.inter_format == "summary"):', "if True:", TT),
 ("R14 GRPO reads lessons", "support/controls.py", "return args.p_feedback > 0 and args.feedback in LESSON_FEEDBACK", "return args.feedback in LESSON_FEEDBACK", f"{TT} {TC}"),
 ("R15 reward_feedback of the plain rows", "train.py", '"reward_feedback": _mean([r for r, c in zip(s.rewards, s.has_context) if c]),', '"reward_feedback": _mean([r for r, c in zip(s.rewards, s.has_context) if not c]),', f"{TT} {TC}"),
 ("R16 samples mislabel feedback-aware", "train.py", '"feedback_aware": self.has_context[i * G + j]}', '"feedback_aware": True}', TT),
 ("R17 loss normalized by this rank's counts", "support/ranks.py", "self.counts = total(response_mask.shape[0], int(response_mask.sum()))", "self.counts = [response_mask.shape[0], int(response_mask.sum())]", TR),
 ("R18 the step is not gathered", "support/ranks.py", "    if not distributed():\n        return record", "    if True:\n        return record", TR),
 ("R19 a non-finite update is applied", "support/ranks.py", "return math.isfinite(epoch_loss) and bool(torch.isfinite(grad_norm))", "return True", TF),
 ("R20 checkpoints lose the other ranks' streams", "support/rundir.py", '{"world_size": ranks.world_size(), "rank_rng": ranks.gather_objects(rng_state(py_rng))}', '{"world_size": ranks.world_size()}', TR),
 ("R21 resume keeps a fresh random stream", "support/rundir.py", '            set_rng_state(py_rng, state.get("rank_rng", [state["rng"]])[ranks.rank()])\n', "", f"{TT} {TF}"),
 ("R22 skipped updates never counted", "support/rundir.py", 'c["bad_in_a_row"] = c["bad_in_a_row"] + 1 if skipped else 0', 'c["bad_in_a_row"] = 0', TF),
 ("R23 no periodic evaluation", "support/rundir.py", "return self.main and bool(every) and step % every == 0", "return False", f"{TT} tests/test_precision.py"),
 ("R24 update's OOM without its advice", "support/errors.py", '"update": ("computing log-probs and gradients",', '"updates": ("computing log-probs and gradients",', "tests/test_gpu_path.py"),
 ("R25 SFT loss on the prompt's last token", "sft.py", "out.append((ids, max(0, len(ids) - len(r)), soft))", "out.append((ids, max(0, len(ids) - len(r) - 1), soft))", "tests/test_sft.py"),
 ("R26 SFT soft target dropped", "sft.py", '        if "procedure_prior" in ex:', '        if False:', "tests/test_sft.py tests/test_sft_memory.py"),
 ("R27 bootstrap progress not reused", "support/bootstrap.py", "    done = _read_progress(progress_path, header)", "    done = {}", "tests/test_bootstrap_resume.py"),
 ("R28 --help shows default: None", "support/config.py", "if action.default is None or action.default is False:", "if action.default is False:", "tests/test_config.py"),
 ("R29 --help hides the presets' values", "support/config.py", "    return with_presets(ap, PRESETS)", "    return ap", "tests/test_config.py"),
 ("R30 A_i with its sign flipped", "grpo.py", "adv = r - r.mean(dim=1, keepdim=True)", "adv = r.mean(dim=1, keepdim=True) - r", "tests/test_grpo.py tests/test_learning.py"),
 # --- later: --compile, resume, the smoke script, the SFT-draw statistics -------------------
 ("N01 --compile never reaches the rollouts", "train.py", "micro_batch=args.sample_micro_batch, compile=args.compile)", "micro_batch=args.sample_micro_batch)", TT + "::test_compile_reaches_the_rollouts_and_the_step_logs_decode_time"),
 ("N02 sample ignores compile", "support/model.py", "cache = _static_cache(model, *shape) if compile else", "cache = _static_cache(model, *shape) if False else", "tests/test_model.py -k compile"),
 ("N03 static cache never compiled", "support/model.py", '    return {name: cache, "compile_config": _compile_config(backend, device_of(model))}', '    return {name: cache, "disable_compile": True}', "tests/test_model.py -k compile"),
 ("N04 decode time is not a timing", "support/rundir.py", 'TIMINGS = ("tokens_per_s", "ms_per_decode_step")', 'TIMINGS = ("tokens_per_s",)', TT + "::test_compile_reaches_the_rollouts_and_the_step_logs_decode_time"),
 ("N05 a run killed in its final evaluation is finished", "support/rundir.py", 'evaluated = not self.args.final_eval or os.path.exists(os.path.join(run_dir, "eval.json"))', "evaluated = True", TF + "::test_resume_takes_the_runs_own_settings_and_does_not_extend_a_finished_run"),
 ("N06 the smoke script imports a moved module", "experiments/gpu_smoke.sh", "from support import data\n", "import data\n", "tests/test_gpu_smoke_check.py"),
 ("N07 the smoke check says no sampling speed", "experiments/gpu_smoke_check.py", 'f"{r.get(\'coverage\')}" + _decode_speed(r)\n', 'f"{r.get(\'coverage\')}"\n', "tests/test_gpu_smoke_check.py"),
 ("N08 sign-flip p counts strictly larger", "experiments/sft_draws.py", ">= observed - 1e-12", "> observed + 1e-12", "tests/test_tables.py"),
 ("N09 an SFT seed's first RL seed stands for it", "experiments/sft_draws.py", "return {ss: statistics.mean(v) for ss, v in sorted(seeds.items())}", "return {ss: v[0] for ss, v in sorted(seeds.items())}", "tests/test_tables.py"),
 ("N10 learning counted among the runs that learned", "experiments/sft_draws.py", "statistics.mean(f is not None and f <= s for f in firsts)", "(sum(f is not None and f <= s for f in firsts) / max(1, sum(f is not None for f in firsts)))", "tests/test_analysis.py tests/test_tables.py"),
 ("N11 the real-data placebo takes one problem's lessons", "support/controls.py", "        if len(principles) >= n_principles and len(pitfalls) >= n_pitfalls:\n            break", "        if principles or pitfalls:\n            break", TC),
 ("N12 the static cache keeps float32 keys under autocast", "support/model.py", "    cache = OneDtypeStaticCache(dtype, config=model.config, max_cache_len=length)", "    cache = StaticCache(config=model.config, max_cache_len=length)", P + "test_kv_cache_holds_one_dtype_under_bf16_autocast"),
 ("N13 a reused static cache is not reset", "support/model.py", "        cache = kept[1]\n        cache.reset()\n", "        cache = kept[1]\n", "tests/test_model.py -k compile"),
 ("N14 the bank placebo draws from the pool", "support/controls.py", "    if bank is not None:\n        return _draw(", "    if False:\n        return _draw(", TC + " -k bank"),
 ("N15 the bank placebo's counts stop at the bank's size", "support/controls.py", "    while len(out) < n:", "    while len(out) < min(n, len(items)):", TC + " -k bank"),
 ("N16 placebo problems may be training problems", "support/data.py", "    if both:\n        raise UserError(f\"{len(both)} problems of --placebo-data", "    if False:\n        raise UserError(f\"{len(both)} problems of --placebo-data", TC + " -k bank"),
 ("N17 a resumed run writes a new bank", "support/controls.py", "    if start > 0:   # a resumed run", "    if False:   # a resumed run", TC + " -k bank"),
 ("N18 the bank placebo has no attempt", "support/controls.py", "        return rng.choice(bank[\"attempts\"])", "        return None", TC + " -k bank"),
 ("N20 each rank keeps only its share of the placebo bank", "support/controls.py", "    parts = ranks.gather_objects((out.texts, summaries), \"the placebo's bank\")", "    parts = [(out.texts, summaries)]", TR + " -k placebo_bank"),
 ("N21 the pool placebo falls short of the counts", "support/controls.py", "    return _fill(principles, n_principles, rng), _fill(pitfalls, n_pitfalls, rng)", "    return principles[:n_principles], pitfalls[:n_pitfalls]", TC + " -k placebo"),
 ("N19 the placebo bank is built for every real-data run", "support/config.py", "    if args.feedback != \"placebo\" or args.data == \"tiny\":\n        if given:", "    if args.data == \"tiny\":\n        if given:", TC + " -k placebo_source"),
 # --- the GPU sampler (--compile), the context object, the layout ----------------------------
 ("G01 the compile probe never runs its function", "support/model.py", "        if not torch.allclose(probe(x), torch.sin(x) * 2 + 1):", "        if False:", "tests/test_compile.py -k backend"),
 ("G02 compiled decoding expands the cache again", "support/model.py", "n_rep > 1 and query.shape[2] == 1 and torch.compiler.is_compiling()", "n_rep > 1 and query.shape[2] == 1 and False", "tests/test_compile.py -k grouped"),
 ("G03 the bf16 sampling copy goes stale", "support/model.py", "        c.copy_(m.weight)   # the weights of now", "        pass   # the weights of now", "tests/test_compile.py -k copy"),
 ("G04 a short micro-batch changes the compiled shape", "support/model.py", "            filler = shape[0] - len(part) if compile else 0\n", "            filler = 0\n            shape = (len(part), shape[1]) if compile else None\n", TT + "::test_compiled_run_builds_one_graph_per_cache_length"),
 ("G05 compiles not logged", "train.py", '**({"compiles": s.compiles[0]} if args.compile else {})', "**{}", TT + " -k compile"),
 ("G06 the plan forgets the kept static cache", "experiments/memory_plan.py", "                        kv(s.sample_rows, length),", "                        0,", "tests/test_memory_plan.py -k compile"),
 ("G07 the smoke check reads no reserved memory", "experiments/gpu_smoke_check.py", "        if limit is not None and reserved is not None and reserved > RESERVED_SHARE * limit:", "        if False:", "tests/test_gpu_smoke_check.py"),
 ("G08 the smoke check does not compare padded with alone", "experiments/gpu_smoke_check.py", "        worst = M.check_finite_left_padded(model, tok, prompts)\n", "        worst = 0.0\n", "tests/test_gpu_smoke_check.py"),
 ("G09 rundir imports the pool again", "support/rundir.py", "        start, pool = 0, pool_class()\n", "        from pool import Pool\n        start, pool = 0, pool_class()\n", "tests/test_layout.py"),
 ("G10 the placebo run shows the paper's contexts", "support/controls.py", 'if args.feedback in ("placebo", "oracle") or', 'if args.feedback in ("oracle",) or', TC),
 ("G11 the VRAM table drifts from the plan", "experiments/memory_plan.py", '            cells = ["fits" if fits(worst, c) else "no" for c in TABLE_CARDS]', '            cells = ["fits" for c in TABLE_CARDS]', "tests/test_memory_plan.py -k vram"),
 ("S1 a resumed SFT forgets AdamW's moments", "support/rundir.py", '        opt.load_state_dict(state["optimizer"])\n        sched', "        sched", "tests/test_sft.py -k killed"),
 ("S2 a resumed SFT draws its batches anew", "sft.py", "        start, batches, history, (t_train, t_heldout) = resumed", "        start, _, history, (t_train, t_heldout) = resumed", "tests/test_sft.py -k killed"),
 ("S3 a resumed SFT restarts its schedule", "support/rundir.py", '        sched.load_state_dict(state["schedule"])\n', "", "tests/test_sft.py -k killed"),
 ("S4 a resumed SFT's batch stream restarts", "support/rundir.py", '        set_rng_state(py_rng, state["rng"])\n', "", "tests/test_sft.py -k killed"),
 ("S5 run_arms starts a killed SFT over", "experiments/run_arms.py", '"--overwrite", "--resume", *SFT_VARIANTS', '"--overwrite", *SFT_VARIANTS', "tests/test_sizes.py -k width_scaled"),
 ("S6 the size prediction ignores the ceiling", "experiments/sizes.py", "        if grpo >= CEILING:", "        if grpo > 1:", "tests/test_sizes.py -k prediction"),
 ("S7 the size prediction reads an unread ratio", "experiments/sizes.py", '            elif not m["ratio_readable"]:', "            elif False:", "tests/test_sizes.py -k prediction"),
 ("S8 a resumed SFT loses its history", "sft.py", "        start, batches, history, (t_train, t_heldout) = resumed", "        start, batches, _, (t_train, t_heldout) = resumed", "tests/test_sft.py -k killed"),
 ("S9 the slope is judged before every size is in", "experiments/sizes.py", "    if missing:\n", "    if missing and False:\n", "tests/test_sizes.py -k prediction"),
 ("S10 a rising slope at the ceiling fails it", "experiments/sizes.py", "    if at_ceiling:\n", "    if False:\n", "tests/test_sizes.py -k prediction"),
]


def main():
    # a stopped run restores the source too (finally runs on SIGTERM as on Ctrl-C)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    only = sys.argv[1:]
    results = []
    for name, f, old, new, tests in MUT:
        if only and not any(name.startswith(o) for o in only):
            continue
        path = os.path.join(ROOT, f)
        src = open(path).read()
        assert src.count(old) == 1, (name, src.count(old))
        open(path, "w").write(src.replace(old, new))
        try:
            t = time.time()
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                *tests.split()], capture_output=True, text=True, cwd=ROOT,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
            failed = [l.split(" ")[1] for l in r.stdout.splitlines() if l.startswith("FAILED")]
            caught = r.returncode != 0 and bool(failed)
            results.append({"name": name, "file": f, "caught": caught, "by": failed[:1],
                            "seconds": round(time.time() - t, 1)})
            print(f"{name:52} {'CAUGHT' if caught else 'MISSED'}  {failed[:1]}", flush=True)
        finally:
            open(path, "w").write(src)
    # the whole list: mutations.json; a part (e.g. N): mutations_N.json
    name = "mutations.json" if not only else f"mutations_{'_'.join(only)}.json"
    with open(os.path.join(ROOT, "experiments", "results", name), "w") as fh:
        json.dump({"command": "python experiments/mutations.py " + " ".join(only),
                   "results": results}, fh, indent=1)
    subprocess.run(["git", "status", "--short"], cwd=ROOT)


if __name__ == "__main__":
    main()
