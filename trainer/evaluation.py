"""Evaluation on held-out records, the library (`trainer.evaluate` is its command line),
shared by the training loop, trainer.evaluate and the time-to-accuracy races.

Each replica returns the confusion counts of its batch (padding masked out); the counts are
summed over replicas and workers, then over batches, so that every held-out example counts
exactly once under any strategy; the total is checked against the records' count.
"""

import tensorflow as tf

from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer import data
from trainer import metrics
from trainer import steps


def run(step_fn, feed, eval_steps, info):
    """Runs the evaluation steps of `feed`; returns metrics.summarize of the summed counts
    (read from the device once, at the end)."""
    state = feed.start()
    confusion = tf.zeros((info.num_classes, info.num_classes), tf.int64)
    for index in range(eval_steps):
        confusion += tf.cast(step_fn(state, tf.constant(index, tf.int64)), tf.int64)
    summary = metrics.summarize(confusion.numpy(), info.class_names)
    if summary["examples"] != info.eval_examples:
        raise RuntimeError(f"evaluation counted {summary['examples']} examples, the records "
                           f"hold {info.eval_examples}")
    return summary


def evaluator(backend, info, model, global_batch_size, crops, crop_size, threads=None):
    """A function() -> the metrics of `model` (as it is when called) on `info`'s held-out
    split; the dataset and the step are built once."""
    feed, eval_steps = data.eval_feed(backend, info, global_batch_size, crops, crop_size,
                                      threads)
    step_fn = steps.eval_step(backend, model, info.num_classes, feed)
    return lambda: run(step_fn, feed, eval_steps, info)


def evaluate_checkpoint(backend, run_info, info, checkpoint_path, global_batch_size, crops,
                        threads=None):
    """The metrics of a checkpoint of the job described by `run_info` (its run.json)."""
    with backend.scope():
        model = checkpoint_lib.load_model(run_info, checkpoint_path)
    return evaluator(backend, info, model, global_batch_size, crops, run_info["crop_size"],
                     threads)()


def held_out(run_info, records_dir, split=None):
    """The data description of a job's evaluation on `records_dir` (its held-out split, or
    `split`); a clear UserError for records of another task, size or class list."""
    info = data.describe("records", records_dir, run_info["task"], run_info["held_out_fold"],
                         run_info["crop_size"])
    if list(info.class_names) != run_info["class_names"]:
        raise entry.UserError(f"{records_dir} has classes {list(info.class_names)}, the model "
                              f"was trained on {run_info['class_names']}")
    if split:
        info = data.replace_eval_splits(info, [split])
    return info
