"""The one way the measurements time training: the job's real step on its real batches.

    timer = timing.StepTimer(job)
    timer.warm_up(5)              # tracing, autotuning, the pipeline filling up: not timed
    seconds = timer.window(10)    # 10 steps, timed as one window

The throughput matrix times several windows, the estimate one, and a time-to-accuracy race one
window per step (its clock stops while it evaluates).
"""

import time

from trainer import loop


class StepTimer:
    """Runs `job`'s training step (trainer.loop's) on its batches from `first_step` on."""

    def __init__(self, job, first_step=0):
        self._step = loop.train_step(job)
        self._stream = loop.batches(job, first_step)

    def warm_up(self, steps):
        """Runs `steps` steps, untimed, each finished before the next starts."""
        for _ in range(steps):
            float(self._step(next(self._stream))["loss"])

    def window(self, steps):
        """Runs `steps` steps (at least one); returns the seconds they took."""
        started = time.perf_counter()
        for _ in range(steps):
            loss = self._step(next(self._stream))["loss"]
        # Steps run asynchronously: the window ends when its last step has, i.e. when its loss
        # can be read.
        float(loss)
        return time.perf_counter() - started
