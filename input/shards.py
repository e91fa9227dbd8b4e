"""Writes one TFRecord shard, atomically, with what the manifest records of it.

A shard is written under a temporary name in `RECORDS/.parts/` and renamed into place only when
complete, together with its stats; so a shard file that exists is complete, a killed build
leaves no partial shard under a shard's name, and a re-run skips the shards that exist. A write
that fails (a full or read-only disk) removes what it had written and raises an OSError naming
the file and the cause, which crosses from a worker process to the build intact.
Runs in the build's worker processes.
"""

import dataclasses
import errno
import functools
import hashlib
import io
import json
import os
import zipfile

import numpy as np

from input import schema

PARTS = ".parts"  # temporary shards and per-shard stats, inside the records folder


# What a TensorFlow write error's message may say, as the errno it stands for: TensorFlow's file
# system raises OpErrors whose only trace of the cause is os.strerror's text.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.ENOTDIR, errno.EACCES, errno.EDQUOT,
                 errno.EISDIR)
# The first bytes of each format tf.io.decode_image reads (Adience's images are JPEGs).
_SIGNATURES = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "BMP": (b"BM",),
               "GIF": (b"GIF87a", b"GIF89a")}
_LAST_BYTES = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # what a complete file ends with
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the oldest date a zip entry holds


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


def part_names(name):
    """The files a shard `name` has in the parts folder besides its partial: stats, pixel sum."""
    return name + ".json", name + ".pixels.npy"


def stats_path(out_dir, name):
    return os.path.join(out_dir, PARTS, part_names(name)[0])


def pixel_sum_path(out_dir, name):
    return os.path.join(out_dir, PARTS, part_names(name)[1])


def write(job, progress=None):
    """Writes the job's shard unless it exists; returns its stats (with "skipped")."""
    final = os.path.join(job.out_dir, job.name)
    if os.path.exists(final):
        with open(stats_path(job.out_dir, job.name)) as f:
            stats = json.load(f)
        return dict(stats, bytes=os.path.getsize(final), skipped=True)  # stats of any version
    partial = os.path.join(job.out_dir, PARTS, f"{job.name}.partial-{os.getpid()}")
    try:
        stats, pixel_sum = _write_records(job, partial, final, progress)
        replace_atomically(pixel_sum_path(job.out_dir, job.name),
                           lambda f: f.write(npy_bytes(pixel_sum)), binary=True)
        replace_atomically(stats_path(job.out_dir, job.name), lambda f: json.dump(stats, f))
        os.replace(partial, final)  # last: the shard's name appears only when all is written
    finally:
        _remove_if_present(partial)
    return dict(stats, skipped=False)


def _write_records(job, path, final, progress):
    """Writes the records of `job` to `path`; a failed write is an OSError naming `final`."""
    import tensorflow as tf

    encode = _encoder(job.image_format, job.image_size, job.jpeg_quality)
    pixel_sum = np.zeros((job.image_size, job.image_size, 3), np.float64)
    class_counts, problems, users = [0] * job.num_classes, [], set()
    try:
        with tf.io.TFRecordWriter(path) as writer:
            for example in job.examples:
                encoded = _encode_or_report(encode, example, job.strict, problems)
                if encoded is None:
                    continue
                stored, pixels = encoded
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
    except tf.errors.OpError as error:  # the writer's: the shard's file system said no
        raise _write_error(error, final) from None
    stats = {"file": job.name, "split": job.split, "examples": sum(class_counts),
             "class_counts": class_counts, "users": sorted(users), "sha256": file_sha256(path),
             "bytes": os.path.getsize(path), "bad_images": problems}
    return stats, pixel_sum


def _encode_or_report(encode, example, strict, problems):
    """encode(the example's image), or None after adding why not to `problems` (BadImage when
    `strict`)."""
    import tensorflow as tf

    try:
        data = _read_bytes(example.path)
        return encode(data)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
    except tf.errors.OpError as error:
        reason = _image_problem(data, error)
    problem = f"{example.source}: unreadable or corrupt image {example.path}: {reason}"
    if strict:
        raise BadImage(problem)
    problems.append(problem)
    return None


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


def _image_problem(data, error):
    """Why an image's bytes could not be decoded, in a reader's words: their signature says
    more than the decoder, whose error inside a tf.function begins "Graph execution error:"."""
    if not data:
        return "empty file"
    kind = next((kind for kind, starts in _SIGNATURES.items() if data.startswith(starts)), None)
    if kind is None:
        return f"not a {'/'.join(_SIGNATURES)} image (it starts with {data[:8]!r})"
    if kind in _LAST_BYTES and not data.rstrip(b"\0").endswith(_LAST_BYTES[kind]):
        return f"truncated {kind} ({len(data)} bytes, no end-of-image marker)"
    return f"corrupt {kind}: {_decoder_reason(error)}"


def _decoder_reason(error):
    """The decoder's own line of a TensorFlow error, without the graph's trace around it."""
    lines = [line.strip() for line in error.message.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(("[[", "Detected at",
                                                                       "File ", "Graph "))]
    return reasons[-1].split(" [[")[0] if reasons else lines[0]


def _write_error(error, path):
    """An OSError naming `path` for a TensorFlow write error (its errno read from the message:
    TensorFlow keeps only the text), so that it is reported as "PATH: no space left on
    device"; the error's own first line when no known cause is in it."""
    message = error.message if hasattr(error, "message") else str(error)
    for code in _WRITE_ERRNOS:
        if os.strerror(code).lower() in message.lower():
            return OSError(code, os.strerror(code), path)
    return OSError(errno.EIO, message.strip().splitlines()[0], path)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def npy_bytes(array):
    """np.save's bytes. Written with f.write, a full disk is an OSError with its errno: numpy's
    own writer says only "12288 requested and 11248 written"."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(arrays):
    """np.savez's bytes with a fixed date in the zip: the same arrays give the same bytes, so
    the manifest's SHA-256 of them is the same for a resumed build and a clean one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in sorted(arrays.items()):
            with archive.open(zipfile.ZipInfo(f"{name}.npy", _ZIP_EPOCH), "w",
                              force_zip64=True) as f:
                f.write(npy_bytes(array))
    return buffer.getvalue()


def replace_atomically(path, write_fn, binary=False):
    """Writes `path` through `write_fn(file)` under a temporary name, then renames it: a reader
    (or a resumed build) never sees half a file. A failed write removes the temporary and
    raises an OSError naming `path`; a killed writer leaves `<path>.tmp-<pid>`."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb" if binary else "w") as f:
            write_fn(f)
        os.replace(temporary, path)
    except OSError as error:
        _remove_if_present(temporary)
        raise OSError(error.errno, error.strerror or str(error), path) from None  # not the tmp
    except BaseException:
        _remove_if_present(temporary)
        raise


def _remove_if_present(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
