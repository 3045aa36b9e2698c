"""OmegaConf resolvers used by conf/ (registered when the entry points import this module)."""

from omegaconf import OmegaConf

# hparams_search: Optuna's direction follows the model's monitor mode (val/rougeL max, val/loss min)
OmegaConf.register_new_resolver("optuna_direction", lambda mode: {"max": "maximize", "min": "minimize"}[mode],
                                replace=True)
