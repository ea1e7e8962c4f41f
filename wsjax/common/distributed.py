"""Several processes (TPU pod hosts, GPU hosts) with JAX's own distributed runtime.

`initialize` (called by launch.main before any JAX work) joins this process to the others. Every
process then runs the same command; `jax.devices()` lists every process's devices. The zoo stage
trains across all of them (wsjax.zoo.stage: each process steps the models of its own devices); every
other stage runs on process 0 while the others wait (wsjax.stages.run_stage). Files every process
would write the same (manifests, logs, stage locks and fingerprints) are written by process 0 only;
`workdir` must be one filesystem that every host sees (NFS, Filestore, gcsfuse).
"""
import itertools
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from wsjax.common.config import ConfigError

# How long a process waits for the others at a barrier: process 0 may run a whole single-process
# stage (an AE trained for hours) while the others wait for it.
WAIT_TIMEOUT_S = 48 * 3600
# How long a CPU process waits at a collective for the others (gloo's default, 30 s, is shorter
# than the gap between processes compiling the zoo's step, minutes on a busy CPU host).
CPU_COLLECTIVE_TIMEOUT_S = 1800
_barriers = itertools.count()


def initialize(coordinator_address=None, num_processes=None, process_id=None):
    """`jax.distributed.initialize` with these arguments; with none of them JAX detects a TPU
    pod, Slurm or MPI environment, and a lone process (none detected) is left as it is."""
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    # CPU processes exchange arrays through gloo (TCP); GPU and TPU use their own interconnect.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_collective_timeout_seconds" not in flags:  # read when the backend starts
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_collective_timeout_seconds={CPU_COLLECTIVE_TIMEOUT_S}"
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:  # JAX found neither the arguments nor a cluster environment
        if explicit:
            raise ConfigError(f"jax.distributed.initialize refused --coordinator_address="
                              f"{coordinator_address} --num_processes={num_processes} --process_id="
                              f"{process_id} ({e}): pass all three, e.g. --coordinator_address="
                              "10.0.0.1:1234 --num_processes=2 --process_id=0") from None
        logging.info("jax.distributed: no cluster environment detected; one process")
        return
    if is_primary():
        print(f"jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices "
              f"({jax.local_device_count()} per process)")


def is_multiprocess():
    return jax.process_count() > 1


def is_primary():
    """True on process 0: the one that writes files every process would write the same."""
    return jax.process_index() == 0


def barrier(name):
    """Waits until every process has reached the barrier `name` (the distributed runtime's
    coordination service: no device collective, so no collective timeout while waiting)."""
    if not is_multiprocess():
        return
    import orbax.checkpoint as ocp  # its barrier wraps the JAX distributed client's, with a timeout
    ocp.multihost.get_barrier_sync_fn()(key=f"wsjax:{next(_barriers)}:{name}",
                                       timeout_ms=WAIT_TIMEOUT_S * 1000)


def run_on_primary(name, fn):
    """`fn()` on process 0 while the others wait for it; its result on process 0, None on the
    others, which raise a ConfigError if it failed there (process 0 raises its own error)."""
    if not is_multiprocess():
        return fn()
    result, error = None, None
    if is_primary():
        try:
            result = fn()
        except BaseException as e:  # the others must still be released from the barrier
            error = e
    barrier(name)
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if error is not None:
        raise error
    if failed:
        raise ConfigError(f"{name} failed on process 0: see its error")
    return result
