"""Training throughput: a matrix of cells, each one run of the training loop (trainer.bench).

  python -m trainer.benchmark --records=runs/demo/records --out_dir=runs/benchmark
  python -m trainer.benchmark --data=synthetic,records,resident --xla=false,true \\
      --precisions=fp32,mixed_bfloat16 --batch_sizes=32,64 --models=levi_hassner,resnet \\
      --distributions=one_device,horovod:2,mirrored:2
  python -m trainer.benchmark --models=tiny --data=synthetic --steps_per_call=1,10 \\
      --window_steps=20
  python -m trainer.benchmark --distributions=one_device,horovod:2 \\
      --gradient_compression=none,fp16 --allreduce_jsonl=runs/bench/allreduce.jsonl
  python -m trainer.benchmark --models=levi_hassner_bn --batch_norms=sync,local \\
      --data=synthetic --distributions=mirrored:2,horovod:2

Every cell runs trainer.loop.train in its own process(es), one cell at a time, logging every
--window_steps steps: the warm-up windows are excluded, then images/s is the median of the
loop's own logged images/s (min and max beside it), with the FLOP/s achieved against the
machine's roof. The table and the ratios that matter go to stdout, one JSON line per cell and
run to OUT_DIR/benchmark.jsonl, a chart to OUT_DIR/benchmark.png, and a model of scaling to
many GPUs follows (with the all-reduce measured by trainer.bench.allreduce beside it, given
--allreduce_jsonl). On a shared, noisy machine, --repeats=3 runs the matrix three times
interleaved and takes each cell's figures over all its windows.

Time to accuracy has its own entry point, trainer.time_to_accuracy; the old spelling
`--mode=time_to_accuracy` still runs it, after a line that says so.

Exit codes: 0 when every cell was measured, 1 when one failed, 2 for bad flags.
"""

import os
import shlex
import sys

from absl import flags

from launch import entry
from trainer import cli
from trainer import loop
from trainer import models
from trainer import strategy
from trainer.bench import processes
from trainer.bench import scaling
from trainer.bench import throughput

cli.define_flags("records")
flags.DEFINE_string("out_dir", "runs/benchmark", "Where benchmark.jsonl and benchmark.png are "
                    "written.")
flags.DEFINE_list("models", ["levi_hassner"], "Models to measure.")
flags.DEFINE_list("batch_sizes", ["32"], "Global batch sizes.")
flags.DEFINE_list("precisions", ["fp32"], "fp32, mixed_float16, mixed_bfloat16.")
flags.DEFINE_list("xla", ["false"], "false and/or true.")
flags.DEFINE_list("batch_norms", ["sync"], "sync and/or local (--batch_norm of trainer.main: "
                  "batch norm over the global batch or each replica's slice).")
flags.DEFINE_list("data", ["synthetic", "records"], "synthetic (in memory), records (the "
                  "pipeline), cached_records (the pipeline with --cache: records decoded once, "
                  "kept in memory) and/or resident (--data=resident: decoded once, held on "
                  "the device, batches cut there).")
flags.DEFINE_list("distributions", ["one_device"], "one_device, horovod:N (N processes over "
                  "Gloo on this host), mirrored:N (N logical devices without a GPU).")
flags.DEFINE_list("steps_per_call", ["1"], "Values of --steps_per_call (training steps per "
                  "call of the compiled step); each must divide --window_steps.")
flags.DEFINE_list("gradient_compression", ["none"], "none and/or fp16 (Horovod's all-reduce "
                  "in float16): fp16 applies to horovod:N cells; the others are measured once, "
                  "uncompressed.")
flags.DEFINE_integer("crop_size", 227, "Crop side.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 5, "Steps before timing (tracing, autotuning), rounded "
                     "up to whole windows.", lower_bound=0)
flags.DEFINE_integer("window_steps", 5, "Steps per timed window: the loop logs its images/s "
                     "every this many steps.", lower_bound=1)
flags.DEFINE_integer("windows", 5, "Timed windows per cell.", lower_bound=1)
flags.DEFINE_integer("repeats", 1, "Runs of the whole matrix, interleaved (A B A B): a drift in "
                     "the machine's load then falls on every cell alike. A cell's figures are "
                     "over the windows of all its runs.", lower_bound=1)
flags.DEFINE_float("bandwidth_gbit", 25.0, "Network bandwidth of the scaling model (Gbit/s).")
flags.DEFINE_float("gpu_step_seconds", None, "Compute time of one step on one GPU for the "
                   "scaling model (default: the first one-process cell's measured step).")
flags.DEFINE_string("allreduce_jsonl", None, "allreduce.jsonl of trainer.bench.allreduce: its "
                    "last measured all-reduce (float32 and fp16) is set beside the scaling "
                    "model's.")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS
