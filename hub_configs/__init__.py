"""Config files of the published LLaDA checkpoints (verbatim official `config.json`) and of the package's tiny models.

Look them up with `llada_hf.hub.list_hub_configs()` / `llada_hf.hub.load_hub_config(name)`.
"""
