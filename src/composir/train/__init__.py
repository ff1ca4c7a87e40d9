"""Training: data, the loop, metrics logs. Run configs, checkpoints and model building live in
``composir.runs`` (re-exported here: ``composir.train.load_run`` and friends keep working)."""

from composir.runs import RunConfig, build_from_config, load_config, load_run
from composir.train.loop import train

__all__ = ["RunConfig", "build_from_config", "load_config", "load_run", "train"]
