"""--data=resident: the records decoded once and held on each replica's device.

Adience is small: ~19,000 faces of 256x256x3 uint8 are 3.7 GB, a fraction of one GPU's memory.
Each of the job's R replicas holds its own share of the records (`Records.pipeline_share`: its
own files when there are enough, else every R-th record), decoded once at start by the records'
parser in a parallel tf.data map and copied onto its device. Memory shrinks as replicas grow,
and each process decodes only its own replicas' shares.

Training: replica r's batch at global step t takes positions p = t*b .. t*b+b-1 of an endless
stream over its share (n examples, b per replica); position p is example
index_shuffle(p mod n) under the seed (seed, p div n, r): a new permutation of the share every
epoch, and the batch a pure function of (seed, t, r), so that a job resumed at step s takes
exactly the batches of a job never stopped. Crop offsets (uniform in [0, S-c], as
input.images.random_crop_and_flip) and flips (p = 0.5) are stateless draws from (seed, t, r).

Evaluation: replica r holds its share of the held-out records; step t takes its positions
t*b .. t*b+b-1, those past the share's end being masked padding; the center crop, or the
paper's 10 crops. The steps, from the manifest, are the same on every replica, and every
held-out example counts exactly once.

The gather, crop and flip of a batch run as one XLA-compiled function: TensorFlow has no GPU
kernel gathering uint8, so its own ops would copy the whole share to the host at every step;
XLA's gather takes any type. The permutation stays outside it (index_shuffle has no XLA kernel).

Before reading anything, `check_fits` compares the bytes of the shares (from the manifest) with
the memory found free, and refuses the job (exit 2) when they do not fit.
"""

import functools
import math
import os
import subprocess

from absl import logging
import tensorflow as tf

from input import batch as batch_lib
from input import images as images_lib
from input import pipeline
from launch import entry
from launch import host

# The tensors each replica holds (a dict per replica).
IMAGES, LABELS, EXAMPLES, REPLICA = "images", "labels", "examples", "replica"
LABEL_BYTES = 4  # int32
# Of the memory found free, the part left to the model, its activations, the optimizer's state
# and TensorFlow's own buffers.
MEMORY_RESERVE = 0.25
SHUFFLE_ROUNDS = 4  # index_shuffle's own default
NVIDIA_SMI_SECONDS = 30
CGROUP = "/sys/fs/cgroup"  # a container's memory limit (cgroup v2): its MemAvailable is the host's
WAYS_OUT = ("train with --data=records (with --cache to keep the decoded share in host "
            "memory), or on records built at a smaller --image_size (python -m input.build)")


class Feed:
    """A feed (trainer.data's protocol) of resident tensors: the state is the held tensors,
    and each replica makes its batch from its own tensors and the step."""

    def __init__(self, held, make_batch):
        self._held = held
        self._make_batch = make_batch

    def start(self):
        return self._held

    def inputs(self, state, step):
        return state, step

    def batch(self, inputs):
        held, step = inputs
        return self._make_batch(held, step)


def train_feed(backend, info, global_batch_size, seed, crop_size, threads=None):
    """The training feed: each replica's share of `info.train_splits`, held on its device.

    Checks first that the training and held-out shares fit (the evaluation holds the latter).
    """
    records, replicas = info.records, backend.num_replicas
    smallest = min(records.pipeline_share(info.train_splits, replicas, r).examples
                   for r in range(replicas))
    if not smallest:
        raise entry.UserError(f"{records.path}: {info.train_examples} training examples for "
                              f"{replicas} replicas")
    check_fits(backend, info, info.train_splits + info.eval_splits)
    held = _hold(backend, records, info.train_splits, threads)
    return Feed(held, functools.partial(
        _train_batch, per_replica_batch_size=_per_replica(global_batch_size, replicas),
        seed=seed, crop_size=crop_size))


def eval_feed(backend, info, global_batch_size, crops, crop_size, threads=None):
    """(the held-out feed, its steps): every example of `info.eval_splits` once over all
    replicas, in batches of the center crop (crops=1) or the paper's 10 crops (crops=10)."""
    if crops not in (1, images_lib.TEN_CROPS):
        raise ValueError(f"crops must be 1 or {images_lib.TEN_CROPS}, not {crops}")
    records, replicas = info.records, backend.num_replicas
    check_fits(backend, info, info.eval_splits)
    per_replica_batch_size = _per_replica(global_batch_size, replicas)
    largest = max(records.pipeline_share(info.eval_splits, replicas, r).examples
                  for r in range(replicas))
    steps = max(1, math.ceil(largest / per_replica_batch_size))
    held = _hold(backend, records, info.eval_splits, threads)
    return Feed(held, functools.partial(_eval_batch, per_replica_batch_size=per_replica_batch_size,
                                        crops=crops, crop_size=crop_size)), steps


