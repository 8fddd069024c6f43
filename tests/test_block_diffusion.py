"""Block-diffusion training (LLaDA2's objective): each noisy block must see exactly what the block-causal sampler
shows it (itself, and the earlier blocks finished), and one block must reduce to the plain full-attention loss."""

from pathlib import Path

import pytest
import torch
from conftest import forward_depth, fp32_tol
from llada_hf.generation.generation_llada2 import block_causal_mask
from llada_hf.modeling import LLaDA2MoeConfig, LLaDA2MoeModelLM

from llada_hf.training import block_diffusion_logits, block_diffusion_mask, pretraining_loss, sft_loss

LLADA2_DIR = Path(__file__).parent / "fixtures" / "llada2_tiny"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LLaDA2MoeModelLM(LLaDA2MoeConfig.from_pretrained(LLADA2_DIR)).eval()


def test_each_noisy_block_sees_what_the_sampler_shows_it(model):
    """Route 2 is the sampler's view: [clean blocks < k | noisy block k] under the plain block-causal mask."""
    length, block = 12, 4
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 1000, (2, length), generator=generator)
    noisy = torch.where(torch.rand(2, length, generator=generator) < 0.5, model.config.mask_token_id, clean)
    with torch.no_grad():
        logits = block_diffusion_logits(model, noisy, clean, block)
        for k in range(length // block):
            end = (k + 1) * block
            view = torch.cat([clean[:, : k * block], noisy[:, k * block : end]], dim=1)
            mask = block_causal_mask(end, block)[None, None]
            expected = model(input_ids=view, attention_mask=mask).logits[:, k * block :]
            atol = fp32_tol(expected, forward_depth(model.config, 2 * length))
            assert (logits[:, k * block : end] - expected).abs().max() <= atol, k


def test_one_block_is_the_plain_loss(model):
    """With one block the noisy copy sees only itself: the full-attention loss, for SFT and pre-training."""
    ids = torch.randint(0, 1000, (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for loss, kwargs in ((sft_loss, dict(prompt_lengths=[3, 4, 5])), (pretraining_loss, {})):
            plain = loss(model, ids, generator=torch.Generator().manual_seed(3), **kwargs)
            blocked = loss(model, ids, generator=torch.Generator().manual_seed(3), block_length=10, **kwargs)
            short = loss(model, ids, generator=torch.Generator().manual_seed(3), block_length=2, **kwargs)
            assert blocked == pytest.approx(plain.item(), abs=fp32_tol(plain, forward_depth(model.config, 20, True)))
            assert abs(short.item() - plain.item()) > 1e-3  # smaller blocks see less: another loss


def test_mask_layout_and_bad_block_length():
    mask = block_diffusion_mask(4, 2).int()
    expected = [
        [1, 1, 0, 0, 0, 0, 0, 0],  # noisy block 0: itself
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],  # noisy block 1: itself and clean block 0
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # clean block 0
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],  # clean block 1: block-causal
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    assert mask.tolist() == expected
    with pytest.raises(ValueError, match="block_length"):
        block_diffusion_mask(4, 0)


def test_trainer_block_length_one_block_is_the_plain_loss(model, tmp_path):
    """`DiffusionTrainingArguments(block_length=)`: one block over the padded batch gives the plain loss, smaller
    blocks another one; a block size below 0 or beside attention annealing is refused."""
    import datasets
    from transformers import TrainingArguments

    from llada_hf.training import DiffusionCollator, DiffusionTrainer, DiffusionTrainingArguments

    rows = [{"prompt_ids": [5 + i, 6, 7], "answer_ids": [8, 9 + i, 10, 11]} for i in range(4)]
    collator = DiffusionCollator(mask_token_id=1000, pad_token_id=1001, max_length=8, pad_to_max_length=True)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=4)
    losses = {}
    for block_length in (0, 8, 2):
        diffusion = DiffusionTrainingArguments.from_training_arguments(args, block_length=block_length)
        trainer = DiffusionTrainer(model=model, args=diffusion, train_dataset=datasets.Dataset.from_list(rows),
                                   data_collator=collator)  # fmt: skip
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            losses[block_length] = trainer.compute_loss(model, batch).item()
    assert losses[8] == pytest.approx(losses[0], abs=fp32_tol(losses[0], forward_depth(model.config, 16, True)))
    assert abs(losses[2] - losses[0]) > 1e-3
    for bad in (dict(block_length=-1), dict(block_length=2, attention_anneal_steps=5)):
        with pytest.raises(ValueError, match="block_length"):
            DiffusionTrainingArguments.from_training_arguments(args, **bad)
