"""The one way the measurements time training: the job's real training call on its real feed.

    timer = timing.StepTimer(job)
    timer.warm_up(5)              # tracing, autotuning, the pipeline filling up: not timed
    seconds = timer.window(10)    # 10 steps, timed as one window

A window runs its steps in calls of the job's --steps_per_call (trainer.loop.call_length), as
the training loop does. The throughput matrix times several windows, the estimate one, and a
time-to-accuracy race one window per step (its clock stops while it evaluates).
"""

import time

import tensorflow as tf

from trainer import loop


class StepTimer:
    """Runs `job`'s training call (trainer.loop's) on its feed from `first_step` on."""

    def __init__(self, job, first_step=0):
        self._call, self._state = loop.train_call(job, first_step)
        self._steps_per_call = job.config.steps_per_call
        self.step = first_step

    def _run(self, steps):
        end, sums = self.step + steps, None
        while self.step < end:
            length = loop.call_length(self.step, end, self._steps_per_call, ())
            sums = self._call(self._state, tf.constant(self.step, tf.int64),
                              tf.constant(length, tf.int64))
            self.step += length
        # Calls run asynchronously: the steps have ended when their sums can be read.
        return float(sums["loss"])

    def warm_up(self, steps):
        """Runs `steps` steps, untimed."""
        if steps:
            self._run(steps)

    def window(self, steps):
        """Runs `steps` steps (at least one); returns the seconds they took."""
        started = time.perf_counter()
        self._run(steps)
        return time.perf_counter() - started
