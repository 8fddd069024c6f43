"""Exports: back to the official GSAI-ML / inclusionAI layout, and to a self-contained `trust_remote_code=True`
checkpoint. Both merge a LoRA adapter first and write the tokenizer (with its chat template) when one is given."""

import copy
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .generation import generation_llada
from .modeling import (
    LLADA2_OFFICIAL_KEY_MAPPING,
    OFFICIAL_KEY_MAPPING,
    LLaDA2MoeModelLM,
    LLaDAConfig,
    LLaDAModelLM,
    LLaDAMoEModelLM,
    configuration_llada,
    modeling_llada,
)

REMOTE_CODE_FILES = (configuration_llada, modeling_llada, generation_llada)
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    "AutoModelForMaskedLM": "modeling_llada.LLaDAModelLM",
}
# Per family: (config file.class, model file.class) of the auto_map; the files they import come along.
REMOTE_ENTRY_POINTS = {
    LLaDAModelLM: ("configuration_llada.LLaDAConfig", "modeling_llada.LLaDAModelLM"),
    LLaDA2MoeModelLM: ("configuration_llada2.LLaDA2MoeConfig", "modeling_llada2.LLaDA2MoeModelLM"),
    LLaDAMoEModelLM: ("configuration_llada_moe.LLaDAMoEConfig", "modeling_llada_moe.LLaDAMoEModelLM"),
}
_SOURCE_DIRS = (Path(modeling_llada.__file__).parent, Path(generation_llada.__file__).parent)
# Official config keys filled from the model config (the other official keys keep the 8B file's values): the config's
# own aliases, plus the keys the official file spells like transformers does.
_OFFICIAL_CONFIG_FIELDS = {
    **LLaDAConfig.attribute_map,
    **{key: key for key in ("vocab_size", "embedding_size", "rope_theta", "rms_norm_eps")},
    **{key: key for key in ("eos_token_id", "pad_token_id", "mask_token_id")},
}
# The official LLaDA-MoE config keys (the arguments of its config class; the 7B config.json was not available).
_LLADA_MOE_OFFICIAL_KEYS = (
    "architectures", "attention_bias", "attention_dropout", "bos_token_id", "clip_qkv", "dense_intermediate_size",
    "dtype", "eos_token_id", "expert_intermediate_size", "hidden_act", "hidden_size", "initializer_range",
    "mask_token_id", "max_position_embeddings", "model_type", "moe_layer_freq", "moe_router_enable_expert_bias",
    "moe_router_score_function", "norm_topk_prob", "num_attention_heads", "num_experts", "num_experts_per_tok",
    "num_hidden_layers", "num_key_value_heads", "output_router_logits", "pad_token_id", "partial_rotary_factor",
    "qk_layernorm", "rms_norm_eps", "rope_scaling", "rope_theta", "routed_scaling_factor", "router_aux_loss_coef",
    "router_num_group", "router_topk_group", "shared_expert_intermediate_size", "tie_word_embeddings", "use_cache",
    "vocab_size",
)  # fmt: skip
_LLADA_MOE_AUTO_MAP = {
    "AutoConfig": "configuration_lladamoe.LLaDAConfig",
    "AutoModel": "modeling_lladamoe.LLaDAMoEModel",
    "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
}
# The official auto_map names files our hub files do not have (LLaDA2.0, LLaDA-MoE): one-line modules that re-export
# our classes under those names. LLaDA-8B's official names are our files' own.
_OFFICIAL_SHIMS = {
    LLaDA2MoeModelLM: {
        "configuration_llada2_moe": "from .configuration_llada2 import LLaDA2MoeConfig",
        "modeling_llada2_moe": "from .modeling_llada2 import LLaDA2MoeModel, LLaDA2MoeModelLM",
    },
    LLaDAMoEModelLM: {
        "configuration_lladamoe": "from .configuration_llada_moe import LLaDAMoEConfig as LLaDAConfig",
        "modeling_lladamoe": "from .modeling_llada_moe import LLaDAMoEModel, LLaDAMoEModelLM",
    },
}
_SHIM_HEADER = '"""llada_hf classes under the module name of this checkpoint\'s official auto_map."""\n\n'


