"""Mutation checks of the GPU-precision tests: each defect the tests of tests/test_precision.py
(and two of tests/test_evaluate.py) are meant to catch is put back into the code, one at a
time, and the test that should catch it is run; every line must say CAUGHT. The source is
restored after each run.

    python experiments/precision_mutations.py [NAME-PREFIX ...]
"""
import os
import subprocess
import sys

os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = "tests/test_precision.py::"
MUT = [
 ("2a auto asks is_bf16_supported()", "support/model.py", "return torch.cuda.get_device_capability(device) >= (8, 0)", "return torch.cuda.is_bf16_supported()", T+"test_auto_is_bf16_only_on_the_chosen_gpu_when_it_does_bf16_natively"),
 ("2b auto asks the current device", "support/model.py", "return torch.cuda.get_device_capability(device) >= (8, 0)", "return torch.cuda.get_device_capability() >= (8, 0)", T+"test_auto_is_bf16_only_on_the_chosen_gpu_when_it_does_bf16_natively"),
 ("2c no precision in metrics rows", "train.py", '        m["precision"] = args.precision_used\n', "", T+"test_the_precision_used_is_in_config_json_and_every_metrics_row"),
 ("3a reference in bf16 outright", "support/model.py", "        _bf16_linears(model)\n", "        model.to(torch.bfloat16); model.autocast_dtype = None\n", T+"test_kl_to_the_reference_is_zero_at_step_zero_under_bf16_autocast"),
 ("3b tied output layer cast to bf16", "support/model.py", "if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in not_linear:", "if isinstance(mod, torch.nn.Linear):", T+"test_kl_to_the_reference_is_zero_at_step_zero_under_bf16_autocast"),
 ("3d train.py makes the policy its own reference", "train.py", "        ref_model.requires_grad_(False)\n", "        ref_model.requires_grad_(False)\n        ref_model = model\n", T+"test_the_precision_used_is_in_config_json_and_every_metrics_row"),
 ("3c update scores the reference with the policy", "train.py", "ref = [logprobs_of(ref_model, c) for c in chunks]", "ref = [logprobs_of(model, c) for c in chunks]", T+"test_kl_is_to_the_frozen_sft_model_not_the_current_policy"),
 ("4 no one-dtype cache", "support/model.py", "                                 **_one_dtype_cache(model), **knobs)", "                                 **knobs)", T+"test_kv_cache_holds_one_dtype_under_bf16_autocast"),
 ("5a no pad-safe attention", "support/model.py", "    _pad_safe_sdpa(model)\n    return model.to(device)", "    return model.to(device)", T+"test_left_padded_batch_is_finite_where_a_kernel_gives_nan"),
 ("5b guard returns the mask unchanged", "support/model.py", "    return mask | ~mask.any(-1, keepdim=True)", "    return mask", T+"test_left_padded_batch_is_finite_where_a_kernel_gives_nan"),
 ("8a torch.load without map_location", "support/rundir.py", 'map_location="cpu", weights_only=False', "weights_only=False", T+"test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_host"),
 ("8b set_rng_state_all", "support/rundir.py", "        for i, s in enumerate(saved[:n]):\n            torch.cuda.set_rng_state(s, i)", "        torch.cuda.set_rng_state_all(saved)", T+"test_cuda_random_streams_restore_on_fewer_gpus"),
 ("8c peak memory of the current device", "support/model.py", "torch.cuda.max_memory_allocated(device) / 2**30", "torch.cuda.max_memory_allocated() / 2**30", T+"test_peak_memory_is_read_from_the_models_device"),
 ("8d peak reset of the current device", "support/model.py", "torch.cuda.reset_peak_memory_stats(device)", "torch.cuda.reset_peak_memory_stats()", T+"test_peak_memory_is_read_from_the_models_device"),
 ("8e gradients kept after the step", "train.py", "        opt.step()\n        # free the gradients now: they would otherwise stay allocated through the next sampling\n        opt.zero_grad(set_to_none=True)\n", "        opt.step()\n", T+"test_gradients_are_freed_after_the_optimizer_step"),
 ("8f final/ saved in float32", "support/model.py", "    cast = dtype is not None and any(", "    cast = False and any(", T+"test_saved_models_keep_the_checkpoints_dtype_and_checkpoints_float32"),
 ("8g save_dtype not in state.pt", "support/rundir.py", ', "save_dtype": getattr(model, "save_dtype", None)}', "}", T+"test_saved_models_keep_the_checkpoints_dtype_and_checkpoints_float32"),
 ("6 torch>=2.4 again", "requirements.txt", "torch>=2.6", "torch>=2.4", T+"test_requirements_ask_for_a_torch_that_transformers_5_uses"),
 ("7a evaluate: fixed 256", "evaluate.py", "        args.max_new_tokens = args.max_new_tokens or max_new\n", "        args.max_new_tokens = args.max_new_tokens or (48 if args.data == 'tiny' else 256)\n", "tests/test_evaluate.py::test_cli_takes_length_and_precision_from_the_training_run"),
 ("7b evaluate: float32 load", "evaluate.py", "                              precision=precision, frozen=True)", "                              precision=precision)", "tests/test_evaluate.py::test_cli_takes_length_and_precision_from_the_training_run"),
 ("7c evaluate: fixed precision", "evaluate.py", "        args.precision = args.precision or precision\n", "        args.precision = args.precision or ('fp32' if args.data == 'tiny' else 'auto')\n", "tests/test_evaluate.py::test_cli_takes_length_and_precision_from_the_training_run"),
]
only = sys.argv[1:]
for name, f, old, new, test in MUT:
    if test is None or (only and not any(name.startswith(o) for o in only)):
        continue
    src = open(f).read()
    assert src.count(old) == 1, (name, src.count(old))
    open(f, "w").write(src.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test],
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        last = " | ".join([l for l in r.stdout.splitlines() if l.startswith("E ")][:2])
        print(f"{name:50} {'CAUGHT' if r.returncode else 'MISSED'}  ({last[:230]})", flush=True)
    finally:
        open(f, "w").write(src)
subprocess.run(["git", "status", "--short"])   # nothing should be left modified
