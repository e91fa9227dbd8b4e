"""Writes one TFRecord shard, atomically, with what the manifest records of it.

A shard is written under a temporary name in `RECORDS/.parts/` and renamed into place only when
complete, together with its stats; so a shard file that exists is complete, a killed build
leaves no partial shard under a shard's name, and a re-run skips the shards that exist.
Runs in the build's worker processes.
"""

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np

from input import schema

PARTS = ".parts"  # temporary shards and per-shard stats, inside the records folder


class BadImage(ValueError):
    """An image that cannot be read or decoded, with the fold file and line it came from."""


@dataclasses.dataclass(frozen=True)
class ShardJob:
    out_dir: str
    adience_dir: str
    split: str
    index: int
    count: int
    examples: tuple  # of input.adience.Example
    task: str
    num_classes: int
    image_format: str
    image_size: int
    jpeg_quality: int
    strict: bool

    @property
    def name(self):
        return schema.shard_name(self.split, self.index, self.count)


def plan(splits, shards_per_split, **settings):
    """ShardJobs that deal each split's examples round-robin, so shards differ by one at most."""
    jobs = []
    for split, examples in sorted(splits.items()):
        count = max(1, min(shards_per_split, len(examples)))
        for index in range(count):
            jobs.append(ShardJob(split=split, index=index, count=count,
                                 examples=tuple(examples[index::count]), **settings))
    return jobs


def stats_path(out_dir, name):
    return os.path.join(out_dir, PARTS, name + ".json")


def pixel_sum_path(out_dir, name):
    return os.path.join(out_dir, PARTS, name + ".pixels.npy")


def write(job, progress=None):
    """Writes the job's shard unless it exists; returns its stats (with "skipped")."""
    final = os.path.join(job.out_dir, job.name)
    if os.path.exists(final):
        with open(stats_path(job.out_dir, job.name)) as f:
            return dict(json.load(f), skipped=True)
    partial = os.path.join(job.out_dir, PARTS, f"{job.name}.partial-{os.getpid()}")
    try:
        stats, pixel_sum = _write_records(job, partial, progress)
        replace_atomically(pixel_sum_path(job.out_dir, job.name),
                            lambda f: np.save(f, pixel_sum), binary=True)
        replace_atomically(stats_path(job.out_dir, job.name), lambda f: json.dump(stats, f))
        os.replace(partial, final)  # last: the shard's name appears only when all is written
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return dict(stats, skipped=False)


def _write_records(job, path, progress):
    import tensorflow as tf

    encode = _encoder(job.image_format, job.image_size, job.jpeg_quality)
    pixel_sum = np.zeros((job.image_size, job.image_size, 3), np.float64)
    class_counts, problems, users = [0] * job.num_classes, [], set()
    with tf.io.TFRecordWriter(path) as writer:
        for example in job.examples:
            try:
                stored, pixels = encode(_read_bytes(example.path))
            except (OSError, tf.errors.OpError) as error:
                problem = f"{example.source}: unreadable or corrupt image {example.path}: " \
                          f"{_first_line(error)}"
                if job.strict:
                    raise BadImage(problem) from error
                problems.append(problem)
                continue
            label = example.label(job.task)
            filename = os.path.relpath(example.path, job.adience_dir)
            writer.write(schema.serialize(stored, job.image_format, job.image_size, label,
                                          example, filename))
            pixel_sum += pixels
            class_counts[label] += 1
            users.add(example.user_id)
            if progress is not None:
                with progress.get_lock():
                    progress.value += 1
    stats = {"file": job.name, "split": job.split, "examples": sum(class_counts),
             "class_counts": class_counts, "users": sorted(users), "sha256": file_sha256(path),
             "bad_images": problems}
    return stats, pixel_sum


@functools.lru_cache(maxsize=None)  # one traced function per worker, not per shard
def _encoder(image_format, size, jpeg_quality):
    """bytes -> (what the record stores, the uint8 pixels a reader of the record will see)."""
    import tensorflow as tf

    from input import images

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode_resize_encode(encoded):
        image = images.decode_and_resize(encoded, size)
        if image_format == "raw":
            return image, image
        stored = tf.io.encode_jpeg(image, quality=jpeg_quality)
        return stored, tf.io.decode_jpeg(stored, channels=3)

    def encode(data):
        stored, pixels = decode_resize_encode(tf.constant(data))
        stored = stored.numpy()
        return (stored.tobytes() if image_format == "raw" else stored), pixels.numpy()

    return encode


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _first_line(error):
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_atomically(path, write_fn, binary=False):
    """Writes `path` through `write_fn(file)` under a temporary name, then renames it: a reader
    (or a resumed build) never sees half a file. A killed writer leaves `<path>.tmp-<pid>`."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb" if binary else "w") as f:
        write_fn(f)
    os.replace(temporary, path)
