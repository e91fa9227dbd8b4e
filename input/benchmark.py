"""Measures the input side, side by side in one run, and prints the ratios that matter.

  python -m input.benchmark --adience_dir /tmp/synthetic --work_dir /tmp/input_bench

Builds the records from the Adience tree (JPEG with 1 and with 2 workers, and raw), then
measures images/s of:
- pipeline: the training pipeline as the trainer runs it (interleave, shuffle, decode, random
  crop and flip, batch);
- roof: the same tf.data read, parse and decode of the same records with the same parallelism,
  without crop, flip or batch;
- naive: what a user would write against the original JPEG tree: read, decode and resize each
  816x816 file in a parallel `Dataset.map` (what `keras.utils.image_dataset_from_directory`
  does);
- the pipeline on raw records (decoded pixels) instead of JPEG.
Targets: pipeline >= 0.9 x roof, >= 3 x naive; build with 2 workers >= 1.8 x with 1.
"""

import contextlib
import io
import json
import os
import shutil
import sys
import time

from absl import flags

from launch import entry
from launch import host

flags.DEFINE_string("adience_dir", None, "The Adience tree to read (input.synthetic's or real).")
flags.DEFINE_string("work_dir", "/tmp/agenet_input_benchmark", "Where records are built.")
flags.DEFINE_integer("pipeline_batch_size", 50, "Batch of one input pipeline (what one replica "
                     "gets per step), not the global batch.", lower_bound=1)
# The old spelling of --pipeline_batch_size, kept for now; out of --help (another module's).
flags.DEFINE_integer("batch_size", None, "Old spelling of --pipeline_batch_size.", lower_bound=1,
                     module_name="input.benchmark.old_spellings")
flags.DEFINE_float("seconds", 8.0, "Timed seconds per measurement, after the warm-up.")
flags.DEFINE_integer("repeats", 2, "Rounds of all measurements; the best of each is kept.")
flags.DEFINE_integer("shards", 8, "Shards per split of the built records.")
flags.mark_flag_as_required("adience_dir")
FLAGS = flags.FLAGS

WARMUP_SECONDS = 2.0
TARGETS = {"pipeline / roof": 0.9, "pipeline / naive": 3.0, "build 2 workers / 1": 1.8}


def main(argv):
    del argv
    pipeline_batch_size = _pipeline_batch_size()
    if not os.path.isdir(FLAGS.adience_dir):
        raise entry.UserError(f"--adience_dir={FLAGS.adience_dir}: no such folder")
    host.configure_threads()
    results = run(FLAGS.adience_dir, FLAGS.work_dir, pipeline_batch_size, FLAGS.seconds,
                  FLAGS.repeats, FLAGS.shards)
    print(json.dumps(results))


def _pipeline_batch_size():
    if not FLAGS["batch_size"].present:
        return FLAGS.pipeline_batch_size
    if FLAGS["pipeline_batch_size"].present:
        raise entry.UserError("--batch_size is the old spelling of --pipeline_batch_size: "
                              "give only --pipeline_batch_size")
    print("input.benchmark: --batch_size is now --pipeline_batch_size (one pipeline's batch, "
          "not the global batch); the old spelling still works for now", file=sys.stderr)
    return FLAGS.batch_size


def run(adience_dir, work_dir, pipeline_batch_size, seconds, repeats, shards):
    """Builds, measures and prints; returns the figures as a dict."""
    from input import build

    builds = {}
    for _ in range(repeats):  # best of the rounds, as for the pipelines
        for name, workers, image_format in (("jpeg_1", 1, "jpeg"), ("jpeg", 2, "jpeg"),
                                            ("raw", 2, "raw")):
            out = os.path.join(work_dir, name)
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # each build's summary table
                manifest = build.build(adience_dir, out, shards_per_split=shards,
                                       workers=workers, image_format=image_format)
            rate = sum(s["examples"] for s in manifest["splits"].values()) / (
                time.perf_counter() - started)
            builds[name] = max(builds.get(name, 0.0), rate)
    rates = _measure_pipelines(adience_dir, work_dir, pipeline_batch_size, seconds, repeats)
    cores = host.available_cores()
    ratios = {"pipeline / roof": rates["pipeline"] / rates["roof"],
              "pipeline / naive": rates["pipeline"] / rates["naive"],
              "build 2 workers / 1": builds["jpeg"] / builds["jpeg_1"],
              "raw / jpeg pipeline": rates["pipeline_raw"] / rates["pipeline"]}
    _print_table(rates, builds, ratios, cores)
    return {"images_per_sec": rates, "build_images_per_sec": builds, "ratios": ratios,
            "cores": cores}


def _measure_pipelines(adience_dir, work_dir, pipeline_batch_size, seconds, repeats):
    from input import pipeline
    from input import records

    jpeg = records.load(os.path.join(work_dir, "jpeg"))
    raw = records.load(os.path.join(work_dir, "raw"))
    splits = jpeg.split_names
    batch = pipeline_batch_size
    candidates = {
        "pipeline": (pipeline.train_dataset(jpeg, splits, batch), batch),
        "roof": (_roof(jpeg, splits), 1),
        "naive": (_naive(adience_dir, jpeg, batch), batch),
        "pipeline_raw": (pipeline.train_dataset(raw, splits, batch), batch),
    }
    best = {name: 0.0 for name in candidates}
    for _ in range(repeats):  # interleaved rounds: a slow spell of the machine hits all alike
        for name, (dataset, images_per_element) in candidates.items():
            best[name] = max(best[name], _rate(dataset, images_per_element, seconds))
    return best


def _roof(folder, splits):
    """The pipeline's read, parse and decode alone, with the same files and parallelism."""
    import tensorflow as tf

    from input import pipeline

    files = folder.files(folder.shards(splits))
    return (pipeline.interleave(files, deterministic=False)
            .map(folder.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
            .repeat().prefetch(tf.data.AUTOTUNE))


def _naive(adience_dir, folder, pipeline_batch_size):
    """Read, decode and resize the original files in parallel, as a user's first try would."""
    import tensorflow as tf

    from input import adience

    settings = folder.settings
    examples, _ = adience.read_examples(adience_dir, task=settings["task"],
                                        age_rule=settings["age_labels"],
                                        layout=settings["layout"])

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.cast(tf.image.resize(image, [settings["image_size"]] * 2), tf.uint8), label

    return (tf.data.Dataset.from_tensor_slices(([e.path for e in examples],
                                                [e.label(settings["task"]) for e in examples]))
            .shuffle(len(examples)).repeat()
            .map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(pipeline_batch_size).prefetch(tf.data.AUTOTUNE))


def _rate(dataset, images_per_element, seconds):
    iterator = iter(dataset)
    _drain(iterator, WARMUP_SECONDS)
    count, elapsed = _drain(iterator, seconds)
    return count * images_per_element / elapsed


def _drain(iterator, seconds):
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        next(iterator)
        count += 1
    return count, time.perf_counter() - started


def _print_table(rates, builds, ratios, cores):
    print(f"{'measurement':28} {'images/s':>9} {'per core':>9}")
    for name, rate in list(rates.items()) + [(f"build ({k})", v) for k, v in builds.items()]:
        print(f"{name:28} {rate:9.0f} {rate / cores:9.0f}")
    for name, ratio in ratios.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else (
            f"  target >= {target}: {'met' if ratio >= target else 'NOT met'}")
        print(f"{name:28} {ratio:9.2f}x{verdict}")


if __name__ == "__main__":
    entry.run(main)
