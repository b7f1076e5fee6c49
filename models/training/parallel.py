"""Run independent trainings (CV folds, held-out sites) at once, each in its own process.

Small convolutions on a batch of 16 keep two cores only partly busy from one process:
five one-thread processes trained five folds in 0.64 of the time one two-thread process
took for them one after another (docs/experiments.md).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)


def _limit_threads(threads: int) -> None:
    """A worker's TensorFlow threads, set before it runs any operation."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_jobs(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int,
             names: Sequence[str]) -> list[Any]:
    """``[fn(*c) for c in calls]``, ``jobs`` at a time in fresh processes sharing the
    cores (one TensorFlow thread each when jobs outnumber cores), or in this process
    when ``jobs`` is 1. A failing call stops the others and raises its error."""
    jobs = max(1, min(jobs, len(calls)))
    if jobs == 1:
        return [fn(*c) for c in calls]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spawn = multiprocessing.get_context("spawn")  # a fresh TensorFlow in each process
    pool = ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_limit_threads,
                               initargs=(max(1, (cores or 1) // jobs),))
    futures = {pool.submit(fn, *c): i for i, c in enumerate(calls)}
    results: list[Any] = [None] * len(calls)
    try:
        for done in as_completed(futures):
            i = futures[done]
            try:
                results[i] = done.result()
            except BrokenProcessPool as exc:
                raise ChildProcessError(
                    f"{names[i]}: its process died ({exc}): out of memory? Each training "
                    "process takes about 1.5 GB; try fewer --jobs") from None
            logger.info("%s done", names[i])
    except BaseException:
        for process in list((pool._processes or {}).values()):  # no public way to stop
            process.terminate()                                  # trainings of minutes
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results
