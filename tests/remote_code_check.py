"""Run by test_modeling in a fresh interpreter: load an exported checkpoint with trust_remote_code=True while
`llada_hf` cannot be imported, and print the model's module, its generation config class and greedy tokens."""

import importlib.abc
import json
import sys


class _BlockLladaHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "llada_hf" or name.startswith("llada_hf."):
            raise ImportError(f"llada_hf is blocked in this check: {name}")
        return None


sys.meta_path.insert(0, _BlockLladaHf())

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

try:
    import llada_hf  # noqa: F401

    sys.exit("llada_hf is importable: the check would prove nothing")
except ImportError:
    pass

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
print(type(model).__module__)
print(type(model.generation_config).__name__)
print(json.dumps(model.generate(ids, max_new_tokens=8, steps=8, block_length=4).tolist()))
