"""The resident sampler alone, beside the JPEG pipeline: batches made with no model, per core.

  python -m trainer.bench.sampler --records=runs/demo/records --cores=1 --out_dir=runs/bench

Both sources feed one device through the training's own feeds (trainer.data.train_feed), in
compiled calls of --steps_per_call batches, as the loop runs them; each batch is only read (its
largest pixel), not trained on:
- resident: trainer.resident's gather, crop and flip of the records decoded once (the decoding
  at start is not timed);
- records: the tf.data pipeline (read, parse, JPEG decode, crop, flip, batch), on --cores
  threads.
The process is bound to --cores of its cores first, so that each rate is what that many cores
give. The sources are measured in turns, --repeats times; each line shows the median of its
turns' images/s (min and max beside it) and the last their ratio. One JSON line goes to
OUT_DIR/sampler.jsonl.

What this is for: the JPEG path's images/s per core, against what one GPU trains, is how many
host cores a GPU would need to be fed from JPEG records (README, "Measuring training
throughput").
"""

import json
import os
import statistics
import time

from absl import flags

from launch import entry
from launch import host
from trainer import cli
from trainer.bench import output

SOURCES = ("resident", "records")
RESULTS_FILE = "sampler.jsonl"

cli.define_flags("records")
flags.DEFINE_integer("cores", 1, "Cores the process is bound to (its first ones).",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 50, "Images per batch (one device: the global batch).",
                     lower_bound=1)
flags.DEFINE_integer("crop_size", 227, "Crop side.", lower_bound=1)
flags.DEFINE_integer("steps_per_call", 10, "Batches made per compiled call.", lower_bound=1)
flags.DEFINE_float("seconds", 5.0, "Timed seconds per source and turn, after one untimed call.",
                   lower_bound=0.1)
flags.DEFINE_integer("repeats", 3, "Turns of the sources, interleaved.", lower_bound=1)
flags.DEFINE_string("out_dir", "runs/bench", "Where sampler.jsonl is appended to.")
flags.mark_flag_as_required("records")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cores = _bind(FLAGS.cores)
    cli.start_process()
    out = output.open_jsonl(FLAGS.out_dir, RESULTS_FILE)
    calls = {source: sampling_call(source, FLAGS.records, FLAGS.batch_size, FLAGS.crop_size,
                                   FLAGS.steps_per_call, threads=len(cores))
             for source in SOURCES}
    rates = {source: [] for source in SOURCES}
    for _ in range(FLAGS.repeats):
        for source, call in calls.items():
            rates[source].append(images_per_sec(call, FLAGS.batch_size, FLAGS.steps_per_call,
                                                FLAGS.seconds))
    result = {"records": os.path.abspath(FLAGS.records), "cores": len(cores),
              "batch_size": FLAGS.batch_size, "crop_size": FLAGS.crop_size,
              "steps_per_call": FLAGS.steps_per_call, "rates": rates,
              "images_per_sec": {source: statistics.median(r) for source, r in rates.items()}}
    with out:
        out.write(json.dumps(result) + "\n")
    for line in summary(result):
        print(line)
    return 0


def _bind(cores):
    """Binds this process to its first `cores` allowed cores (before TensorFlow sizes its
    thread pools from them); returns them."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise entry.UserError(f"--cores={cores}: this process may run on {len(allowed)}")
    host.bind(allowed[:cores])
    return allowed[:cores]


def sampling_call(source, records, batch_size, crop_size, steps_per_call, threads):
    """A function() that makes `steps_per_call` batches of `source` (one of SOURCES) on one
    device, reads each, and waits for the last."""
    import tensorflow as tf

    from input import batch as batch_lib
    from trainer import data
    from trainer import strategy

    backend = strategy.create("one_device")
    info = data.describe(source, records, "age", held_out_fold=0, crop_size=crop_size)
    feed = data.train_feed(backend, info, batch_size, start_step=0, seed=0,
                           deterministic=False, crop_size=crop_size, threads=threads)
    state = feed.start()

    def largest_pixel(inputs):
        return tf.reduce_max(feed.batch(inputs)[batch_lib.IMAGE])

    @tf.function
    def call(state, first_step):
        largest = tf.constant(0, tf.uint8)
        for step in tf.range(first_step, first_step + steps_per_call):
            inputs = feed.inputs(state, step)
            largest = tf.maximum(largest, backend.run(largest_pixel, (inputs,)))
        return largest

    steps = [0]

    def run():
        call(state, tf.constant(steps[0], tf.int64)).numpy()
        steps[0] += steps_per_call

    return run


def images_per_sec(call, batch_size, steps_per_call, seconds):
    """Images/s of `call` over at least `seconds`, after one untimed call."""
    call()  # tracing, compiling, the pipeline filling up
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls * steps_per_call * batch_size / (time.perf_counter() - started)


def summary(result):
    """The lines printed: each source's images/s, then resident over records."""
    rates = result["rates"]
    setting = (f"{result['batch_size']} images of {result['crop_size']}x{result['crop_size']} "
               f"per batch, {result['cores']} core(s), median of {len(rates['resident'])} turns")
    described = {"resident": "resident sampler (gather, crop, flip on the decoded records)",
                 "records": "JPEG pipeline (read, parse, decode, crop, flip, batch)"}
    lines = [f"{described[source]}: {statistics.median(r):,.0f} images/s (min {min(r):,.0f}, "
             f"max {max(r):,.0f}); {setting}; no model" for source, r in rates.items()]
    speeds = result["images_per_sec"]
    lines.append(f"resident / JPEG pipeline: {speeds['resident'] / speeds['records']:.1f}x "
                 f"on the same {result['cores']} core(s)")
    return lines


if __name__ == "__main__":
    entry.run(main)
