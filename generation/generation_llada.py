"""Masked-diffusion generation: the engine (`DiffusionGenerationMixin.generate()`, written once for every family).

A canvas of mask tokens after the prompt is filled block by block; each step predicts every masked position with one
forward and commits the most confident predictions of the current block. The sampler is composed of parts the
generation config chooses (`config.sampler_parts()`, see generation_parts.py): layout (block plan + forward + cache),
proposal, confidence, selection, revision, stopping, finalisation. `DiffusionSampler.step()` is a pure function of a
handful of tensors (static shapes per block, no host sync), so it compiles whole; the per-call loop state lives in
one `DiffusionState`. With LLaDA's parts, greedy and seeded CPU runs reproduce the official sampler's tokens exactly.
"""

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache
from transformers.generation.configuration_utils import GenerationConfig
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria
from transformers.utils import ModelOutput

from .generation_config import (
    REJECTED_KWARGS,
    SAMPLING_FILTERS,
    LLaDAGenerationConfig,
    _filter_is_set,
    check_contract,
    check_ids,
    left_pad,
)
from .generation_parts import CONFIDENCE_RULES, SamplerParts, StepView, as_list, estimate_step_bytes  # noqa: F401

#: 8B special ids; used only when the model's vocabulary is the 8B one and its config does not name them.
LLADA_8B_VOCAB, LLADA_8B_MASK, LLADA_8B_EOT = 126464, 126336, 126348


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """`sequences` (prompt + answer), `nfe` (model forwards; a CFG pair counts once), optional canvas `history`,
    per-step `scores` / `logits` (B, W, V) of the scored columns `score_columns[i]` (rows already stopped: -inf),
    and with self-correction `remasked`: tokens re-masked per row."""

    sequences: torch.LongTensor | None = None
    nfe: int | None = None
    history: tuple[torch.LongTensor, ...] | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    score_columns: tuple[tuple[int, int], ...] | None = None
    remasked: torch.LongTensor | None = None


class StepInput(NamedTuple):
    """The active rows' canvas, padding mask, fixed columns; with revision the commit probabilities and budget."""

    x: torch.Tensor
    attention_mask: torch.Tensor | None
    prompt_index: torch.Tensor
    committed: torch.Tensor | None
    budget: torch.Tensor | None


class StepOutput(NamedTuple):
    """The window's new tokens; with revision its commit probabilities, budget left, re-masked counts; logits."""

    x_window: torch.Tensor
    committed_window: torch.Tensor | None
    budget: torch.Tensor | None
    remasked: torch.Tensor | None
    logits: torch.Tensor
    scores: torch.Tensor


@dataclass
class DiffusionState:
    """Everything one generate() call carries from step to step (full-batch tensors; `rows` are still active)."""

    x: torch.Tensor  # the canvas: prompt + answer columns
    attention_mask: torch.Tensor | None
    prompt_index: torch.Tensor  # columns fixed from the start (never predicted)
    prompt_len: int
    rows: torch.Tensor  # indices of the rows still generating
    cache: Cache | None = None  # the layout's cache (`past_key_values`), rows = active rows
    schedule: list | torch.Tensor | None = None  # the block's commit counts per step (selection's)
    extra: torch.Tensor | None = None  # tokens re-masked in the previous step, added to this step's count
    committed: torch.Tensor | None = None  # revision: proposal probability of each commit (inf: not revisable)
    budget: torch.Tensor | None = None  # revision: re-masks left per row in this block
    remasked: torch.Tensor | None = None  # revision: tokens re-masked so far, per row
    checked: list[int] = field(default_factory=list)  # stopping criteria: final-prefix length already checked
    stopped_at: int | None = None  # column of the EOS that stopped the call (LLaDA2's official eos_early_stop)
    closed: torch.Tensor | None = None  # LLaDA2.1 editing: rows whose current block is closed (full batch)
    post_steps: torch.Tensor | None = None  # LLaDA2.1 editing: forwards since the block lost its last mask, per row
    nfe: int = 0
    recorded: dict[str, list] = field(default_factory=dict)  # history / scores / logits / score_columns

    def inputs(self, revision: bool) -> StepInput:
        """The active rows' tensors (the revision ones only when it is on: no work on the default path)."""
        rows = self.rows
        mask = self.attention_mask[rows] if self.attention_mask is not None else None
        committed, budget = (self.committed[rows], self.budget[rows]) if revision else (None, None)
        return StepInput(self.x[rows], mask, self.prompt_index[rows], committed, budget)

    def count(self, step: int) -> int | torch.Tensor | None:
        """The step's commit count: one host int for every row (no sync), or per row plus the re-masked extra."""
        if self.schedule is None or isinstance(self.schedule, list):
            return None if self.schedule is None else self.schedule[step]
        return self.schedule[:, step] + self.extra

    def drop(self, finished: torch.Tensor | None, doubled: bool) -> None:
        """Rows that finished leave the batch (and the cache; `doubled`: the cache holds the CFG pair's rows)."""
        if finished is None or not bool(finished.any()):
            return
        keep = ~finished
        if self.cache is not None:
            kept = keep.nonzero().flatten()
            self.cache.batch_select_indices(torch.cat([kept, kept + len(keep)]) if doubled else kept)
        self.rows, self.extra = self.rows[keep], self.extra[keep]
        if isinstance(self.schedule, torch.Tensor):
            self.schedule = self.schedule[keep]


