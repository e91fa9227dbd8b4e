"""What the trainer reads: a records folder through input.pipeline, or synthetic batches.

`describe` checks the records against the job before any work (task, image size, held-out
fold) and gives what the model needs from them (classes, the training folds' mean image).
The synthetic source ("--data=synthetic") makes batches in memory from the seed alone: the
benchmark uses it to tell whether training is input-bound, and the tests use it to feed every
strategy exactly the same global batch (records would give each worker its own files). The
resident source ("--data=resident", trainer.resident) decodes the records once and keeps them
on each replica's device, where the step gathers, crops and flips its batch.

A feed gives a compiled call (trainer.steps) its batches, the same way for every source:

    state = feed.start()              eager, once per pass (training: once; evaluation: each
                                      one); an argument of the tf.function
    inputs = feed.inputs(state, step) in the tf.function, cross-replica: what each replica is
                                      handed for `step` (int64 tensor: the global index of the
                                      step's batch, 0-based; evaluation: 0 .. steps - 1)
    batch = feed.batch(inputs)        in the replica function: that replica's batch
"""

import dataclasses

import numpy as np
import tensorflow as tf

from input import adience
from input import batch as batch_lib
from input import pipeline
from input import records as records_lib
from launch import entry
from trainer import resident

SOURCES = ("records", "synthetic", "resident")
FROM_RECORDS = ("records", "resident")
SYNTHETIC_STEPS = 8  # distinct global batches of the synthetic source, cycled
SYNTHETIC_PIXEL_MEAN = 127.5


@dataclasses.dataclass(frozen=True)
class DataInfo:
    source: str
    records: records_lib.Records | None  # None for synthetic batches
    task: str
    class_names: tuple
    mean_image: np.ndarray
    train_splits: tuple
    eval_splits: tuple
    train_examples: int
    eval_examples: int

    @property
    def num_classes(self):
        return len(self.class_names)


def describe(source, records_dir, task, held_out_fold, crop_size):
    """Reads and checks the records folder once (input.records) against the job and describes
    it; a clear UserError on a mismatch. The folder is not read again: the description is
    handed down to the pipelines."""
    if source == "synthetic":
        names = adience.AGE_GROUP_NAMES if task == "age" else adience.GENDER_NAMES
        mean = np.full((crop_size, crop_size, 3), SYNTHETIC_PIXEL_MEAN, np.float32)
        return DataInfo(source, None, task, tuple(names), mean, (), (), 0, 0)
    records = records_lib.load(records_dir)
    settings = records.settings
    if settings["task"] != task:
        raise entry.UserError(
            f"{records.path} holds {settings['task']} labels, not {task}: build records with "
            f"--task={task} or train with --task={settings['task']}")
    if records.image_size < crop_size:
        raise entry.UserError(
            f"{records.path} holds {records.image_size}x{records.image_size} images, smaller "
            f"than the {crop_size}x{crop_size} crops: rebuild with --image_size of at least "
            f"{crop_size} or lower --crop_size")
    train_splits, eval_splits = records.protocol_splits(held_out_fold)
    return DataInfo(source, records, task, records.class_names,
                    records.mean_image(train_splits), tuple(train_splits), tuple(eval_splits),
                    records.examples(train_splits), records.examples(eval_splits))


def replace_eval_splits(info, split_names):
    return dataclasses.replace(info, eval_splits=tuple(split_names),
                               eval_examples=info.records.examples(split_names))


class StreamFeed:
    """The feed of a distributed dataset (records or synthetic): each step takes its next
    batch."""

    def __init__(self, dataset):
        self._dataset = dataset

    def start(self):
        return iter(self._dataset)

    def inputs(self, state, step):
        del step  # the dataset already starts at the first step
        return next(state)

    def batch(self, inputs):
        return inputs


