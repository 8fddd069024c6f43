"""Config files of the published LLaDA checkpoints (verbatim official `config.json`) and of the package's tiny models.

Look them up with `llada_hf.hub.list_hub_configs()` / `llada_hf.hub.load_hub_config(name)`. Beside them,
`lm_eval_presets.json`: the lm-eval backend's per-task settings (`llada_hf.lm_eval_backend.PRESETS`).
"""