class DiffusionSampler:
    """The parts of one call with the model and its cache; `step()` is pure: tensors in, tensors out."""

    def __init__(self, model, parts: SamplerParts, cache: Cache | None, mask_id: int) -> None:
        self.model, self.parts, self.cache, self.mask_id = model, parts, cache, mask_id

    def step(self, inp: StepInput, k, noise: tuple, view: StepView) -> StepOutput:
        """One denoising step on the window: forward, propose, score, select, commit, revise."""
        parts, (start, end) = self.parts, view.window
        logits = parts.layout.forward(self.model, inp, view, self.cache)
        proposal, scores = parts.proposal.propose(logits, inp.x, view, noise[0])
        confidence = parts.confidence.score(scores, proposal, noise[1])
        x_window = inp.x.narrow(1, start, end - start)
        is_mask = x_window == self.mask_id
        in_block = torch.arange(start, end, device=proposal.device)[None, :] < view.block_end
        candidates = torch.where(is_mask & in_block, confidence, -torch.inf)  # candidates: the block's masks
        transfer = parts.selection.select(candidates, k, view, inp.x.shape[1])
        new_window = torch.where(transfer, torch.where(is_mask, proposal, x_window), x_window)
        if parts.revision is None:
            return StepOutput(new_window, None, None, None, logits, scores)
        revised = parts.revision.revise(inp, transfer, proposal, scores, confidence, new_window, view)
        return StepOutput(*revised, logits, scores)


