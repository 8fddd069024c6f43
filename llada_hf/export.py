"""Exports: back to the official GSAI-ML layout, and to a self-contained `trust_remote_code=True` checkpoint."""

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .generation import generation_llada
from .modeling import OFFICIAL_KEY_MAPPING, LLaDAConfig, LLaDAModelLM, configuration_llada, modeling_llada

REMOTE_CODE_FILES = (configuration_llada, modeling_llada, generation_llada)
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    "AutoModelForMaskedLM": "modeling_llada.LLaDAModelLM",
}
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


def export_remote_code(model: LLaDAModelLM, out_dir: str | Path, tokenizer=None) -> Path:
    """Save a checkpoint that loads with `trust_remote_code=True` where `llada_hf` is not installed.

    The three hub files are copied flat next to the weights (remote code cannot import from subfolders) and
    `auto_map` points the Auto classes at them.
    """
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    for module in REMOTE_CODE_FILES:
        shutil.copyfile(module.__file__, out_dir / Path(module.__file__).name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = dict(REMOTE_AUTO_MAP)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
