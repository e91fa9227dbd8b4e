"""Times the all-reduce of a model's gradients under Horovod, in float32 and compressed to fp16.

  horovodrun --gloo -np 2 -H localhost:2 python -m trainer.bench.allreduce --out_dir=runs/bench

The gradients are tensors of the model's trainable variables' shapes (Levi & Hassner: 12
tensors, 45.7 MB), reduced by the training step's own reduction (trainer.strategy's
`reduce_gradients`) without and with --gradient_compression=fp16, in turns, after an untimed
call of each. Rank 0 prints the median of each and their ratio, and appends one JSON line to
OUT_DIR/allreduce.jsonl; `trainer.bench.scaling.load_measured` reads it back, to set the measured
times beside the scaling model's.

On CPUs, Gloo sums float16 element by element in software: compression there costs more than the
halved bytes save. Its gain belongs to GPUs whose network, not arithmetic, limits the all-reduce.
"""

import json
import statistics
import time

from absl import flags
import tensorflow as tf

from input import adience
from input import images
from launch import entry
from launch import horovod_build
from trainer import cli
from trainer import models
from trainer import strategy
from trainer.bench import output

flags.DEFINE_enum("model", "levi_hassner", models.names(), "Whose gradients are reduced.")
flags.DEFINE_integer("crop_size", images.CROP_SIZE, "The model's input side (its dense layers' "
                     "sizes follow from it).", lower_bound=1)
flags.DEFINE_integer("repeats", 10, "Timed calls of each compression, in turns.", lower_bound=1)
flags.DEFINE_string("out_dir", "runs/bench", "Where allreduce.jsonl is appended to.")
FLAGS = flags.FLAGS
RESULTS_FILE = "allreduce.jsonl"


def main(argv):
    del argv
    cli.start_process()
    backends = {compression: strategy.create("horovod", gradient_compression=compression)
                for compression in strategy.GRADIENT_COMPRESSIONS}
    chief = backends["none"]
    if chief.num_processes < 2:
        raise entry.UserError("one Horovod rank has nothing to all-reduce: run this under "
                              "horovodrun -np N (N >= 2)")
    out = output.open_jsonl(FLAGS.out_dir, RESULTS_FILE) if chief.is_chief else None
    gradients = model_gradients(FLAGS.model, FLAGS.crop_size, chief.process_index)
    milliseconds = time_reductions(backends, gradients, FLAGS.repeats)
    result = describe(FLAGS.model, chief, gradients, milliseconds)
    if out:
        with out:
            out.write(json.dumps(result) + "\n")
        print(summary(result), flush=True)
        print(json.dumps(result), flush=True)
    return 0


def model_gradients(model_name, crop_size, rank):
    """Random float32 tensors of the shapes (and order) of the model's gradients."""
    model = models.build(model_name, len(adience.AGE_GROUPS), None, crop_size=crop_size)
    return [tf.random.stateless_normal(variable.shape, seed=[index, rank]) * 1e-3
            for index, variable in enumerate(model.trainable_variables)]


def time_reductions(backends, gradients, repeats):
    """{compression: [milliseconds of each timed call]}, the compressions called in turns."""
    reductions = {compression: _reduction(backend) for compression, backend in backends.items()}
    barrier = backends["none"].sum
    for reduce in reductions.values():  # tracing and Horovod's first negotiation: untimed
        reduce(gradients).numpy()
    milliseconds = {compression: [] for compression in reductions}
    for _ in range(repeats):
        for compression, reduce in reductions.items():
            barrier(tf.constant(0)).numpy()  # every rank starts the call together
            started = time.perf_counter()
            reduce(gradients).numpy()
            milliseconds[compression].append(1000 * (time.perf_counter() - started))
    return milliseconds


def _reduction(backend):
    @tf.function
    def reduce(gradients):
        # An element of each reduced tensor: the call ends when every reduction has.
        return tf.stack([tf.reshape(g, [-1])[0] for g in backend.reduce_gradients(gradients)])

    return reduce


def describe(model_name, backend, gradients, milliseconds):
    """The JSON line: what was reduced, over what, and rank 0's times."""
    medians = {compression: statistics.median(times)
               for compression, times in milliseconds.items()}
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    return {"model": model_name, "ranks": backend.num_processes,
            "collectives": horovod_build.collectives() if on_gpu else "Gloo",
            "tensors": len(gradients),
            "gradient_bytes": sum(int(tf.size(g)) * g.dtype.size for g in gradients),
            "repeats": len(milliseconds["none"]), "median_ms": medians, "ms": milliseconds,
            "fp16_over_none": medians["fp16"] / medians["none"]}


def summary(result):
    medians = result["median_ms"]
    return (f"all-reduce of {result['model']}'s gradients ({result['tensors']} tensors, "
            f"{result['gradient_bytes'] / 1e6:.1f} MB in float32) over {result['ranks']} "
            f"Horovod ranks ({result['collectives']}), median of {result['repeats']} calls "
            f"each, in turns: float32 {medians['none']:.1f} ms, fp16 {medians['fp16']:.1f} "
            f"ms: fp16 takes {result['fp16_over_none']:.2f}x float32's time")


if __name__ == "__main__":
    entry.run(main)
