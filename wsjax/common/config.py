"""Config checks and persistence shared by every stage."""
import json
import os

import ml_collections

from wsjax.common import io


class ConfigError(ValueError):
    """A bad config field or a missing/corrupt input, stated in one sentence."""


def require(cond, message):
    if not cond:
        raise ConfigError(message)


def stage_dir(workdir, stage):
    path = os.path.join(workdir, stage)
    os.makedirs(path, exist_ok=True)
    return path


def save(config, workdir, stage):
    """Writes the resolved config to workdir/<stage>/config.json (read by later stages)."""
    path = os.path.join(stage_dir(workdir, stage), "config.json")
    io.write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))
    return path


def load(workdir, stage):
    """Reads the config an earlier stage ran with; a clear error if that stage never ran."""
    path = os.path.join(workdir, stage, "config.json")
    require(os.path.exists(path),
            f"{path} not found: run the '{stage}' stage with this --workdir first")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
