"""The tf.data pipeline: a records folder -> batches for one input pipeline of a job.

It knows nothing of strategies. The trainer's strategy module says how many input pipelines
the job has and which one this is (from `tf.distribute.InputContext` or Horovod's rank and
size); each pipeline reads its own files, so workers never read the same record.

Training: sorted files -> shard per pipeline -> interleave -> (cache) -> shuffle per epoch ->
repeat -> skip to the start step -> parse, decode, random crop and flip -> batch -> prefetch.
Images leave as uint8 with each crop's offset and flip, so that the model can subtract the
window of the mean image under the crop, as Caffe does.

With `deterministic=True` the order of epoch e is a function of (seed, e) alone and the
augmentation of the example at stream position p a function of (seed, p), so a job resumed at
step s skips straight to it and sees exactly the batches an uninterrupted job would have.

Evaluation: every held-out example exactly once, whatever the number of pipelines: no
`drop_remainder`; each pipeline pads its last batches with masked examples so that all of them
run the same number of steps.
"""

import dataclasses
import math

import tensorflow as tf

from input import batch
from input import images

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 2048  # records; a few times the batch, and under 0.5 GB of raw 256x256 images
INTERLEAVE_CYCLE = 8  # files read at once by one pipeline
MAX_EPOCHS = 1_000_000  # "forever": the trainer stops by its step count
EPOCH_SEED_STRIDE = 1_000_003  # a prime, so that (seed, epoch) pairs do not collide


@dataclasses.dataclass(frozen=True)
class EvalData:
    dataset: tf.data.Dataset
    steps: int  # steps of the evaluation loop, the same for every pipeline
    examples: int  # real (unmasked) examples over all pipelines


def train_dataset(records, split_names, per_replica_batch_size, num_pipelines=1,
                  pipeline_index=0, seed=0, deterministic=False, start_step=0, cache=False,
                  crop_size=images.CROP_SIZE, shuffle_buffer=SHUFFLE_BUFFER, threads=None):
    """Endless batches {"image" uint8 [B, crop, crop, 3], "label", "crop_offset", "flip"} of
    `records` (an input.records.Records).

    `start_step` counts this pipeline's batches; `threads` caps tf.data's thread pool (by
    default all cores: give a process that shares the host its share).
    """
    shards = records.pipeline_shards(split_names, num_pipelines, pipeline_index)
    parse = records.parse
    serialized = interleave(records.files(shards), deterministic)
    if cache:
        serialized = serialized.map(parse, num_parallel_calls=AUTOTUNE).cache()
    # Resuming: whole epochs are not read again, only the rest of the current one is skipped.
    start = start_step * per_replica_batch_size
    first_epoch, within_epoch = divmod(start, sum(s["examples"] for s in shards))
    if not deterministic:
        first_epoch, within_epoch = 0, 0  # a new random order anyway: nothing to skip
    stream = _epochs(serialized, seed, deterministic, shuffle_buffer, first_epoch)
    stream = stream.enumerate(start=start - within_epoch).skip(within_epoch)

    def augment(position, record):
        example = record if cache else parse(record)
        # Each pipeline its own crops: the same position on two workers is another example.
        crop_seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.cast(seed, tf.int64), position]), pipeline_index)
        window, offset, flipped = images.random_crop_and_flip(example["image"], crop_seed,
                                                              crop_size)
        return batch.make(window, offset, flipped, example["label"])

    dataset = (stream.map(augment, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
               .batch(per_replica_batch_size, drop_remainder=True)
               .prefetch(AUTOTUNE))
    return _with_threads(dataset, threads)


def eval_dataset(records, split_names, per_replica_batch_size, num_pipelines=1,
                 pipeline_index=0, crops=1, crop_size=images.CROP_SIZE,
                 replicas_per_pipeline=1, threads=None):
    """Every example of the splits once over all pipelines, padded and masked; see EvalData.

    Batches: {"image" uint8 [B, crop, crop, 3] (crops=1: the center crop) or
    [B, 10, crop, crop, 3] (crops=10: the paper's oversampling), "label", "crop_offset",
    "flip" (per crop), "mask" (False on padding)}. When several replicas take turns on one
    pipeline (MirroredStrategy), each step takes `replicas_per_pipeline` batches: the padding
    makes the count a multiple of it, so that every replica runs every step.
    """
    if crops not in (1, images.TEN_CROPS):
        raise ValueError(f"crops must be 1 or {images.TEN_CROPS}, not {crops}")
    every = [records.pipeline_shards(split_names, num_pipelines, i)
             for i in range(num_pipelines)]
    counts = [sum(s["examples"] for s in shards_) for shards_ in every]
    batch_per_step = per_replica_batch_size * replicas_per_pipeline
    steps = max(1, max(math.ceil(c / batch_per_step) for c in counts))
    mine = every[pipeline_index]
    parse = records.parse

    def prepare(record):
        example = parse(record)
        if crops == 1:
            offset = images.center_offset(example["image"], crop_size)
            window, flipped = images.crop(example["image"], offset, crop_size), tf.constant(False)
        else:
            window, offset, flipped = images.ten_crops(example["image"], crop_size)
        return batch.make(window, offset, flipped, example["label"], mask=tf.constant(True))

    real = tf.data.TFRecordDataset(records.files(mine))
    real = real.map(prepare, num_parallel_calls=AUTOTUNE)
    padding = tf.data.Dataset.from_tensors(_padding_like(real.element_spec)).repeat(
        steps * batch_per_step - counts[pipeline_index])
    dataset = real.concatenate(padding).batch(per_replica_batch_size).prefetch(AUTOTUNE)
    return EvalData(dataset=_with_threads(dataset, threads), steps=steps,
                    examples=sum(counts))


def interleave(files, deterministic):
    """Serialized records of these files, read in parallel."""
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(INTERLEAVE_CYCLE, len(files)),
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _epochs(records, seed, deterministic, shuffle_buffer, first_epoch=0):
    if not deterministic:
        return records.shuffle(shuffle_buffer).repeat()

    def epoch(index):
        epoch_seed = tf.cast(seed, tf.int64) * EPOCH_SEED_STRIDE + index
        return records.shuffle(shuffle_buffer, seed=epoch_seed)

    return tf.data.Dataset.range(first_epoch, MAX_EPOCHS).flat_map(epoch)


def _with_threads(dataset, threads):
    if not threads:
        return dataset
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def _padding_like(spec):
    padding = {key: tf.zeros(s.shape, s.dtype) for key, s in spec.items()}
    padding[batch.MASK] = tf.constant(False)
    return padding
