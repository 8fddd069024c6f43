"""A small tested hub of configs: `list_hub_configs()` and `load_hub_config(name, **overrides)`.

Names are the file paths under `hub_configs/` without `.json`, e.g. `GSAI-ML/LLaDA-8B-Instruct` (the official
`config.json`, unchanged), `inclusionAI/LLaDA2.0-mini` or `llada_hf/tiny`. LLaDA2.1-mini/flash have LLaDA2.0's
`config.json`; only their sampler differs, so they also have a generation config, `hub_configs/generation/<name>.json`
(`load_hub_generation_config(name)`; `sampler="llada2.1"`, token editing at the official defaults).
"""

import difflib
import json
from importlib import resources
from pathlib import Path

from .modeling import LLaDA2MoeConfig, LLaDAConfig

# model_type -> config class ("llada" also covers LLaDA-MoE: `LLaDAConfig.from_dict` builds an `LLaDAMoEConfig`).
_CONFIG_CLASSES = {"llada": LLaDAConfig, "llada2_moe": LLaDA2MoeConfig}


def _config_root() -> Path:
    return Path(str(resources.files("llada_hf.hub_configs")))


def list_hub_configs() -> list[str]:
    """All config names, sorted (`"GSAI-ML/LLaDA-8B-Base"`, ..., `"llada_hf/tiny"`): files `org/name.json` (other
    data beside them, such as `lm_eval_presets.json`, is not a config)."""
    root = _config_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/*.json"))


def hub_config_path(name: str) -> Path:
    """Path of a config file; unknown names raise `ValueError` naming the closest known ones."""
    names = list_hub_configs()
    if name not in names:
        lowered = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.3)
        hint = f" Did you mean: {', '.join(lowered[c] for c in close)}?" if close else ""
        raise ValueError(f"Unknown hub config {name!r}.{hint} Known: {', '.join(names)}")
    return _config_root() / f"{name}.json"


def load_hub_config(name: str, **overrides) -> LLaDAConfig | LLaDA2MoeConfig:
    """The named config as its config class (`LLaDAConfig`, `LLaDA2MoeConfig`, by `model_type`); `overrides`
    (standard or official key names) replace file values. An unknown override key is refused (a typo such as
    `hidden_sizee=8` would otherwise become a new attribute the model never reads)."""
    config_dict = json.loads(hub_config_path(name).read_text())
    config_class = _CONFIG_CLASSES[config_dict.get("model_type", "llada")]
    if overrides:
        _check_override_keys(name, config_class.from_dict(dict(config_dict)), config_dict, overrides)
    aliases = config_class.attribute_map
    for key in overrides:  # an override wins over the file's value under either name
        for alias, standard in aliases.items():
            if key == standard:
                config_dict.pop(alias, None)
            elif key == alias:
                config_dict.pop(standard, None)
    config_dict.update(overrides)
    return config_class.from_dict(config_dict)


def load_hub_generation_config(name: str):
    """The generation config published beside a hub config (`LLaDA2GenerationConfig`); `ValueError` if it has none."""
    from .generation.generation_llada2 import LLaDA2GenerationConfig

    hub_config_path(name)  # an unknown name: the error with close names
    path = _config_root() / "generation" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Hub config {name!r} has no generation config (its model's generation_config.json rules).")
    return LLaDA2GenerationConfig(**json.loads(path.read_text()))


def _check_override_keys(name: str, config, config_dict: dict, overrides: dict) -> None:
    """Overrides must be keys the config (its class, standard or official alias names) or the file knows."""
    known = set(config.to_dict()) | set(type(config).attribute_map) | set(config_dict)
    known |= {key for key in vars(type(config)).get("__annotations__", {})}
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(
            f"load_hub_config({name!r}): unknown config key {', '.join(hints)}. Accepted keys: the fields of "
            f"{type(config).__name__} ({', '.join(sorted(k for k in known if not k.startswith('_')))})."
        )
