"""Batches prepared ahead in worker threads, so that decoding and augmentation overlap the training step.

A step-indexed loader such as :meth:`mmtok.data.video_clips.RandomClips.batch` gives the batch of step ``s`` as a
pure function of ``(seed, s)``, so it needs no sampler state and no worker processes: a thread pool can compute the
next steps' batches while the current step trains, and the batches are exactly those of the plain loop. Threads
suffice because the work is FFmpeg scaling and numpy arithmetic, which release the GIL.

On a GPU this is what keeps the accelerator fed: a batch of eight augmented 17x64x64 clips costs ~50 ms of one CPU
core, more than a training step of the 64x64 video tokenizer on the GPU (on one H200, with 12 threads, that
tokenizer trained at 20 steps/s). On a CPU-only machine leave it off: the worker threads take cores from torch's
own threads, which slow down far more than the data work saves.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Optional, TypeVar

__all__ = ["StepPrefetcher"]

T = TypeVar("T")


class StepPrefetcher(Generic[T]):
    """``get(step)`` returns ``make(step)``, computed ahead by ``workers`` threads for the steps ``start, start + 1,
    ... < stop``, at most ``depth`` (default ``2 * workers``) steps ahead of the last one asked for.

    ``workers=0`` computes each batch when it is asked for (the plain loop). A step asked out of order (not the next
    one prefetched) is computed in the calling thread. An exception raised by ``make`` reaches the caller of ``get``
    for that step. Use it as a context manager, or call :meth:`close`, so that the threads stop with the loop.
    """

    def __init__(self, make: Callable[[int], T], *, start: int, stop: int, workers: int = 2,
                 depth: Optional[int] = None):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.make, self.stop = make, stop
        self.depth = depth or 2 * max(workers, 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="prefetch") if workers > 0 else None
        self._pending: dict[int, Future] = {}
        self._next = start            # the next step to submit

    def get(self, step: int) -> T:
        if self._pool is None:
            return self.make(step)
        if step < self._next and step not in self._pending:
            return self.make(step)    # asked out of order: nothing was prepared for it
        self._next = max(self._next, step)
        while self._next < min(step + self.depth, self.stop):
            self._pending[self._next] = self._pool.submit(self.make, self._next)
            self._next += 1
        future = self._pending.pop(step, None)
        for old in [s for s in self._pending if s < step]:    # steps skipped over are not waited for
            self._pending.pop(old).cancel()
        return future.result() if future is not None else self.make(step)

    def close(self) -> None:
        """Stop the threads; batches not yet started are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()

    def __enter__(self) -> "StepPrefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
