"""The whole pipeline, zoo to report, each stage with its own sub-config of `configs/demo.py`."""
import time

from absl import logging

from wsjax.stages import run_stage, validate


def check_config(config):
    """Every stage's config, before the first one starts."""
    for stage in config.stages:
        validate(config[stage])


def run(config, workdir):
    timings = {}
    for stage in config.stages:
        start = time.perf_counter()
        logging.info("demo: stage %s", stage)
        run_stage(config[stage], workdir, overwrite=bool(config.get("overwrite", False)))
        timings[stage] = round(time.perf_counter() - start, 1)
        logging.info("demo: stage %s done in %.1f s", stage, timings[stage])
    print("demo stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return timings
