"""A training job's folder: its checkpoints, and the run description that later commands read.

    MODEL_DIR/
      run.json                  what was trained (model, task, records, classes, recipe, ...)
      checkpoints/ckpt-<step>.* tf.train.CheckpointManager's files; "checkpoint" names the latest
      metrics.jsonl, tensorboard/

A checkpoint holds the model (with its mean image and dropout seeds), the optimizer's state
and the step. tf.train.CheckpointManager writes a checkpoint's files before it rewrites the
"checkpoint" index, so a job killed mid-save leaves the previous checkpoint as the latest: a
half-written one is never taken for a good one.
"""

import json
import os

import numpy as np
import tensorflow as tf

from input import shards
from trainer import models

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
KEEP = 3  # checkpoints kept; the latest is enough to resume, a few more help inspect a run


class Checkpoints:
    """Saves and restores one job's checkpoints, at the step the loop gives.

    Args:
      checkpoint: a tf.train.Checkpoint(model=..., optimizer=..., step=...).
      model_dir: the job's folder.
      write_dir: where this process saves (the strategy's choice), or None: it never saves.
    """

    def __init__(self, checkpoint, model_dir, write_dir, keep=KEEP):
        self.checkpoint = checkpoint
        self.directory = checkpoint_dir(model_dir)
        self._manager = None
        if write_dir is not None:
            self._manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=keep,
                                                       checkpoint_name="ckpt")
        self._last_saved = None

    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def restore(self):
        """Restores the latest checkpoint, if any; returns its path or None."""
        path = self.latest()
        if path:
            # expect_partial: the preemption handler may have added its own counter.
            self.checkpoint.restore(path).expect_partial()
            self._last_saved = int(self.checkpoint.step.numpy())
        return path

    def save(self, step):
        """Saves at `step` unless this process never saves or `step` is already saved."""
        if self._manager is None or self._last_saved == step:
            return None
        path = self._manager.save(checkpoint_number=step)
        self._last_saved = step
        return path


class CheckpointMismatch(ValueError):
    pass


def load_model(run, path):
    """The model of the job described by `run` (its run.json) with the weights of checkpoint
    `path`; a checkpoint of another model or task is a clear CheckpointMismatch. Call it under
    the strategy's scope when there is one."""
    # The mean image is a weight: built as zeros of its shape, filled by the restore.
    model = models.build(run["model"], len(run["class_names"]),
                         np.zeros(run["mean_shape"], np.float32), crop_size=run["crop_size"])
    try:
        tf.train.Checkpoint(model=model).restore(path).expect_partial() \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise CheckpointMismatch(f"{path} is not a checkpoint of a {run['model']} model for "
                                 f"{run['task']} ({len(run['class_names'])} classes): "
                                 f"{str(error).splitlines()[0]}") from error
    return model


def checkpoint_dir(model_dir):
    return os.path.join(model_dir, CHECKPOINTS)


def write_run(model_dir, run):
    """Writes run.json atomically (evaluate and export read it)."""
    os.makedirs(model_dir, exist_ok=True)
    shards.replace_atomically(os.path.join(model_dir, RUN_FILE),
                              lambda f: f.write(json.dumps(run, indent=2, sort_keys=True)))


def read_run(model_dir):
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a folder written by "
                                f"trainer.main")
    with open(path) as f:
        return json.load(f)