def _hold(backend, records, split_names, threads=None):
    """{IMAGES [n, S, S, 3] uint8, LABELS [n] int32, EXAMPLES n, REPLICA r} of each replica
    of this process, on its device (per-replica values). A share of no example holds one
    blank row (evaluation pads with it)."""
    def on_device(replica):
        share = records.pipeline_share(split_names, backend.num_replicas, replica)
        images, labels = _decode(records, share, threads)
        with tf.device(backend.replica_device(replica)):
            return {IMAGES: tf.identity(images), LABELS: tf.identity(labels),
                    EXAMPLES: tf.constant(share.examples, tf.int64),
                    REPLICA: tf.constant(replica, tf.int64)}

    return backend.distribute_values(on_device)


def _decode(records, share, threads):
    """The share's images and labels, decoded in parallel, in the order of its records."""
    size = records.image_size
    if not share.examples:
        return tf.zeros([1, size, size, 3], tf.uint8), tf.zeros([1], tf.int32)
    serialized = pipeline.share_records(share, records.files(share.shards), deterministic=True)
    decoded = serialized.map(lambda record: _image_and_label(records.parse(record)),
                             num_parallel_calls=tf.data.AUTOTUNE)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        decoded = decoded.with_options(options)
    try:
        images, labels = decoded.batch(share.examples).get_single_element()
    except tf.errors.OpError as error:  # damaged, or more records than the manifest says
        raise entry.Failure(f"{records.path}: unreadable records ({error.message.splitlines()[0]})"
                            f"; run python -m input.verify {records.path}") from None
    if labels.shape[0] != share.examples:
        raise entry.Failure(f"{records.path}: {labels.shape[0]} records where the manifest "
                            f"says {share.examples}; run python -m input.verify {records.path}")
    return images, labels


def _image_and_label(example):
    return example["image"], example["label"]


def _per_replica(global_batch_size, replicas):
    if global_batch_size % replicas:
        raise ValueError(f"global batch {global_batch_size} does not split over {replicas} "
                         f"replicas")
    return global_batch_size // replicas


def _train_batch(held, step, per_replica_batch_size, seed, crop_size):
    """Replica held[REPLICA]'s training batch of global step `step` (see the module's text)."""
    size, count = held[IMAGES].shape[1], per_replica_batch_size
    seed, replica, examples = tf.constant(seed, tf.int64), held[REPLICA], held[EXAMPLES]
    positions = step * count + tf.range(count, dtype=tf.int64)
    epoch_seeds = tf.stack([tf.fill([count], seed), positions // examples,
                            tf.fill([count], replica)], axis=1)
    # The raw op: TF 2.21's index_shuffle pads a [n, 2] seed along the wrong axis.
    indices = tf.raw_ops.RandomIndexShuffle(index=positions % examples, seed=epoch_seeds,
                                            max_index=examples - 1, rounds=SHUFFLE_ROUNDS)
    indices = tf.cast(indices, tf.int32)
    key = tf.random.experimental.stateless_fold_in(tf.stack([seed, step]), replica)
    offset_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    offsets = tf.random.stateless_uniform([count, 2], offset_key, minval=0,
                                          maxval=size - crop_size + 1, dtype=tf.int32)
    flips = tf.random.stateless_uniform([count], flip_key) < 0.5
    windows = _crop_and_flip(held[IMAGES], indices, offsets, flips, crop_size)
    return batch_lib.make(windows, offsets, flips, tf.gather(held[LABELS], indices))


def _eval_batch(held, step, per_replica_batch_size, crops, crop_size):
    """Replica held[REPLICA]'s evaluation batch `step`: padding (past its share) masked."""
    count, examples = per_replica_batch_size, held[EXAMPLES]
    positions = step * count + tf.range(count, dtype=tf.int64)
    mask = positions < examples
    # Padding repeats the last row (a blank one for an empty share): masked out anyway.
    indices = tf.cast(tf.minimum(positions, tf.maximum(examples, 1) - 1), tf.int32)
    labels = tf.gather(held[LABELS], indices)
    image = held[IMAGES][0]  # only its static shape is read
    if crops == 1:
        offsets = tf.tile(images_lib.center_offset(image, crop_size)[None], [count, 1])
        flips = tf.zeros([count], tf.bool)
        windows = _crop_and_flip(held[IMAGES], indices, offsets, flips, crop_size)
        return batch_lib.make(windows, offsets, flips, labels, mask=mask)
    ten_offsets, ten_flips = images_lib.ten_crop_offsets(image, crop_size)
    offsets = tf.tile(ten_offsets[None], [count, 1, 1])
    flips = tf.tile(ten_flips[None], [count, 1])
    windows = _crop_and_flip(held[IMAGES], tf.repeat(indices, crops),
                             tf.reshape(offsets, [-1, 2]), tf.reshape(flips, [-1]), crop_size)
    windows = tf.reshape(windows, [count, crops, crop_size, crop_size, 3])
    return batch_lib.make(windows, offsets, flips, labels, mask=mask)