def train_feed(backend, info, global_batch_size, start_step, seed, deterministic, crop_size,
               cache=False, threads=None):
    """The training feed from `start_step` on."""
    if info.source == "resident":
        return resident.train_feed(backend, info, global_batch_size, seed, crop_size, threads)
    return StreamFeed(train_batches(backend, info, global_batch_size, start_step, seed,
                                    deterministic, crop_size, cache, threads))


def eval_feed(backend, info, global_batch_size, crops, crop_size, threads=None):
    """(the held-out feed, its steps): every held-out example once over all workers."""
    if info.source == "resident":
        return resident.eval_feed(backend, info, global_batch_size, crops, crop_size, threads)
    dataset, steps = eval_batches(backend, info, global_batch_size, crops, crop_size, threads)
    return StreamFeed(dataset), steps


def train_batches(backend, info, global_batch_size, start_step, seed, deterministic,
                  crop_size, cache=False, threads=None):
    """The distributed training batches from `start_step` on (each pipeline skips to it)."""
    def dataset_fn(num_pipelines, pipeline_index, per_replica_batch_size):
        # A pipeline yields one batch per replica it feeds, per step.
        first = start_step * backend.replicas_per_pipeline
        if info.source == "synthetic":
            return _synthetic(info.num_classes, crop_size, per_replica_batch_size,
                              backend.replicas_per_pipeline,
                              pipeline_index * backend.replicas_per_pipeline,
                              global_batch_size, first, seed)
        return pipeline.train_dataset(
            info.records, info.train_splits, per_replica_batch_size,
            num_pipelines=num_pipelines, pipeline_index=pipeline_index, seed=seed,
            deterministic=deterministic, start_step=first, cache=cache, crop_size=crop_size,
            threads=threads)

    return backend.distribute_dataset(dataset_fn, global_batch_size)


def eval_batches(backend, info, global_batch_size, crops, crop_size, threads=None):
    """(distributed evaluation batches, steps): every held-out example once over all workers."""
    steps = []

    def dataset_fn(num_pipelines, pipeline_index, per_replica_batch_size):
        data = pipeline.eval_dataset(
            info.records, info.eval_splits, per_replica_batch_size, num_pipelines=num_pipelines,
            pipeline_index=pipeline_index, crops=crops, crop_size=crop_size,
            replicas_per_pipeline=backend.replicas_per_pipeline, threads=threads)
        steps.append(data.steps)
        return data.dataset

    dataset = backend.distribute_dataset(dataset_fn, global_batch_size)
    return dataset, steps[0]


def _synthetic(num_classes, crop_size, batch_size, replicas, first_chunk, global_batch_size,
               first_batch, seed):
    """Uniform noise images with random labels, made once and held in memory.

    Global step t's batch is a function of (seed, t mod SYNTHETIC_STEPS) alone; this pipeline's
    k-th batch is chunk first_chunk + k % replicas of global step k // replicas, so that any
    number of replicas and workers together see the same global batches.
    """
    def batch(k):
        step = k // replicas
        chunk = first_chunk + k % replicas
        images = tf.random.stateless_uniform([global_batch_size, crop_size, crop_size, 3],
                                             seed=[seed, step], maxval=256, dtype=tf.int32)
        labels = tf.random.stateless_uniform([global_batch_size], seed=[seed + 1, step],
                                             maxval=num_classes, dtype=tf.int32)
        rows = slice(chunk * batch_size, (chunk + 1) * batch_size)
        return batch_lib.make(tf.cast(images[rows], tf.uint8),
                              tf.zeros([batch_size, 2], tf.int32),
                              tf.zeros([batch_size], tf.bool), labels[rows])

    cycle = SYNTHETIC_STEPS * replicas
    in_memory = tf.data.Dataset.range(cycle).map(batch).batch(cycle).get_single_element()
    return (tf.data.Dataset.from_tensor_slices(in_memory).repeat().skip(first_batch % cycle)
            .prefetch(tf.data.AUTOTUNE))
