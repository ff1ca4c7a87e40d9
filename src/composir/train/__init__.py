"""Training: config, data, loop, checkpoints."""

from composir.train.config import RunConfig, load_config
from composir.train.loop import build_from_config, load_run, train

__all__ = ["RunConfig", "build_from_config", "load_config", "load_run", "train"]