XLA_VALUES = ("false", "true")


def _each_one_of(flag, allowed):
    """A validator of list flag `flag`: every value is one of `allowed`; the error names the
    others."""
    def check(values):
        unknown = [value for value in values if value not in allowed]
        if unknown:
            raise flags.ValidationError(f"--{flag} {','.join(unknown)}: not one of "
                                        f"{', '.join(allowed)}")
        return True
    flags.register_validator(flag, check)


def _check_distributions(values):
    for value in values:
        try:
            processes.Distribution.parse(value)
        except ValueError as error:
            raise flags.ValidationError(f"--distributions {error}") from error
    return True


def _positive_integers(flag, what):
    """A validator of list flag `flag`: every value an integer > 0 (`what`)."""
    def check(values):
        if not all(value.isdigit() and int(value) > 0 for value in values):
            raise flags.ValidationError(f"--{flag} {','.join(values)}: each {what} > 0")
        return True
    flags.register_validator(flag, check)


def _calls_fit_windows(values):
    """A window of a number of steps that a call length does not divide would be run in
    shorter calls (the loop ends a call at each log) than its cell says."""
    calls = [int(value) for value in values["steps_per_call"] if value.isdigit()]
    return all(values["window_steps"] % count == 0 for count in calls)


_each_one_of("models", models.names())
_each_one_of("precisions", sorted(loop.PRECISIONS))
_each_one_of("xla", XLA_VALUES)
_each_one_of("batch_norms", strategy.BATCH_NORMS)
_each_one_of("data", tuple(throughput.DATA_SOURCES))
_each_one_of("gradient_compression", strategy.GRADIENT_COMPRESSIONS)
flags.register_validator("distributions", _check_distributions)
_positive_integers("batch_sizes", "a global batch size")
_positive_integers("steps_per_call", "a number of steps")
flags.register_multi_flags_validator(
    ["steps_per_call", "window_steps"], _calls_fit_windows,
    "--window_steps must be a multiple of each --steps_per_call (e.g. --steps_per_call=1,10 "
    "--window_steps=20)")
flags.register_multi_flags_validator(
    ["data", "records"], lambda values: values["records"] or set(values["data"]) <= {"synthetic"},
    "--records is needed to measure --data=records, cached_records or resident")


def main(argv):
    del argv
    cli.start_process()
    allreduce = scaling.load_measured(FLAGS.allreduce_jsonl) if FLAGS.allreduce_jsonl else None
    cells = throughput.matrix(
        FLAGS.models, [int(batch) for batch in FLAGS.batch_sizes], FLAGS.precisions,
        [value == "true" for value in FLAGS.xla], FLAGS.data, FLAGS.distributions,
        FLAGS.crop_size, FLAGS.records, FLAGS.batch_norms,
        [int(count) for count in FLAGS.steps_per_call], FLAGS.gradient_compression)
    steps = {"warmup_steps": FLAGS.warmup_steps, "window_steps": FLAGS.window_steps,
             "windows": FLAGS.windows}
    return throughput.run_matrix(cells, steps, FLAGS.out_dir, FLAGS.repeats,
                                 FLAGS.bandwidth_gbit, FLAGS.gpu_step_seconds, allreduce)


def _without_mode(argv):
    """(the value of an old --mode flag or None, `argv` without it)."""
    for index, arg in enumerate(argv):
        if arg.startswith("--mode="):
            return arg.split("=", 1)[1], argv[:index] + argv[index + 1:]
        if arg == "--mode" and index + 1 < len(argv):
            return argv[index + 1], argv[:index] + argv[index + 2:]
    return None, argv


def _forward_old_mode():
    """The old spelling `--mode=time_to_accuracy ...` runs trainer.time_to_accuracy with the
    other flags (replacing this process, before absl would refuse the flag); `--mode=throughput`
    is dropped. Either way one line says what to type now."""
    mode, argv = _without_mode(sys.argv[1:])
    if mode == "time_to_accuracy":
        command = [sys.executable, "-m", "trainer.time_to_accuracy", *argv]
        print(f"note: --mode=time_to_accuracy is now its own command, running it: python -m "
              f"trainer.time_to_accuracy {shlex.join(argv)}", file=sys.stderr, flush=True)
        os.execv(sys.executable, command)
    if mode == "throughput":
        print("note: --mode is gone: trainer.benchmark measures throughput, "
              "trainer.time_to_accuracy races to an accuracy", file=sys.stderr, flush=True)
        sys.argv[1:] = argv


if __name__ == "__main__":
    _forward_old_mode()
    entry.run(main)
