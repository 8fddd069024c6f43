"""Run by the export tests in a fresh interpreter: load an exported checkpoint with trust_remote_code=True while
`llada_hf` cannot be imported, and print the model's module, its generation config class and greedy tokens.

With a third argument `official`: print one JSON line instead, with the AutoModel / AutoModelForCausalLM classes, the
AutoTokenizer's chat-template rendering of a message and the causal-LM logits on the ids (one torch thread)."""

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
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

try:
    import llada_hf  # noqa: F401

    sys.exit("llada_hf is importable: the check would prove nothing")
except ImportError:
    pass

ids = torch.tensor(json.loads(sys.argv[2]))
if sys.argv[3:] == ["official"]:
    torch.set_num_threads(1)
    base = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])  # asks about the auto_map's code (stdin closed: no)
    message = [{"role": "user", "content": "hi"}]
    chat = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        logits = model(ids).logits
    report = {"auto_model": type(base).__name__, "causal_lm": type(model).__name__, "module": type(model).__module__}
    print("\n" + json.dumps(report | {"chat": chat, "logits": logits.tolist()}))
    sys.exit(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
print(type(model).__module__)
print(type(model.generation_config).__name__)
print(json.dumps(model.generate(ids, max_new_tokens=8, steps=8, block_length=4).tolist()))
