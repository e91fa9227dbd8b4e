"""The tf.data pipeline: a records folder -> batches for one input pipeline of a job.

It knows nothing of strategies. The trainer's strategy module says how many input pipelines
the job has and which one this is (from `tf.distribute.InputContext` or Horovod's rank and
size); each pipeline reads its own share of the records (`Records.pipeline_share`): its own
files when there are enough of them, else every n-th record of all of them, so that any number
of pipelines works and no two read the same record.

Training, per epoch e: the share's files in an order drawn from (seed, e) -> interleave ->
(keep every n-th record) -> shuffle -> skip to the start step -> parse, decode, random crop
and flip -> batch -> prefetch. With `cache`, the decoded share is read once and kept in memory,
and the shuffle covers all of it. Images leave as uint8 with each crop's offset and flip, so
that the model can subtract the window of the mean image under the crop, as Caffe does.

With `deterministic=True` the order of epoch e is a function of (seed, e) alone and the
augmentation of the example at stream position p a function of (seed, p), so a job resumed at
step s skips straight to it and sees exactly the batches an uninterrupted job would have.

Evaluation: every held-out example exactly once, whatever the number of pipelines: no
`drop_remainder`; each pipeline pads its last batches with masked examples so that all of them
run the same number of steps.
"""

import dataclasses
import math

from absl import logging
import tensorflow as tf

from input import batch
from input import images
from launch import entry

AUTOTUNE = tf.data.AUTOTUNE
# Records; a few times the batch, and under 0.5 GB of raw 256x256 images. The records' order
# within their files is already random (input.build), so a buffer of a part of the share
# still mixes albums.
SHUFFLE_BUFFER = 2048
# Files read at once by one pipeline, a record from each in turn: all the training files of
# records built with the default 8 shards per fold. Each file holds one fold's albums (in a
# random order), so reading fewer at once would fill the shuffle buffer from a few folds only.
INTERLEAVE_CYCLE = 32
MAX_EPOCHS = 1_000_000  # "forever": the trainer stops by its step count
EPOCH_SEED_STRIDE = 1_000_003  # a prime, so that (seed, epoch) pairs do not collide


@dataclasses.dataclass(frozen=True)
class EvalData:
    dataset: tf.data.Dataset
    steps: int  # steps of the evaluation loop, the same for every pipeline
    examples: int  # real (unmasked) examples over all pipelines


def train_dataset(records, split_names, per_replica_batch_size, num_pipelines=1,
                  pipeline_index=0, seed=0, deterministic=False, start_step=0, cache=False,
                  crop_size=images.CROP_SIZE, shuffle_buffer=None, threads=None):
    """Endless batches {"image" uint8 [B, crop, crop, 3], "label", "crop_offset", "flip"} of
    `records` (an input.records.Records).

    `start_step` counts this pipeline's batches; `shuffle_buffer` (records) is by default the
    pipeline's whole share with `cache`, else SHUFFLE_BUFFER; `threads` caps tf.data's thread
    pool (by default all cores: give a process that shares the host its share).
    """
    share = pipeline_share(records, split_names, num_pipelines, pipeline_index)
    if not share.examples:
        raise entry.UserError(f"{records.path}: {records.examples(split_names)} training "
                              f"examples for {num_pipelines} input pipelines")
    files, parse = records.files(share.shards), records.parse
    if cache:
        cached = share_records(share, files, deterministic).map(
            parse, num_parallel_calls=AUTOTUNE).cache()

    def epoch_records(epoch):
        if cache:  # read once; the shuffle buffer holds all of it, whatever the file order
            return cached
        return share_records(share, _file_order(files, seed, epoch), deterministic)

    # Resuming: whole epochs are not read again, only the rest of the current one is skipped.
    start = start_step * per_replica_batch_size
    first_epoch, within_epoch = divmod(start, share.examples)
    if not deterministic:
        within_epoch = 0  # a new random order anyway: nothing of this epoch to skip
    stream = _epochs(epoch_records, seed, shuffle_buffer or (
        share.examples if cache else SHUFFLE_BUFFER), first_epoch)
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
    # Every pipeline's count, from the manifest: the steps are known before any reading.
    counts = [records.pipeline_share(split_names, num_pipelines, i).examples
              for i in range(num_pipelines)]
    batch_per_step = per_replica_batch_size * replicas_per_pipeline
    steps = max(1, max(math.ceil(c / batch_per_step) for c in counts))
    share = pipeline_share(records, split_names, num_pipelines, pipeline_index)
    parse = records.parse

    def prepare(record):
        example = parse(record)
        if crops == 1:
            offset = images.center_offset(example["image"], crop_size)
            window, flipped = images.crop(example["image"], offset, crop_size), tf.constant(False)
        else:
            window, offset, flipped = images.ten_crops(example["image"], crop_size)
        return batch.make(window, offset, flipped, example["label"], mask=tf.constant(True))

    real = _keep_share(tf.data.TFRecordDataset(records.files(share.shards)), share)
    real = real.map(prepare, num_parallel_calls=AUTOTUNE)
    padding = tf.data.Dataset.from_tensors(_padding_like(real.element_spec)).repeat(
        steps * batch_per_step - share.examples)
    dataset = real.concatenate(padding).batch(per_replica_batch_size).prefetch(AUTOTUNE)
    return EvalData(dataset=_with_threads(dataset, threads), steps=steps,
                    examples=sum(counts))


def pipeline_share(records, split_names, num_pipelines, pipeline_index):
    """records.pipeline_share, with one warning (from pipeline 0) when the pipelines outnumber
    the files and each one therefore reads all of them."""
    share = records.pipeline_share(split_names, num_pipelines, pipeline_index)
    if share.by_example and pipeline_index == 0:
        logging.warning(
            "%s: %d files of %s for %d input pipelines: each pipeline reads all of them and "
            "keeps every %d-th record (%dx the reading); records built with --shards=%d or "
            "more are read once", records.path, len(share.shards), ", ".join(split_names),
            num_pipelines, num_pipelines, num_pipelines,
            math.ceil(num_pipelines / len(split_names)))
    return share


def interleave(files, deterministic):
    """Serialized records of these files (a list or a 1-D string tensor), read in parallel."""
    files = tf.convert_to_tensor(files, tf.string)
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(INTERLEAVE_CYCLE, files.shape[0]),
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _file_order(files, seed, epoch):
    """The files in an order drawn from (seed, epoch): the same on every pipeline."""
    return tf.random.experimental.stateless_shuffle(
        tf.constant(files), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))


def share_records(share, files, deterministic):
    """The share's serialized records of `files` (in this order). Pipelines that keep every
    n-th record of the same files must see one stream: it is then read in a fixed order."""
    return _keep_share(interleave(files, deterministic or share.by_example), share)


def _keep_share(stream, share):
    return stream.shard(share.stride, share.offset) if share.by_example else stream


def _epochs(epoch_records, seed, shuffle_buffer, first_epoch=0):
    """epoch_records(e) for e = first_epoch, ..., each shuffled from (seed, e)."""
    def epoch(index):
        epoch_seed = tf.cast(seed, tf.int64) * EPOCH_SEED_STRIDE + index
        return epoch_records(index).shuffle(shuffle_buffer, seed=epoch_seed)

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
