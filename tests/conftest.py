"""Shared fixtures: a small tiny-world model built from a config (never downloaded)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import world as W  # noqa: E402
from support import model as M  # noqa: E402

# The tests use models of a few thousand parameters, where a second thread only adds
# synchronization cost (and on a busy 2-core machine, a lot of it). The environment variable
# keeps it so in every train.py / sft.py the tests run, in process or not (config.Threads leaves
# the count alone when it is set; the tests of Threads itself unset it).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def build_tiny(hidden=32, layers=2, seed=0):
    from transformers import LlamaForCausalLM
    world = W.TinyWorld()
    tok = W.tiny_tokenizer(world)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(W.tiny_model_config(tok, hidden=hidden, layers=layers, heads=2))
    return model.eval(), tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random tiny-world model saved like sft.py saves one."""
    model, tok = build_tiny()
    path = tmp_path_factory.mktemp("tiny") / "sft"
    M.save_model(model, tok, str(path))
    return str(path)


@pytest.fixture
def tiny_model(tiny_dir):
    return M.load_model(tiny_dir, device="cpu")
