"""The training throughput matrix, measured the way tf_cnn_benchmarks does, with the real loop.

Every cell (model, global batch, precision, XLA, batch norm, data source, distribution, steps
per call, gradient compression) runs in its own process(es), one cell at a time
(`trainer.bench.worker`), and each runs `trainer.loop.train` itself, as trainer.main does: a
fresh temporary --model_dir, a log line every window of steps, its calls, its reads of the
metrics, its vote on stopping, a checkpoint and the held-out evaluation only at the end. Its
images/s are the loop's own `train/images_per_sec` of the windows after the warm-up ones (the
chief's metrics.jsonl): what the benchmark prints is what a training job gets. The median of
the windows is shown, min and max beside it. Only the data source differs between
"synthetic" (in-memory batches), "records" (the real pipeline), "cached_records" (the pipeline
with --cache) and "resident" (the records decoded once and held on the device).

Each cell also reports its achieved FLOP/s (3x the model's forward FLOPs per trained image)
against the machine's roof: the faster of a big matmul and the model's largest convolution,
measured in the same process after the training.
"""

import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from trainer import logs
from trainer.bench import charts
from trainer.bench import output
from trainer.bench import processes
from trainer.bench import scaling

ROOF_MATMUL = 2048  # a 4096 matmul is slower per FLOP than 2048 on these CPUs (FACTS.md)
ROOF_REPEATS = 5
# A cell's data -> (TrainConfig.data, TrainConfig.cache).
DATA_SOURCES = {"synthetic": ("synthetic", False), "records": ("records", False),
                "cached_records": ("records", True), "resident": ("resident", False)}
CELL_KEYS = ("model", "global_batch_size", "precision", "xla", "batch_norm", "data",
             "distribution", "steps_per_call", "gradient_compression")
IMAGES_PER_SEC = "train/images_per_sec"  # the loop's key in its log lines


def matrix(models, global_batch_sizes, precisions, xla, data, distributions, crop_size,
           records, batch_norms=("sync",), steps_per_calls=(1,), gradient_compressions=("none",)):
    """Every cell of the matrix, as plain dicts, in the order the table shows them.

    `batch_norms`: values of --batch_norm (trainer.strategy.BATCH_NORMS). A gradient
    compression compresses Horovod's all-reduce only: the other distributions' cells are
    measured once, uncompressed ("none"), whatever `gradient_compressions` holds (one of them
    is the one process that a compressed horovod:N cell is compared with).
    """
    cells = []
    for (model, batch, precision, compiled, batch_norm, source, distribution,
         steps_per_call) in itertools.product(models, global_batch_sizes, precisions, xla,
                                              batch_norms, data, distributions, steps_per_calls):
        for compression in _compressions(distribution, gradient_compressions):
            cells.append({"model": model, "global_batch_size": batch, "precision": precision,
                          "xla": compiled, "batch_norm": batch_norm, "data": source,
                          "distribution": distribution, "steps_per_call": steps_per_call,
                          "gradient_compression": compression, "crop_size": crop_size,
                          "records": records})
    return cells


def _compressions(distribution, gradient_compressions):
    if processes.Distribution.parse(distribution).strategy == "horovod":
        return gradient_compressions
    return ["none"]


