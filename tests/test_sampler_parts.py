"""The engine as parts: a new selection rule is one class, passed to generate() by name; the engine is untouched."""

import torch
from conftest import tiny_model

MASK = 1000


class RightToLeft:
    """A toy selection rule: each step commits the rightmost masked column of the block (whatever its confidence);
    the block stays open while it holds a mask."""

    def schedule(self, state, block, length):
        return None, 0  # no count schedule

    def open(self, state, block, step):
        return bool((state.x[state.rows, block.start : block.end] == MASK).any())

    def select(self, confidence, k, view, length):
        candidates = confidence > -torch.inf
        columns = torch.arange(confidence.shape[1])
        last = torch.where(candidates, columns, -1).max(-1).values
        return (columns[None, :] == last[:, None]) & candidates


def test_a_toy_selection_rule_runs_through_generate():
    model, prompt, gen = tiny_model(seed=5), torch.tensor([[5, 6, 7]]), 8
    out = model.generate(
        prompt, max_new_tokens=gen, block_length=4, return_dict_in_generate=True, output_history=True,
        sampler_parts={"selection": RightToLeft()},
    )  # fmt: skip
    assert out.nfe == gen  # one token per step
    start = torch.cat([prompt, torch.full((1, gen), MASK)], 1)
    before = [start, *out.history[:-1]]
    committed = [(b != a).nonzero()[:, 1].tolist() for b, a in zip(before, out.history, strict=True)]
    assert committed == [[c] for c in (6, 5, 4, 3, 10, 9, 8, 7)]  # right to left within each block, blocks in order
    # Independent route: the same order by hand, one forward and one argmax per step.
    x = start.clone()
    for column in (6, 5, 4, 3, 10, 9, 8, 7):
        x[0, column] = model(x).logits[0, column].argmax()
    assert torch.equal(out.sequences, x)
    default = model.generate(prompt, max_new_tokens=gen, block_length=4)
    assert not torch.equal(default, x)  # the rule changed the result (the default commits by confidence)


def test_window_cache_is_a_transformers_cache_written_in_place():
    """The Fast-dLLM cache's buffers are allocated at the refresh and written in place by cached steps and later
    refreshes (static shapes: what a CUDA-graph capture of the cached step needs)."""
    from llada_hf.generation.generation_layout import DiffusionKVCache
    from transformers.cache_utils import Cache

    model, ids = tiny_model(seed=2), torch.randint(0, 1000, (2, 24))
    cache = DiffusionKVCache()
    assert isinstance(cache, Cache)
    cache.begin(refresh=True, start=0, end=24)
    model(ids, past_key_values=cache)
    buffers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    assert len(buffers) == model.config.num_hidden_layers
    before = cache.layers[0].keys.clone()
    cache.begin(refresh=False, start=8, end=16)
    model(ids[:, 8:16], position_ids=torch.arange(8, 16)[None], past_key_values=cache)
    after = cache.layers[0].keys
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == buffers
    assert torch.equal(after[:, :, :8], before[:, :, :8]) and torch.equal(after[:, :, 16:], before[:, :, 16:])
    cache.begin(refresh=True, start=0, end=24)
    model(ids, past_key_values=cache)
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == buffers
    assert torch.equal(cache.layers[0].keys, before)  # a refresh of the same canvas restores the same keys