@tf.function(jit_compile=True)
def _crop_and_flip(images, indices, offsets, flips, crop_size):
    """[K, crop, crop, 3] windows: images[indices[k]] cut at offsets[k] (y, x) and mirrored
    where flips[k], as input.images.random_crop_and_flip. Two gathers, the flip folded into
    the columns' order: only the crops' rows are ever copied, never whole images."""
    span = tf.range(crop_size)
    rows = offsets[:, :1] + span
    columns = offsets[:, 1:] + tf.where(flips[:, None], crop_size - 1 - span, span)
    examples = tf.broadcast_to(indices[:, None], tf.shape(rows))
    strips = tf.gather_nd(images, tf.stack([examples, rows], axis=-1))  # [K, crop, S, 3]
    return tf.gather(strips, columns, axis=2, batch_dims=1)


def check_fits(backend, info, split_names, available_bytes=None):
    """Raises entry.UserError (exit 2) on every process when some process's shares of
    `split_names` would not fit where they are held, before anything is read.

    With GPUs, each holds one replica's share: the largest share against the least memory a
    GPU of this process can still give. On CPUs, the host holds the shares of all its
    processes' replicas (the largest process's, times the processes on this host), and one
    share twice while it is batched. `available_bytes` stands for the memory found free
    (tests); MEMORY_RESERVE of it is left to the rest of the job.
    """
    records, replicas, local = info.records, backend.num_replicas, backend.replicas_per_pipeline
    shares = [records.pipeline_share(split_names, replicas, r).examples for r in range(replicas)]
    image_bytes = records.image_size ** 2 * 3 + LABEL_BYTES
    gpus = tf.config.get_visible_devices("GPU")
    if gpus:
        needed, where = max(shares) * image_bytes, "a GPU's memory"
    else:
        per_process = [sum(shares[i:i + local]) for i in range(0, replicas, local)]
        needed = (max(per_process) * host.processes_on_this_host() + max(shares)) * image_bytes
        where = "host memory"
    if available_bytes is None:
        available_bytes = _gpu_available_bytes(gpus) if gpus else _host_available_bytes()
    if available_bytes is None:
        logging.warning("--data=resident: the free memory of the GPUs is unknown (no nvidia-smi):"
                        " %d bytes held per GPU, unchecked", needed)
        available_bytes = needed / (1 - MEMORY_RESERVE)
    usable = int(available_bytes * (1 - MEMORY_RESERVE))
    # Gathered: every process refuses together (and none starts loading before all checked).
    # In MiB: an int32 on every process (a larger count would be an int64 on some only).
    lacking = -min(backend.gather((usable - needed) // 2**20))
    if lacking > 0:
        short = (f"{_gb(usable)} is free for it" if usable < needed
                 else f"another process lacks {_gb(lacking * 2**20)}")
        raise entry.UserError(
            f"--data=resident: {records.path} needs {_gb(needed)} of {where} to hold "
            f"{', '.join(split_names)} ({sum(shares)} images of {records.image_size}x"
            f"{records.image_size}, over {replicas} replicas) and {short}: {WAYS_OUT}")


def _gb(count):
    return f"{count / 1e9:.2f} GB"


def _host_available_bytes(cgroup=CGROUP):
    """The host's MemAvailable, or less when a container's limit leaves less."""
    with open("/proc/meminfo") as f:
        kilobytes = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    available = kilobytes * 1024
    try:
        with open(os.path.join(cgroup, "memory.max")) as f:
            limit = f.read().strip()
        with open(os.path.join(cgroup, "memory.current")) as f:
            used = int(f.read())
    except OSError:
        return available
    return available if limit == "max" else min(available, int(limit) - used)


def _gpu_available_bytes(gpus):
    """The least memory any GPU of this process can still give, None without nvidia-smi.

    TensorFlow counts only its own use, and reserves most of a GPU when it starts: what is
    free to this job is what nvidia-smi calls free, plus what this process holds, minus what
    TensorFlow uses of that.
    """
    cuda_ids = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = []
    for logical, gpu in enumerate(gpus):
        ordinal = int(gpu.name.rsplit(":", 1)[1])
        smi_id = cuda_ids.split(",")[ordinal] if cuda_ids else str(ordinal)
        free = _nvidia_smi("--query-gpu=memory.free", smi_id)
        held = _nvidia_smi("--query-compute-apps=pid,used_memory", smi_id)
        if free is None or held is None:
            return None
        mine = sum(int(used) for pid, used in (line.split(",") for line in held)
                   if int(pid) == os.getpid())
        in_use = tf.config.experimental.get_memory_info(f"GPU:{logical}")["current"]
        found.append((int(free[0]) + mine) * 2**20 - in_use)
    return min(found)


def _nvidia_smi(query, gpu):
    """The lines of an nvidia-smi query (MiB, no units), None when it cannot answer."""
    try:
        result = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits", "-i", gpu],
                                capture_output=True, text=True, timeout=NVIDIA_SMI_SECONDS,
                                check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in result.stdout.splitlines() if line.strip()]
