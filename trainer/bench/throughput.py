"""The training throughput matrix, measured the way tf_cnn_benchmarks does, with the real step.

Every cell (model, global batch, precision, XLA, batch norm, data source, distribution) runs in
its own
process(es), one cell at a time (`trainer.bench.worker`): warm-up steps are excluded, then
images/s is the median of timed windows (min and max beside it). A cell reuses trainer.loop's
job and step; only the data source differs between "synthetic" (in-memory batches) and
"records" (the real pipeline). Each cell also reports its achieved FLOP/s (3x the model's
forward FLOPs per trained image) against the machine's roof: the faster of a big matmul and the
model's largest convolution, measured in the same process.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from trainer.bench import charts
from trainer.bench import output
from trainer.bench import processes
from trainer.bench import scaling
from trainer.bench import timing

ROOF_MATMUL = 2048  # a 4096 matmul is slower per FLOP than 2048 on these CPUs (FACTS.md)
ROOF_REPEATS = 5
DATA_SOURCES = ("synthetic", "records", "cached_records")
CELL_KEYS = ("model", "global_batch_size", "precision", "xla", "batch_norm", "data",
             "distribution")


def matrix(models, global_batch_sizes, precisions, xla, data, distributions, crop_size,
           records, batch_norms=("sync",)):
    """Every cell of the matrix, as plain dicts, in the order the table shows them.
    `batch_norms`: values of --batch_norm (trainer.strategy.BATCH_NORMS)."""
    return [{"model": model, "global_batch_size": batch, "precision": precision,
             "xla": compiled, "batch_norm": batch_norm, "data": source,
             "distribution": distribution, "crop_size": crop_size, "records": records}
            for model in models for batch in global_batch_sizes for precision in precisions
            for compiled in xla for batch_norm in batch_norms for source in data
            for distribution in distributions]


def run_matrix(cells, steps, out_dir, repeats, bandwidth_gbit, gpu_step_seconds):
    """Measures `cells` `repeats` times, interleaved; prints the table, the ratios and the
    scaling model; writes OUT_DIR/benchmark.jsonl and benchmark.png. Returns the exit code.

    Args:
      steps: {"warmup_steps", "window_steps", "windows"} of every cell.
      gpu_step_seconds: the scaling model's compute per step (None: the first one-process
        cell's measured step).
    """
    runs = []
    with output.open_jsonl(out_dir, "benchmark.jsonl") as out:
        for repeat in range(repeats):
            for number, cell in enumerate(cells, 1):
                print(f"[{repeat * len(cells) + number}/{repeats * len(cells)}] "
                      f"{json.dumps(cell)}", file=sys.stderr, flush=True)
                runs.append({**run_cell(cell, steps), "repeat": repeat})
                out.write(json.dumps(runs[-1]) + "\n")
                out.flush()
    results = merged(runs)
    print(table(results))
    print(f"chart: {charts.throughput(results, os.path.join(out_dir, 'benchmark.png'))}")
    for line in ratios(results):
        print(line)
    reference = next((r for r in results if "error" not in r and
                      r["distribution"] == "one_device"), None)
    if reference:
        step_seconds = (gpu_step_seconds or
                        reference["global_batch_size"] / reference["images_per_sec"])
        print(scaling.table(step_seconds, reference["trainable_parameters"],
                            reference["gradient_tensors"], bandwidth_gbit))
    return 0 if all("error" not in r for r in results) else 1


def run_cell(cell, steps):
    """Measures one cell in new processes; returns its result (rank 0's) or its error."""
    command = processes.worker_command("cell", {"cell": cell, **steps}, cell["distribution"])
    result = subprocess.run(command, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        measured = processes.read_result(line)
        if measured and measured.get("process", 0) == 0:
            return measured
    return {**cell, "error": (result.stderr.strip().splitlines() or ["no output"])[-1]}


def measure(cell, warmup_steps, window_steps, windows, threads):
    """Runs in the cell's process: the real job and step, timed after warm-up."""
    import numpy as np

    from trainer import loop
    from trainer import models
    from trainer import recipes
    from trainer import strategy

    distribution = processes.Distribution.parse(cell["distribution"])
    backend = strategy.create(distribution.strategy, logical_cpus=distribution.logical_cpus)
    config = loop.TrainConfig(
        model_dir="", records=cell["records"], model=cell["model"],
        data="synthetic" if cell["data"] == "synthetic" else "records",
        cache=cell["data"] == "cached_records",
        recipe=recipes.resolve("paper"), global_batch_size=cell["global_batch_size"],
        crop_size=cell["crop_size"], precision=cell["precision"], xla=cell["xla"],
        batch_norm=cell["batch_norm"], input_threads=threads)
    job = loop.prepare(config, backend)
    timer = timing.StepTimer(job)
    if cell["data"] == "cached_records":
        # The first epoch fills the cache: timed, it would measure the uncached pipeline plus
        # the copy into memory.
        warmup_steps = max(warmup_steps, job.plan["steps_per_epoch"] + 1)
    timer.warm_up(warmup_steps)
    rates = [window_steps * cell["global_batch_size"] / timer.window(window_steps)
             for _ in range(windows)]
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
    header = (f"{'model':<14} {'batch':>5} {'precision':<15} {'xla':<5} {'bn':<5} {'data':<9} "
              f"{'distribution':<12} {'images/s':>9} {'min':>7} {'max':>7} {'% roof':>7}")
    lines = [header]
    for r in results:
        cell = (f"{r['model']:<14} {r['global_batch_size']:>5} {r['precision']:<15} "
                f"{str(r['xla']):<5} {r['batch_norm']:<5} {r['data']:<9} {r['distribution']:<12}")
        if "error" in r:
            lines.append(f"{cell} error: {r['error']}")
            continue
        lines.append(f"{cell} {r['images_per_sec']:>9.1f} {r['min']:>7.1f} {r['max']:>7.1f} "
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
        local = (r["batch_norm"] == "sync" and r["distribution"] != "one_device"
                 and twin(r, batch_norm="local"))
        if local:
            lines.append(f"sync / local batch norm ({r['model']}, {r['distribution']}, "
                         f"{r['data']}): {r['images_per_sec'] / local['images_per_sec']:.2f}x "
                         f"(the cost of normalising over the global batch)")
    return lines
