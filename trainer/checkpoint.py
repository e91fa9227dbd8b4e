"""A training job's folder: its checkpoints, and the run description that later commands read.

    MODEL_DIR/
      run.json                  what was trained (model, task, records, classes, recipe, ...)
      checkpoints/ckpt-<step>.* tf.train.CheckpointManager's files; "checkpoint" names the latest
      metrics.jsonl, tensorboard/

A checkpoint holds the model (with its mean image and dropout seeds), the optimizer's state
and the step. tf.train.CheckpointManager writes a checkpoint's files before it rewrites the
"checkpoint" index, so a job killed mid-save leaves the previous checkpoint as the latest: a
half-written one is never taken for a good one. What a failed or killed save leaves (TensorFlow
writes into `ckpt-<step>_temp/` first; the files of a step the index does not name) is removed:
after a failed save at once, after a killed one by the next run's chief.
"""

import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf

from input import shards
from launch import entry
from trainer import models

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
KEEP = 3  # checkpoints kept; the latest is enough to resume, a few more help inspect a run
PREFIX = "ckpt"
_TEMPORARY = re.compile(rf"{PREFIX}-\d+_temp")  # TensorFlow's folder of a save in progress


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
        self._write_dir = write_dir
        if write_dir is not None:
            remove_leftovers(write_dir)
            self._manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=keep,
                                                       checkpoint_name=PREFIX)
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
        try:
            path = self._manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            remove_leftovers(self._write_dir, failed_step=step)
            raise entry.Failure(f"{self._write_dir}: checkpoint of step {step} not saved: "
                                f"{_cause(error)}; the last good checkpoint, "
                                f"{self.latest()}, is kept") from None
        self._last_saved = step
        return path


def remove_leftovers(directory, failed_step=None):
    """Removes what a failed or killed save left in `directory`: TensorFlow's temporary
    folders (ckpt-<step>_temp), and the files of `failed_step` or of a step after the latest
    checkpoint, which the index does not list. Nothing else: files of older steps or of
    another job are not ours to delete."""
    if not os.path.isdir(directory):
        return
    state = tf.train.get_checkpoint_state(directory)
    latest = _step(os.path.basename(state.model_checkpoint_path) + ".index") if state else None
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        step = _step(name)
        if _TEMPORARY.fullmatch(name):
            shutil.rmtree(path, ignore_errors=True)
        elif step is not None and step != latest and (
                step == failed_step or (latest is not None and step > latest)):
            os.remove(path)


def _step(name):
    """The step of a checkpoint file's name (ckpt-<step>.index or .data-*), else None."""
    match = re.fullmatch(rf"{PREFIX}-(\d+)(\.index|\.data-\d+-of-\d+)", name)
    return int(match.group(1)) if match else None


def _cause(error):
    """The reason of a failed write in a user's words ("no space left on device")."""
    text = getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)
    for cause in ("No space left on device", "Read-only file system", "Not a directory",
                  "Permission denied", "Disk quota exceeded"):
        if cause.lower() in text.lower():
            return cause.lower()
    return text.strip().splitlines()[0]


class CheckpointMismatch(entry.UserError):
    """A checkpoint of another model or task than the job's run.json describes."""


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


def has_run(model_dir):
    return os.path.isfile(os.path.join(model_dir, RUN_FILE))


def read_run(model_dir):
    """The job's run.json; a UserError naming it when it is missing or not JSON."""
    path = os.path.join(model_dir, RUN_FILE)
    if not has_run(model_dir):
        raise entry.UserError(f"{path} not found: {model_dir} is not a folder written by "
                              f"trainer.main")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise entry.UserError(f"{path}: not JSON ({error})") from error
