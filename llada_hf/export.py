"""Exports: back to the official GSAI-ML layout, and to a self-contained `trust_remote_code=True` checkpoint."""

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .generation import generation_llada
from .modeling import (
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


def _native_to_official_rules() -> list[tuple[re.Pattern, str]]:
    """Invert `OFFICIAL_KEY_MAPPING` (official regex -> native name) into native regex -> official name."""
    rules = []
    for official, native in OFFICIAL_KEY_MAPPING.items():
        pattern = "^" + re.escape(native).replace(re.escape(r"\1"), r"(\d+)")
        replacement = official.removeprefix("^").replace(r"(\d+)", r"\1").replace("\\.", ".")
        rules.append((re.compile(pattern), replacement))
    return rules


def official_state_dict(model: LLaDAModelLM) -> dict[str, torch.Tensor]:
    """The model's weights under the official key names (`model.transformer.blocks.{i}.q_proj.weight`, ...)."""
    rules = _native_to_official_rules()
    renamed = {}
    for key, tensor in model.state_dict().items():
        for pattern, replacement in rules:
            if pattern.search(key):
                key = pattern.sub(replacement, key, count=1)
                break
        else:
            raise KeyError(f"No official name for weight {key!r}")
        renamed[key] = tensor.detach().contiguous().cpu()
    return renamed


def official_config_dict(config) -> dict:
    """An official-format (OLMo-style, 46-key) config.json dict for `config`'s shape."""
    from .hub import hub_config_path

    official = json.loads(hub_config_path("GSAI-ML/LLaDA-8B-Base").read_text())
    for official_key, field in _OFFICIAL_CONFIG_FIELDS.items():
        official[official_key] = getattr(config, field)
    return official


def export_official(model: LLaDAModelLM, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` in the official layout, for tools that expect the GSAI-ML files.

    The official remote code reads it with `trust_remote_code=True`; `llada_hf` reads it natively.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(official_config_dict(model.config), indent=2, sort_keys=True))
    save_file(official_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.generation_config.save_pretrained(out_dir)
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
        tokenizer.save_pretrained(out_dir)
    return out_dir