class DiffusionGenerationMixin:
    """Adds the masked-diffusion `generate()` (the name must end in `GenerationMixin`: transformers keys
    `can_generate()`, the generation config and pipeline support on it). A family sets `diffusion_config_class`;
    its config's `sampler_parts()` chooses the sampler, nothing else is overridden."""

    diffusion_config_class = LLaDAGenerationConfig

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             cache_dir, force_download, proxies, local_files_only, token, revision, subfolder,
                             trust_remote_code, **kwargs):  # fmt: skip
        """Load `generation_config.json` as the family's config class (the base version loads a plain one)."""
        if generation_config is not None:
            self.generation_config = self.diffusion_config_class.from_dict(generation_config.to_dict())
        elif pretrained_model_name_or_path is not None:
            try:
                self.generation_config = self.diffusion_config_class.from_pretrained(
                    pretrained_model_name_or_path, cache_dir=cache_dir, force_download=force_download,
                    proxies=proxies, local_files_only=local_files_only, token=token, revision=revision,
                    subfolder=subfolder, _from_auto=from_auto_class, _from_pipeline=from_pipeline,
                )  # fmt: skip
            except OSError as error:
                # A missing file keeps the config built from the model config; an unreadable one is not ignored
                # (the model would silently sample with default settings instead of the checkpoint's).
                if isinstance(error.__context__, (json.JSONDecodeError, UnicodeDecodeError)):
                    raise ValueError(
                        f"generation_config.json could not be read: {error} ({error.__context__})"
                    ) from None

    def _diffusion_device(self, input_ids) -> torch.device:
        """Where the canvas lives: the embedding's device, or, if accelerate offloaded it (weight on meta), the device
        its hook computes on, so a GPU + CPU/disk map samples on the GPU (never `self.device`: it can be meta)."""
        embeddings = self.get_input_embeddings()
        device = embeddings.weight.device
        if device.type != "meta":
            return device
        execution_device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
        if execution_device is not None:
            return torch.device(execution_device)
        return input_ids.device if isinstance(input_ids, torch.Tensor) else torch.device("cpu")

    def _prepare_diffusion_config(self, generation_config, kwargs: dict) -> tuple[LLaDAGenerationConfig, Any]:
        """(config, steps_per_token): kwargs > passed config > model's generation config; special ids the config
        leaves unset come from the model config; the official-style `temperature=t` alone implies sampling.
        `steps_per_token` (else None): a call that sets the canvas but not `steps` keeps the checkpoint's rate."""
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}.")
        base = generation_config if generation_config is not None else self.generation_config
        config = copy.deepcopy(base)
        if not isinstance(config, self.diffusion_config_class):
            config = self.diffusion_config_class.from_dict(config.to_dict())
        if kwargs.get("temperature") and "do_sample" not in kwargs:
            kwargs["do_sample"] = True
        if kwargs.get("infill") and "max_new_tokens" not in kwargs and "max_length" not in kwargs:
            kwargs["max_new_tokens"] = 0  # infilling means the masks the user placed
        if kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is None:
            config.max_new_tokens = None  # resolved against the prompt length in generate()
        elif kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is not None:
            warnings.warn("Both max_new_tokens and max_length are set; max_new_tokens takes precedence.", stacklevel=3)
        steps_per_token = None
        if generation_config is None and "steps" not in kwargs and base.steps and base.max_new_tokens:
            if any(kwargs.get(name) is not None for name in ("max_new_tokens", "max_length")):
                steps_per_token = base.steps / base.max_new_tokens
        unused = config.update(**kwargs)
        unused.pop("tokenizer", None)  # the pipeline passes it along; stop_strings use it
        for name in (*REJECTED_KWARGS, "synced_gpus"):
            unused.pop(name, None)
        if unused:
            raise ValueError(f"generate() got unexpected arguments: {sorted(unused)}.")
        vocab = self.config.vocab_size
        ids = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id")
        for name in ids:
            if getattr(config, name, None) is None:
                setattr(config, name, getattr(self.config, name, None))
        if config.eot_token_id is None and vocab == LLADA_8B_VOCAB and config.mask_token_id == LLADA_8B_MASK:
            config.eot_token_id = LLADA_8B_EOT  # the 8B checkpoints' `<|eot_id|>` (not in their config.json)
        for name in ids:
            for token in as_list(getattr(config, name, None)):
                if not isinstance(token, int) or not 0 <= token < vocab:
                    raise ValueError(f"{name} {token!r} is outside the model's vocabulary [0, {vocab}).")
        check_contract(config, kwargs)  # first: the base validate() would only warn that such flags "may be ignored"
        config.validate()
        unused = [name for name in SAMPLING_FILTERS if _filter_is_set(config, name)]
        if unused and not config.do_sample:
            warnings.warn(
                f"{', '.join(unused)} only filter sampled proposals; with do_sample=False (greedy, as in "
                "transformers) they have no effect. Pass do_sample=True (or temperature > 0) to use them.",
                stacklevel=3,
            )
        return config, steps_per_token

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: LLaDAGenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        sampler_parts: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | DiffusionGenerateOutput:
        """Fill `max_new_tokens` masks after the prompt by iterative unmasking; returns prompt + answer.

        1. Prepare: merge kwargs into the config, check the contract and the inputs (before any allocation), build
           the parts (`config.sampler_parts()`), the canvas (prompt + masks) and the state. A batch whose rows need
           different block grids (`layout.groups`, LLaDA2's padding alignment) runs as one call per group, merged.
        2. Per block of the layout's plan: the selection's commit counts.
        3. Per step, while the selection keeps the block open: a. forward; b. propose; c. score; d. select;
           e. commit; f. revise (opt-in); g. stop rows that are final (after the step, and after the block).
        4. Return the finalisation's sequences (or a `DiffusionGenerateOutput`).

        Inputs may be left-padded (with `attention_mask`); right-padded rows are moved to the left (warned). With
        `infill=True`, mask tokens inside `inputs` are filled too and everything else stays fixed. `generator`
        replaces the global RNG; `logits_processor` sees the current canvas as `input_ids` and the scored columns'
        logits as rows; `stopping_criteria` / `stop_strings` are checked on the final prefix of each row.
        `sampler_parts` replaces parts of the config's choice by name (e.g. `{"selection": MyRule()}`).
        """
        # 1. Prepare
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        tokenizer = kwargs.get("tokenizer")
        config, steps_per_token = self._prepare_diffusion_config(generation_config, kwargs)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        device = self._diffusion_device(input_ids)
        input_ids, attention_mask = check_ids(input_ids, attention_mask, device)
        input_ids, attention_mask = left_pad(input_ids, attention_mask)
        prompt_len = input_ids.shape[1]
        if config.max_new_tokens is None:
            config.max_new_tokens = config.max_length - prompt_len
            if config.max_new_tokens < 0 or (config.max_new_tokens == 0 and not config.infill):
                raise ValueError(f"max_length ({config.max_length}) must exceed the prompt length ({prompt_len}).")
        if config.min_length:
            config.min_new_tokens = max(config.min_new_tokens or 0, config.min_length - prompt_len)
            config.min_length = 0
        if config.min_new_tokens and config.min_new_tokens > config.max_new_tokens:
            raise ValueError(f"min_new_tokens ({config.min_new_tokens}) > max_new_tokens ({config.max_new_tokens}).")
        criteria = StoppingCriteriaList(stopping_criteria or [])
        if config.stop_strings:
            if tokenizer is None:
                raise ValueError("stop_strings needs the tokenizer: generate(..., tokenizer=tokenizer).")
            criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
        parts = config.sampler_parts(logits_processor, criteria)._replace(**(sampler_parts or {}))
        layout = parts.layout
        unmergeable = ("return_dict_in_generate", "output_history", "output_scores", "output_logits")
        merged = streamer is not None or any(getattr(config, name) for name in unmergeable)  # per-group: not merged
        groups = layout.groups(attention_mask) if attention_mask is not None else None
        if groups is not None and not merged:  # one call per block alignment, in row order
            out = {}
            for residue, rows in groups:
                one = self.generate(input_ids[rows, residue:], config, attention_mask[rows, residue:],
                                    generator=generator, logits_processor=logits_processor, tokenizer=tokenizer,
                                    stopping_criteria=stopping_criteria, sampler_parts=sampler_parts)  # fmt: skip
                copies = one.shape[0] // len(rows)  # num_return_sequences
                prefix = input_ids[rows, :residue].repeat_interleave(copies, dim=0).to(one.device)
                out.update(zip(rows.tolist(), torch.cat([prefix, one], dim=1).view(len(rows), copies, -1)))
            return torch.stack([out[row] for row in range(len(out))]).flatten(0, 1)
        if groups is not None:
            warnings.warn(
                "generate(): rows whose padding differs by other than whole blocks share one block grid here (with a "
                "streamer or return_dict_in_generate / output_* the per-alignment calls are not merged): they may "
                "not get their alone answers. Pad to a multiple of block_length.",
                stacklevel=3,
            )
        if (copies := config.num_return_sequences or 1) > 1:
            input_ids = input_ids.repeat_interleave(copies, dim=0)
            attention_mask = attention_mask.repeat_interleave(copies, dim=0) if attention_mask is not None else None
        batch, mask_id = input_ids.shape[0], config.mask_token_id
        length = layout.canvas_length(prompt_len, config.max_new_tokens)
        window = layout.logits_width(prompt_len, length)
        self._check_size(batch, length, window, getattr(parts.proposal, "gumbel", False), config.cfg_scale > 0, device)
        plan = self._diffusion_plan(input_ids, attention_mask, config, layout, steps_per_token)

        x = F.pad(input_ids, (0, length - prompt_len), value=mask_id)
        if attention_mask is not None:
            attention_mask = (
                None if bool(attention_mask.all()) else F.pad(attention_mask, (0, length - prompt_len), value=1)
            )
        revising = getattr(parts.revision, "budgeted", False)  # ReMDM: commit probabilities and budgets per row
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        state = DiffusionState(
            x=x, attention_mask=attention_mask, prompt_index=x != mask_id, prompt_len=prompt_len,
            rows=torch.arange(batch, device=device), cache=layout.make_cache(), checked=[0] * batch,
            committed=torch.full(x.shape, torch.inf, device=device) if revising else None,
            budget=zeros.clone() if revising else None, remasked=zeros.clone() if revising else None,
        )  # fmt: skip
        sampler = DiffusionSampler(self, parts, state.cache, mask_id)
        step_fn = self._compiled_step(config.compile) if config.compile else DiffusionSampler.step
        self.model.rotary_emb.ensure_length(length)  # steps pass explicit positions: the tables cover the canvas
        max_pos = getattr(self.config, "max_position_embeddings", None)
        if max_pos and length > max_pos:
            warnings.warn(
                f"The canvas ({length} tokens) is longer than max_position_embeddings ({max_pos}); RoPE is extended "
                "beyond the trained length.",
                stacklevel=2,
            )
        stream = _Stream(streamer, input_ids, prompt_len, mask_id) if streamer is not None else None
        vocab, doubled = self.config.vocab_size, config.cfg_scale > 0

        for block in plan:
            if state.rows.numel() == 0:
                break
            # 2. The block's commit counts
            state.schedule, k_max = parts.selection.schedule(state, block, length)
            state.extra = torch.zeros_like(state.rows)
            if revising:
                state.budget[state.rows] = config.remask_budget
            step = 0
            while parts.selection.open(state, block, step):
                # 3a-f. One step on the active rows
                rows = state.rows
                last = state.schedule is not None and step == block.steps - 1  # no revision after the last count
                view = layout.view(block, step, length, prompt_len, k_max, last)
                k = state.count(step)
                noise = (
                    parts.proposal.draw(rows.numel(), length, view, vocab, device, generator),
                    parts.confidence.draw(rows.numel(), length, view, device, generator),
                )
                inp = state.inputs(revising)
                out = step_fn(sampler, inp, k, noise, view)
                start, end = view.window
                state.x[rows, start:end] = out.x_window
                if revising:
                    state.committed[rows, start:end] = out.committed_window
                    state.budget[rows] = out.budget
                    state.extra = out.remasked
                    state.remasked[rows] += out.remasked
                state.nfe += 1
                step += 1
                self._record(state, config, out, view, batch)
                if stream is not None:
                    stream.update(state.x)
                # 3g. Stop rows that are final
                state.drop(parts.stopping.after_step(state, inp.x.narrow(1, start, end - start), view), doubled)
                if state.rows.numel() == 0:
                    break
            if state.rows.numel():
                state.drop(parts.stopping.after_block(state, block), doubled)

        # 4. Return
        if stream is not None:
            stream.finish(state.x)
        sequences = parts.finalise(state)
        if not config.return_dict_in_generate:
            return sequences
        recorded = {name: tuple(values) for name, values in state.recorded.items()}
        return DiffusionGenerateOutput(sequences=sequences, nfe=state.nfe, remasked=state.remasked, **recorded)

    def _diffusion_plan(self, input_ids, attention_mask, config, layout=None, steps_per_token=None) -> list:
        """Validate the request (ids, mask token, padding, prompt masks); return the layout's block plan."""
        mask_id = config.mask_token_id
        if mask_id is None:
            raise ValueError("mask_token_id is set neither in the generation config nor in the model config.")
        vocab = self.config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
        if config.pad_token_id is not None and config.pad_token_id == mask_id:
            raise ValueError(f"pad_token_id equals mask_token_id ({mask_id}): padding would be generated over.")
        prompt_masks = input_ids == mask_id
        if attention_mask is not None:
            prompt_masks &= attention_mask.bool()
        n_prompt_masks = prompt_masks.sum(-1)
        if bool(n_prompt_masks.any()) and not config.infill:
            raise ValueError(
                f"The prompt contains the mask token {mask_id}; pass infill=True to fill masks inside the input."
            )
        if config.infill and config.cache != "none":
            raise ValueError("cache is not supported with infill=True (prompt masks would need fresh keys).")
        if config.cfg_scale > 0 and input_ids.shape[1] == 0:
            raise ValueError("cfg_scale > 0 needs a prompt: the unconditional branch masks the prompt.")
        layout = layout if layout is not None else config.sampler_parts().layout
        return layout.plan(input_ids, attention_mask, n_prompt_masks, steps_per_token)

    def _check_size(self, batch: int, length: int, window: int, sampling: bool, cfg: bool, device) -> None:
        """Refuse a request whose one step cannot fit in memory, before allocating anything."""
        needed = estimate_step_bytes(batch, length, window, self.config.vocab_size, sampling, cfg)
        available = _available_bytes(device)
        if available is not None and needed > available:
            raise ValueError(
                f"The request needs about {needed / 2**30:.1f} GiB per step (batch {batch}, canvas {length}), more "
                f"than {device} has ({available / 2**30:.1f} GiB): lower max_new_tokens or the batch size."
            )

    @staticmethod
    def _record(state, config, out: StepOutput, view: StepView, batch: int) -> None:
        if config.output_history:
            state.recorded.setdefault("history", []).append(state.x.clone())
        if not (config.output_scores or config.output_logits):
            return
        state.recorded.setdefault("score_columns", []).append(view.window)
        for wanted, values, name in ((config.output_scores, out.scores, "scores"),
                                     (config.output_logits, out.logits, "logits")):  # fmt: skip
            if wanted:
                full = values.new_full((batch, *values.shape[1:]), -torch.inf)
                full[state.rows] = values
                state.recorded.setdefault(name, []).append(full)

    def _compiled_step(self, mode):
        """The whole step compiled once per model and mode: `fullgraph=True` (a graph break is an error),
        `dynamic=True` (one graph for every block offset and batch size; each sampler configuration compiles once)."""
        compiled = self.__dict__.setdefault("_llada_compiled_steps", {})
        if mode not in compiled:
            options = {} if mode in (True, "default") else {"mode": mode}
            step = torch.compile(DiffusionSampler.step, fullgraph=True, dynamic=True, **options)
            graphs = mode == "reduce-overhead"

            def run(*args):
                with torch._dynamo.config.patch(recompile_limit=64):  # several sampler configurations per model
                    if graphs:  # CUDA graphs reuse their output buffers: mark each step, keep copies
                        torch.compiler.cudagraph_mark_step_begin()
                        return StepOutput(*(t.clone() if t is not None else None for t in step(*args)))
                    return step(*args)

            compiled[mode] = run
        return compiled[mode]


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


class _Stream:
    """Feeds a transformers streamer: the prompt first, then each newly final prefix (no mask before it)."""

    def __init__(self, streamer, input_ids: torch.LongTensor, prompt_len: int, mask_id: int) -> None:
        if input_ids.shape[0] != 1:
            raise ValueError("Streaming supports batch size 1 only.")
        self.streamer, self.prompt_len, self.mask_id, self.sent = streamer, prompt_len, mask_id, 0
        streamer.put(input_ids.cpu())

    def update(self, x: torch.LongTensor, draft: bool = True) -> None:
        answer = x[0, self.prompt_len :]
        masked = (answer == self.mask_id).nonzero()
        final = int(masked[0]) if masked.numel() else answer.shape[0]
        if draft and hasattr(self.streamer, "put_draft"):
            self.streamer.put_draft(answer.cpu())
        if final > self.sent:
            self.streamer.put(answer[self.sent : final].cpu())
            self.sent = final

    def finish(self, x: torch.LongTensor) -> None:
        self.update(x, draft=False)
        self.streamer.end()