def merged_model(model):
    """`model` without adapters: a peft-wrapped model is merged into a copy (the caller's model keeps its adapter).

    Exporting LoRA keys would give engines names they do not know and drop the fine-tune silently.
    """
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        return copy.deepcopy(model).merge_and_unload()
    if any("lora_" in key for key in model.state_dict()):
        raise ValueError("The model carries LoRA weights outside a PeftModel: merge them (merge_and_unload) first")
    return model


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """`tokenizer.save_pretrained` (chat template included) minus the loading flags transformers 5.25 writes into
    tokenizer_config.json for a tokenizer read from a local folder (`is_local`, `local_files_only`)."""
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if {"is_local", "local_files_only"} & saved.keys():
            cleaned = {key: value for key, value in saved.items() if key not in ("is_local", "local_files_only")}
            path.write_text(json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n")


def _family(model) -> type:
    for model_class in (LLaDAMoEModelLM, LLaDA2MoeModelLM, LLaDAModelLM):
        if isinstance(model, model_class):
            return model_class
    raise TypeError(f"No export for {type(model).__name__}: expected a LLaDA-8B, LLaDA-MoE or LLaDA2.0 model")


def _native_to_official_rules(mapping: dict[str, str] = OFFICIAL_KEY_MAPPING) -> list[tuple[re.Pattern, str]]:
    """Invert a conversion mapping (official regex -> native name) into native regex -> official name."""
    rules = []
    for official, native in mapping.items():
        pattern = "^" + re.escape(native).replace(re.escape(r"\1"), r"(\d+)")
        replacement = official.removeprefix("^").replace(r"(\d+)", r"\1").replace("\\.", ".")
        rules.append((re.compile(pattern), replacement))
    return rules


def official_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights under the official key names (LLaDA-8B `model.transformer.blocks.{i}.q_proj.weight`,
    LLaDA2.0 `model.layers.{i}.attention.query_key_value.weight`, ...; LLaDA-MoE's are our own)."""
    family = _family(model)
    mapping = {LLaDAModelLM: OFFICIAL_KEY_MAPPING, LLaDA2MoeModelLM: LLADA2_OFFICIAL_KEY_MAPPING}.get(family, {})
    rules = _native_to_official_rules(mapping)
    renamed = {}
    tied = getattr(model.config, "tie_word_embeddings", False)  # the official files then have no output matrix
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        for pattern, replacement in rules:
            if pattern.search(key):
                key = pattern.sub(replacement, key, count=1)
                break
        else:
            if family is LLaDAModelLM:  # every LLaDA-8B weight is renamed: a miss is a weight the format lacks
                raise KeyError(f"No official name for weight {key!r}")
        renamed[key] = tensor.detach().contiguous().cpu()
    return renamed


def official_config_dict(config) -> dict:
    """The official config.json dict for `config`: LLaDA-8B's OLMo-style 46 keys, LLaDA2.0's hub keys (plus dtype,
    eos and mask ids), LLaDA-MoE's config-class keys; each with the official `auto_map`."""
    from .hub import hub_config_path

    if config.model_type == "llada2_moe":
        official = json.loads(hub_config_path("inclusionAI/LLaDA2.0-mini").read_text())
        values = config.to_dict()
        keys = [*official, "dtype", "eos_token_id", "mask_token_id"]
        return {key: values.get(key, official.get(key)) for key in keys} | {"auto_map": official["auto_map"]}
    if "dense_intermediate_size" in config.to_dict():  # LLaDA-MoE (model_type "llada", like LLaDA-8B)
        values = config.to_dict()
        return {key: values.get(key) for key in _LLADA_MOE_OFFICIAL_KEYS} | {"auto_map": dict(_LLADA_MOE_AUTO_MAP)}
    official = json.loads(hub_config_path("GSAI-ML/LLaDA-8B-Base").read_text())
    for official_key, field in _OFFICIAL_CONFIG_FIELDS.items():
        official[official_key] = getattr(config, field)
    return official


def export_official(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Write the official layout (config.json, model.safetensors, generation_config.json) that SGLang, dInfer and
    llama.cpp's converter read; plus the tokenizer (chat template included) when given.

    The official `auto_map` is kept and its files written: our hub files (LLaDA-8B's have the official names; for
    LLaDA2.0 / LLaDA-MoE one-line modules re-export our classes under the official module names), which read the
    official key names, so `trust_remote_code=True` loads the export where `llada_hf` is not installed.
    """
    model = merged_model(model)
    family = _family(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = official_config_dict(model.config)
    if "dtype" in config:  # the weights' dtype, which `model.to(dtype)` does not write into the config
        config["dtype"] = str(model.dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(official_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.generation_config.save_pretrained(out_dir)
    shims = _OFFICIAL_SHIMS.get(family, {})
    for name, line in shims.items():
        (out_dir / f"{name}.py").write_text(_SHIM_HEADER + line + "  # noqa: F401\n")
    native = {entry.split(".")[0] for entry in REMOTE_ENTRY_POINTS[family]}
    for path in remote_code_files(native):
        shutil.copyfile(path, out_dir / path.name)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)
    return out_dir


def remote_code_files(entry_modules) -> list[Path]:
    """The hub files of these modules and, transitively, of the sibling modules they import (`from .name import`)."""
    found, todo = {}, list(entry_modules)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = next((d / f"{name}.py" for d in _SOURCE_DIRS if (d / f"{name}.py").exists()), None)
        if path is None:
            raise FileNotFoundError(f"No hub file for the sibling module {name!r}")
        found[name] = path
        todo.extend(re.findall(r"^from \.(\w+) import", path.read_text(), flags=re.MULTILINE))
    return sorted(found.values())


def remote_auto_map(model) -> dict:
    """The `auto_map` of `model`'s family (LLaDA-8B, LLaDA2.0, LLaDA-MoE)."""
    for model_class, (config_entry, model_entry) in REMOTE_ENTRY_POINTS.items():
        if isinstance(model, model_class):
            auto_map = {"AutoConfig": config_entry}
            auto_map.update(
                {auto: model_entry for auto in ("AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM")}
            )
            return auto_map
    raise TypeError(f"No remote-code export for {type(model).__name__}")


def export_remote_code(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Save a checkpoint that loads with `trust_remote_code=True` where `llada_hf` is not installed.

    The family's hub files (LLaDA-8B: configuration_/modeling_/generation_llada.py; LLaDA2.0 adds
    configuration_/modeling_/generation_llada2.py; LLaDA-MoE adds configuration_/modeling_llada_moe.py and the LLaDA2
    files it reuses) are copied flat next to the weights (remote code cannot import from subfolders) and `auto_map`
    points the Auto classes at them.
    """
    model = merged_model(model)
    out_dir = Path(out_dir)
    auto_map = remote_auto_map(model)
    model.save_pretrained(out_dir)
    entries = {entry.split(".")[0] for entry in auto_map.values()}
    for path in remote_code_files(entries):
        shutil.copyfile(path, out_dir / path.name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = auto_map
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)
    return out_dir
