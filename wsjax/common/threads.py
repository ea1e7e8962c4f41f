"""Independent work items run a few at a time in threads. XLA runs without the GIL, and on
XLA:CPU one small network's ops keep about one core busy, so two items at once fill 2 cores."""
import concurrent.futures

import jax

from wsjax.common import distributed
from wsjax.common.config import require


def workers(config, num_devices=1):
    """config.workers, or (0 = auto) 2 on CPU with one device and one process, else 1. Under
    several processes items run one at a time (the zoo's saves need every process, in order)."""
    n = int(config.get("workers", 0))
    require(n <= 1 or not distributed.is_multiprocess(),
            f"config.workers={n}: under several processes work runs one item at a time (every "
            "process must take part in each zoo save, in the same order); use 0 or 1")
    if n:
        return n
    single = num_devices == 1 and not distributed.is_multiprocess()
    return 2 if jax.default_backend() == "cpu" and single else 1


def in_threads(fn, items, workers):
    """[fn(item) for item in items], `workers` at a time in threads. On an error or Ctrl-C nothing
    new starts; the running items finish."""
    if workers <= 1:
        return [fn(item) for item in items]
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