def run_matrix(cells, steps, out_dir, repeats, bandwidth_gbit, gpu_step_seconds,
               allreduce=None):
    """Measures `cells` `repeats` times, interleaved; prints the table, the ratios and the
    scaling model; writes OUT_DIR/benchmark.jsonl and benchmark.png. Returns the exit code.

    Args:
      steps: {"warmup_steps", "window_steps", "windows"} of every cell.
      gpu_step_seconds: the scaling model's compute per step (None: the first one-process
        cell's measured step).
      allreduce: a measured all-reduce (trainer.bench.allreduce's JSON line) for the scaling
        model, or None.
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
                            reference["gradient_tensors"], bandwidth_gbit, measured=allreduce))
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
    """Runs in the cell's processes: trainer.loop.train on the cell's job, logging every
    `window_steps` steps; the images/s of its `windows` log lines after the warm-up (whole
    windows, at least `warmup_steps` steps), then the roof. Cells made elsewhere (gpu_check)
    may leave out steps_per_call (1) and gradient_compression ("none")."""
    import numpy as np

    from trainer import loop
    from trainer import models
    from trainer import strategy

    cell = {"steps_per_call": 1, "gradient_compression": "none", **cell}
    distribution = processes.Distribution.parse(cell["distribution"])
    backend = strategy.create(distribution.strategy, logical_cpus=distribution.logical_cpus,
                              gradient_compression=cell["gradient_compression"])
    config = train_config(cell, window_steps, threads)
    info = loop.describe_data(config)
    if config.cache:
        # The first epoch fills the cache: timed, it would measure the uncached pipeline plus
        # the copy into memory.
        warmup_steps = max(warmup_steps,
                           math.ceil(info.train_examples / cell["global_batch_size"]) + 1)
    warmup_steps = math.ceil(warmup_steps / window_steps) * window_steps
    total = warmup_steps + windows * window_steps
    with tempfile.TemporaryDirectory(prefix="agenet_benchmark_") as model_dir:
        # The held-out evaluation comes once, at the end: after the timed windows.
        loop.train(dataclasses.replace(config, model_dir=model_dir, steps=total,
                                       eval_every=total), backend, info)
        logged = logged_windows(model_dir, warmup_steps) if backend.is_chief else {}
    model = models.build(cell["model"], info.num_classes, info.mean_image,
                         crop_size=cell["crop_size"])
    roof = measure_roof(model, cell["global_batch_size"] // backend.num_replicas)
    if not backend.is_chief:
        return {**cell, "process": backend.process_index}
    # The processes of a job measure their roofs at the same time, each on its share of the
    # cores: the machine's roof is their sum.
    roof = {key: value * backend.num_processes for key, value in roof.items()}
    return with_rates({**cell, "warmup_steps": warmup_steps, "process": backend.process_index,
                       "window_ends": list(logged), "replicas": backend.num_replicas,
                       "flops_per_image": models.flops_per_image(model), **roof,
                       "trainable_parameters": int(sum(
                           np.prod(v.shape) for v in model.trainable_variables)),
                       "gradient_tensors": len(model.trainable_variables)},
                      list(logged.values()))


def train_config(cell, window_steps, threads):
    """The TrainConfig of `cell`'s job, but for its model_dir and length: the paper's recipe,
    a log line every `window_steps` steps, a checkpoint only at the end."""
    from trainer import loop
    from trainer import recipes

    source, cache = DATA_SOURCES[cell["data"]]
    return loop.TrainConfig(
        model_dir="", records=cell["records"], model=cell["model"], data=source, cache=cache,
        recipe=recipes.resolve("paper"), global_batch_size=cell["global_batch_size"],
        crop_size=cell["crop_size"], precision=cell["precision"], xla=cell["xla"],
        batch_norm=cell["batch_norm"], input_threads=threads,
        steps_per_call=cell["steps_per_call"], log_every=window_steps, checkpoint_every=0)


def logged_windows(model_dir, after_step):
    """{step: images/s} of each window the loop logged after step `after_step` (the chief's
    metrics.jsonl in `model_dir`)."""
    with open(os.path.join(model_dir, logs.METRICS_FILE)) as f:
        lines = [json.loads(line) for line in f]
    return {line["step"]: line[IMAGES_PER_SEC] for line in lines
            if IMAGES_PER_SEC in line and line["step"] > after_step}


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
    header = (f"{'model':<14} {'batch':>5} {'precision':<15} {'xla':<5} {'bn':<5} "
              f"{'data':<14} {'distribution':<12} {'calls':>5} {'grads':<5} {'images/s':>9} "
              f"{'min':>7} {'max':>7} {'% roof':>7}")
    lines = [header]
    for r in results:
        cell = (f"{r['model']:<14} {r['global_batch_size']:>5} {r['precision']:<15} "
                f"{str(r['xla']):<5} {r['batch_norm']:<5} {r['data']:<14} "
                f"{r['distribution']:<12} {r['steps_per_call']:>5} "
                f"{r['gradient_compression']:<5}")
        if "error" in r:
            lines.append(f"{cell} error: {r['error']}")
            continue
        lines.append(f"{cell} {r['images_per_sec']:>9.1f} {r['min']:>7.1f} {r['max']:>7.1f} "
                     f"{100 * r['fraction_of_roof']:>6.1f}%")
    return "\n".join(lines)


# Settings a ratio line names only when they differ from these.
QUIET_SETTINGS = {"xla": False, "batch_norm": "sync", "steps_per_call": 1,
                  "gradient_compression": "none"}


def _described(cell, *varied):
    """The settings of `cell` that a ratio line names: all but the `varied` ones, the quiet
    ones only when not at their usual value."""
    spelled = {"global_batch_size": "batch {}", "xla": "xla={}", "batch_norm": "{} batch norm",
               "steps_per_call": "{} steps/call", "gradient_compression": "{} gradients"}
    return ", ".join(spelled.get(key, "{}").format(cell[key]) for key in CELL_KEYS
                     if key not in varied and cell[key] != QUIET_SETTINGS.get(key, ...))


def ratios(results):
    """The side-by-side ratios the benchmark exists for, where the matrix holds both sides:
    each data source against synthetic batches, more steps per call against one, horovod:N
    and mirrored:N against one process (with and without compressed gradients), fp16
    gradients against none, synchronized batch norm against local."""
    measured = [r for r in results if "error" not in r]

    def twin(cell, **changes):
        wanted = {**{key: cell[key] for key in CELL_KEYS}, **changes}
        return next((r for r in measured if all(r[k] == v for k, v in wanted.items())), None)

    def ratio(cell, other):
        return f"{cell['images_per_sec'] / other['images_per_sec']:.2f}x"

    lines = []
    for r in measured:
        synthetic = r["data"] != "synthetic" and twin(r, data="synthetic")
        if synthetic:
            lines.append(f"{r['data']} / synthetic ({_described(r, 'data')}): "
                         f"{ratio(r, synthetic)} (target >= 0.95: training is not input-bound)")
        one_call = r["steps_per_call"] != 1 and twin(r, steps_per_call=1)
        if one_call:
            lines.append(f"{r['steps_per_call']} / 1 steps per call "
                         f"({_described(r, 'steps_per_call')}): {ratio(r, one_call)} (the "
                         f"host's launch of a call, paid once per {r['steps_per_call']} steps)")
        single = (r["distribution"] != "one_device"
                  and twin(r, distribution="one_device", gradient_compression="none"))
        if single:
            compressed = (f" with {r['gradient_compression']} gradients"
                          if r["gradient_compression"] != "none" else "")
            lines.append(f"{r['distribution']}{compressed} / one process "
                         f"({_described(r, 'distribution', 'gradient_compression')}): "
                         f"{ratio(r, single)} on the same cores (the distribution's overhead)")
        uncompressed = r["gradient_compression"] != "none" and twin(r, gradient_compression="none")
        if uncompressed:
            lines.append(f"{r['gradient_compression']} / uncompressed gradients "
                         f"({_described(r, 'gradient_compression')}): "
                         f"{ratio(r, uncompressed)} (Horovod's all-reduce of the gradients)")
        local = (r["batch_norm"] == "sync" and r["distribution"] != "one_device"
                 and twin(r, batch_norm="local"))
        if local:
            lines.append(f"sync / local batch norm ({_described(r, 'batch_norm')}): "
                         f"{ratio(r, local)} (the cost of normalising over the global batch)")
    return lines
