"""Training throughput, measured the way tf_cnn_benchmarks does, with the real training step.

  python -m trainer.benchmark --records=runs/demo/records --out_dir=runs/benchmark
  python -m trainer.benchmark --data=synthetic,records --xla=false,true \\
      --precisions=fp32,mixed_bfloat16 --batch_sizes=32,64 --models=levi_hassner,resnet \\
      --distributions=one_device,horovod:2,mirrored:2

Every cell of the matrix runs in its own process(es), one cell at a time: warm-up steps are
excluded, then images/s is the median of timed windows (min and max beside it). A cell reuses
trainer.loop's job and step; only the data source differs between "synthetic" (in-memory
batches) and "records" (the real pipeline). Each cell also reports its achieved FLOP/s (3x the
model's forward FLOPs per trained image) against the machine's roof: the faster of a big matmul
and the model's largest convolution, measured in the same process. The table and the ratios
that matter go to stdout, one JSON line per cell and run to OUT_DIR/benchmark.jsonl, and a
chart to OUT_DIR/benchmark.png. On a shared, noisy machine, --repeats=3 runs the matrix three
times interleaved and takes each cell's figures over all its windows.

  python -m trainer.benchmark --mode=time_to_accuracy --records=runs/demo/records_64 \\
      --crop_size=56 --budget_seconds=1200

races the paper's network and recipe against improved ones to a held-out accuracy
(trainer.time_to_accuracy): a table, the ratio, OUT_DIR/time_to_accuracy.{jsonl,png}.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from trainer import charts
from trainer import cli
from trainer import scaling
from trainer import time_to_accuracy

cli.define_flags("records", "logical_cpus")
flags.DEFINE_string("out_dir", "runs/benchmark", "Where benchmark.jsonl is written.")
flags.DEFINE_list("models", ["levi_hassner"], "Models to measure.")
flags.DEFINE_list("batch_sizes", ["32"], "Global batch sizes.")
flags.DEFINE_list("precisions", ["fp32"], "fp32, mixed_float16, mixed_bfloat16.")
flags.DEFINE_list("xla", ["false"], "false and/or true.")
flags.DEFINE_list("data", ["synthetic", "records"], "synthetic (in memory), records (the "
                  "pipeline) and/or cached_records (the pipeline with --cache: records "
                  "decoded once, kept in memory).")
flags.DEFINE_list("distributions", ["one_device"], "one_device, horovod:N (N processes over "
                  "Gloo on this host), mirrored:N (N logical devices without a GPU).")
flags.DEFINE_integer("crop_size", 227, "Crop side.")
flags.DEFINE_integer("warmup_steps", 5, "Steps before timing (tracing, autotuning).")
flags.DEFINE_integer("window_steps", 5, "Steps per timed window.")
flags.DEFINE_integer("windows", 5, "Timed windows per cell.")
flags.DEFINE_integer("repeats", 1, "Runs of the whole matrix, interleaved (A B A B): a drift in "
                     "the machine's load then falls on every cell alike. A cell's figures are "
                     "over the windows of all its runs.")
flags.DEFINE_float("bandwidth_gbit", 25.0, "Network bandwidth of the scaling model (Gbit/s).")
flags.DEFINE_float("gpu_step_seconds", None, "Compute time of one step on one GPU for the "
                   "scaling model (default: the first one-process cell's measured step).")
flags.DEFINE_string("cell", None, "Internal: measure this one cell (JSON) and print it.")
flags.DEFINE_enum("mode", "throughput", ["throughput", "time_to_accuracy"], "What to measure.")
flags.DEFINE_string("baseline", "levi_hassner:paper", "time_to_accuracy: MODEL:RECIPE"
                    "[:PRECISION] whose best held-out accuracy within the budget is the target.")
flags.DEFINE_list("improved", ["resnet:modern"], "time_to_accuracy: MODEL:RECIPE[:PRECISION] "
                  "of each contender raced to it.")
flags.DEFINE_float("budget_seconds", 1200, "time_to_accuracy: training seconds per race.")
flags.DEFINE_float("target_accuracy", None, "time_to_accuracy: a fixed target (0-1) instead "
                   "of the baseline's best.")
flags.DEFINE_float("eval_every_seconds", None, "time_to_accuracy: training seconds between "
                   "evaluations (default: the budget / 40).")
flags.DEFINE_integer("smoothing", 3, "time_to_accuracy: evaluations averaged before comparing "
                     "with the target (1: a single evaluation).", lower_bound=1)
flags.DEFINE_float("improved_epochs", 0, "time_to_accuracy: the improved recipe's length in "
                   "epochs (0: the recipe's own).")
flags.DEFINE_integer("seed", 0, "time_to_accuracy: the seed of every race (initial weights, "
                     "order, crops); repeat with others to see the spread.")
flags.DEFINE_bool("cache", False, "time_to_accuracy: every race keeps its decoded training "
                  "records in memory (trainer.main's --cache), so that a fast network is not "
                  "held back by JPEG decoding on the cores it trains on.")
flags.DEFINE_string("race", None, "Internal: run this one race (JSON) and print its result.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS
RESULT_PREFIX = "BENCHMARK_CELL "  # marks a cell's result line in its process's output
ROOF_MATMUL = 2048  # a 4096 matmul is slower per FLOP than 2048 on these CPUs (FACTS.md)
ROOF_REPEATS = 5
DATA_SOURCES = ("synthetic", "records", "cached_records")
CELL_KEYS = ("model", "global_batch_size", "precision", "xla", "data", "distribution")


def matrix():
    """Every cell of the matrix the flags ask for, as plain dicts."""
    return [{"model": model, "global_batch_size": int(batch), "precision": precision,
             "xla": xla == "true", "data": source, "distribution": distribution,
             "crop_size": FLAGS.crop_size, "records": FLAGS.records}
            for model in FLAGS.models for batch in FLAGS.batch_sizes
            for precision in FLAGS.precisions for xla in FLAGS.xla for source in FLAGS.data
            for distribution in FLAGS.distributions]


def process_command(distribution, *module_flags):
    """This module with `module_flags` in the processes of `distribution`: under horovodrun
    for horovod:N, over N logical devices for mirrored:N."""
    strategy, _, count = distribution.partition(":")
    command = [sys.executable, "-m", "trainer.benchmark", *module_flags]
    if strategy == "horovod":
        horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        return [horovodrun, "--gloo", "-np", count, "-H", f"localhost:{count}", *command]
    if strategy == "mirrored":
        return command + [f"--logical_cpus={count}"]
    return command


def cell_command(cell, timing):
    """The command that measures one cell: this module in --cell mode."""
    return process_command(cell["distribution"], f"--cell={json.dumps(cell)}",
                           *(f"--{key}={value}" for key, value in timing.items()))


def run_cell(cell, timing):
    """Measures one cell in new processes; returns its result (rank 0's) or its error."""
    result = subprocess.run(cell_command(cell, timing), capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if RESULT_PREFIX in line:
            measured = json.loads(line.split(RESULT_PREFIX, 1)[1])
            if measured.get("process", 0) == 0:
                return measured
    return {**cell, "error": (result.stderr.strip().splitlines() or ["no output"])[-1]}


def measure(cell, warmup_steps, window_steps, windows, threads):
    """Runs in the cell's process: the real job and step, timed after warm-up."""
    import numpy as np

    from trainer import loop
    from trainer import models
    from trainer import recipes
    from trainer import strategy

    strategy_name = cell["distribution"].partition(":")[0]
    backend = strategy.create(strategy_name, logical_cpus=FLAGS.logical_cpus)
    config = loop.TrainConfig(
        model_dir="", records=cell["records"], model=cell["model"],
        data="synthetic" if cell["data"] == "synthetic" else "records",
        cache=cell["data"] == "cached_records",
        recipe=recipes.resolve("paper", global_batch_size=cell["global_batch_size"]),
        crop_size=cell["crop_size"], precision=cell["precision"], xla=cell["xla"],
        input_threads=threads)
    job = loop.prepare(config, backend)
    step, stream = loop.train_step(job), loop.batches(job, 0)
    if cell["data"] == "cached_records":
        # The first epoch fills the cache: timed, it would measure the uncached pipeline plus
        # the copy into memory.
        warmup_steps = max(warmup_steps, job.plan["steps_per_epoch"] + 1)
    for _ in range(warmup_steps):
        float(step(next(stream))["loss"])
    rates = []
    for _ in range(windows):
        started = time.perf_counter()
        for _ in range(window_steps):
            loss = step(next(stream))["loss"]
        float(loss)  # the window ends when its last step has
        rates.append(window_steps * cell["global_batch_size"] / (time.perf_counter() - started))
    flops_per_image = models.flops_per_image(job.model)
    roof = measure_roof(job.model, cell["global_batch_size"] // backend.num_replicas)
    # The processes of a job measure their roofs at the same time, each on its share of the
    # cores: the machine's roof is their sum.
    roof = {key: value * backend.num_processes for key, value in roof.items()}
    return with_rates({**cell, "warmup_steps": warmup_steps, "process": backend.process_index,
                       "replicas": backend.num_replicas, "flops_per_image": flops_per_image,
                       **roof, "trainable_parameters": int(sum(
                           np.prod(v.shape) for v in job.model.trainable_variables)),
                       "gradient_tensors": len(job.model.trainable_variables)}, rates)


def with_rates(result, rates):
    """`result` with the figures of its timed windows' images/s: the median, min and max, and
    the FLOP/s achieved at the median against the roof."""
    images_per_sec = statistics.median(rates)
    achieved = 3 * result["flops_per_image"] * images_per_sec  # forward + backward (2x)
    return {**result, "rates": rates, "images_per_sec": images_per_sec, "min": min(rates),
            "max": max(rates), "images_per_sec_per_replica": images_per_sec / result["replicas"],
            "achieved_flops": achieved, "fraction_of_roof": achieved / result["roof_flops"]}


def merged(runs):
    """One result per cell from its runs (--repeats): the figures over all their windows,
    against the highest roof any run measured. A cell with a failed run is that failure."""
    cells = {}
    for run in runs:
        cells.setdefault(tuple(run[key] for key in CELL_KEYS), []).append(run)
    results = []
    for cell_runs in cells.values():
        failed = [run for run in cell_runs if "error" in run]
        if failed:
            results.append(failed[0])
            continue
        highest_roof = max(cell_runs, key=lambda run: run["roof_flops"])
        rates = [rate for run in cell_runs for rate in run["rates"]]
        results.append(with_rates({**highest_roof, "runs": len(cell_runs)}, rates))
    return results


def measure_roof(model, batch_size):
    """FLOP/s of a ROOF_MATMUL matmul and of the model's largest convolution (forward), in
    this process; the roof is the faster. On one machine the processes share it."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.models import nesting

    def rate(fn, flops):
        fn()  # trace and warm up
        started = time.perf_counter()
        for _ in range(ROOF_REPEATS):
            result = fn()
        float(tf.reduce_sum(result))
        return ROOF_REPEATS * flops / (time.perf_counter() - started)

    square = tf.random.normal([ROOF_MATMUL, ROOF_MATMUL])
    matmul = rate(tf.function(lambda: tf.matmul(square, square)), 2 * ROOF_MATMUL ** 3)
    convolutions = [layer for layer in nesting.all_layers(model)
                    if isinstance(layer, keras.layers.Conv2D)]
    conv = 0.0
    if convolutions:
        def cost(layer):
            return np.prod(layer.kernel.shape) * np.prod(layer.output.shape[1:-1])
        largest = max(convolutions, key=cost)
        inputs = tf.random.normal([batch_size, *largest.input.shape[1:]])
        conv = rate(tf.function(lambda: largest(inputs)), 2 * batch_size * cost(largest))
    return {"roof_matmul_flops": matmul, "roof_conv_flops": conv,
            "roof_flops": max(matmul, conv)}


def table(results):
    header = (f"{'model':<14} {'batch':>5} {'precision':<15} {'xla':<5} {'data':<9} "
              f"{'distribution':<12} {'images/s':>9} {'min':>7} {'max':>7} {'% roof':>7}")
    lines = [header]
    for r in results:
        if "error" in r:
            lines.append(f"{r['model']:<14} {r['global_batch_size']:>5} {r['precision']:<15} "
                         f"{str(r['xla']):<5} {r['data']:<9} {r['distribution']:<12} "
                         f"error: {r['error']}")
            continue
        lines.append(f"{r['model']:<14} {r['global_batch_size']:>5} {r['precision']:<15} "
                     f"{str(r['xla']):<5} {r['data']:<9} {r['distribution']:<12} "
                     f"{r['images_per_sec']:>9.1f} {r['min']:>7.1f} {r['max']:>7.1f} "
                     f"{100 * r['fraction_of_roof']:>6.1f}%")
    return "\n".join(lines)


def ratios(results):
    """The side-by-side ratios the benchmark exists for, where the matrix holds both sides."""
    measured = [r for r in results if "error" not in r]

    def twin(cell, **changes):
        wanted = {**{key: cell[key] for key in CELL_KEYS}, **changes}
        return next((r for r in measured if all(r[k] == v for k, v in wanted.items())), None)

    lines = []
    for r in measured:
        synthetic = r["data"] != "synthetic" and twin(r, data="synthetic")
        if synthetic:
            lines.append(f"{r['data']} / synthetic ({r['model']}, {r['distribution']}, "
                         f"{r['precision']}, xla={r['xla']}): "
                         f"{r['images_per_sec'] / synthetic['images_per_sec']:.2f}x "
                         f"(target >= 0.95: training is not input-bound)")
        single = r["distribution"] != "one_device" and twin(r, distribution="one_device")
        if single:
            lines.append(f"{r['distribution']} / one process ({r['model']}, {r['data']}): "
                         f"{r['images_per_sec'] / single['images_per_sec']:.2f}x on the same "
                         f"cores (target >= 0.9: the distribution's overhead)")
    return lines


def main(argv):
    del argv
    threads = cli.start_process()
    if FLAGS.mode == "time_to_accuracy":
        return race_main(threads)
    timing = {"warmup_steps": FLAGS.warmup_steps, "window_steps": FLAGS.window_steps,
              "windows": FLAGS.windows}
    if FLAGS.cell:
        result = measure(json.loads(FLAGS.cell), threads=threads["intra_op"], **timing)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    unknown = sorted(set(FLAGS.data) - set(DATA_SOURCES))
    if unknown:
        print(f"error: --data {','.join(unknown)}: not one of {', '.join(DATA_SOURCES)}",
              file=sys.stderr)
        return cli.ERROR_EXIT_CODE
    cells = matrix()
    if any(cell["data"] != "synthetic" for cell in cells):
        cli.require("records")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    runs = []
    with open(os.path.join(FLAGS.out_dir, "benchmark.jsonl"), "a") as out:
        for repeat in range(FLAGS.repeats):
            for number, cell in enumerate(cells, 1):
                print(f"[{repeat * len(cells) + number}/{FLAGS.repeats * len(cells)}] "
                      f"{json.dumps(cell)}", file=sys.stderr, flush=True)
                runs.append({**run_cell(cell, timing), "repeat": repeat})
                out.write(json.dumps(runs[-1]) + "\n")
                out.flush()
    results = merged(runs)
    print(table(results))
    print(f"chart: {charts.throughput(results, os.path.join(FLAGS.out_dir, 'benchmark.png'))}")
    for line in ratios(results):
        print(line)
    reference = next((r for r in results if "error" not in r and
                      r["distribution"] == "one_device"), None)
    if reference:
        step_seconds = (FLAGS.gpu_step_seconds or
                        reference["global_batch_size"] / reference["images_per_sec"])
        print(scaling.table(step_seconds, reference["trainable_parameters"],
                            reference["gradient_tensors"], FLAGS.bandwidth_gbit))
    return 0 if all("error" not in r for r in results) else 1


def race_command(race):
    """The command that runs one race: this module in --race mode."""
    return process_command(race.distribution, "--mode=time_to_accuracy",
                           f"--race={json.dumps(dataclasses.asdict(race))}")


def race_main(threads):
    """--mode=time_to_accuracy: the baseline's race sets the target, the improved ones run to
    it; or, with --race, one race in this process."""
    if FLAGS.race:
        race = time_to_accuracy.Race(**json.loads(FLAGS.race))
        result = time_to_accuracy.train_and_evaluate(race, threads["intra_op"],
                                                     FLAGS.logical_cpus)
        print(time_to_accuracy.RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    cli.require("records")
    try:
        baseline_contender = time_to_accuracy.contender(FLAGS.baseline)
        improved_contenders = [time_to_accuracy.contender(spec) for spec in FLAGS.improved]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return cli.ERROR_EXIT_CODE
    common = {"records": FLAGS.records, "crop_size": FLAGS.crop_size,
              "budget_seconds": FLAGS.budget_seconds,
              "eval_every_seconds": FLAGS.eval_every_seconds or FLAGS.budget_seconds / 40,
              "distribution": FLAGS.distributions[0], "smoothing": FLAGS.smoothing,
              "seed": FLAGS.seed, "cache": FLAGS.cache}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    try:
        print(f"baseline: {FLAGS.baseline} for {FLAGS.budget_seconds:g} s of training",
              file=sys.stderr, flush=True)
        baseline = time_to_accuracy.run_race(time_to_accuracy.Race(
            "baseline", **baseline_contender, **common), race_command)
        target = FLAGS.target_accuracy or max(p["smoothed"] for p in baseline["curve"])
        improved = []
        for number, contender in enumerate(improved_contenders, 1):
            print(f"improved {number}: {FLAGS.improved[number - 1]} to {100 * target:.1f}%",
                  file=sys.stderr, flush=True)
            improved.append(time_to_accuracy.run_race(time_to_accuracy.Race(
                f"improved {number}", **contender, epochs=FLAGS.improved_epochs,
                target=target, **common), race_command))
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with open(os.path.join(FLAGS.out_dir, "time_to_accuracy.jsonl"), "a") as out:
        for race in (baseline, *improved):
            out.write(json.dumps({**race, "target": target}) + "\n")
    chart = charts.time_to_accuracy([baseline, *improved], target,
                                    os.path.join(FLAGS.out_dir, "time_to_accuracy.png"))
    print(f"time to accuracy: {FLAGS.records}, held-out fold 0, {FLAGS.crop_size}x"
          f"{FLAGS.crop_size} crops, budget {FLAGS.budget_seconds:g} s of training, "
          f"seed {FLAGS.seed}")
    for line in time_to_accuracy.summary(baseline, improved, target):
        print(line)
    print(f"chart: {chart}")
    return 0


if __name__ == "__main__":
    app.run(main)
