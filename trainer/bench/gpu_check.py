"""The first command on a new GPU machine (launch/gpu_check.sh): what TensorFlow sees, whether
distributed training computes what one device computes, and how fast, in one verdict table.

  bash launch/gpu_check.sh
  bash launch/gpu_check.sh --out_dir=runs/gpu_check --models=levi_hassner,mobilenet_v2
  bash launch/gpu_check.sh --cpu        # the same sequence, reduced, on the CPU

Each step runs in processes of its own; this one never runs a TensorFlow op, so it holds no GPU
memory. In order:
1. the GPUs TensorFlow sees, beside nvidia-smi's count;
2. trainer.distcheck under `mirrored` over all GPUs; under Horovod with one rank per GPU (its
   collectives NCCL, or Gloo through host memory, as launch/setup.sh built it); and as 2 local
   `multi_worker` processes, each given half of the GPUs through CUDA_VISIBLE_DEVICES (else
   each would see, and reserve, all of them);
3. synthetic faces built into records (input.synthetic, input.build), for the pipeline's cells;
4. the named benchmark cells of `cells` (not the full cross: 2 models x 3 precisions x 2 XLA x
   3 data x 2 distributions would be 72 processes), each measured as trainer.benchmark measures;
   on GPUs, the cell of every GPU in one process again at other inter-op thread counts
   (`inter_op_sweep`: launch/host.py's rule for them is not yet measured).
Then one verdict table: what agrees, images/s, the share of the measured roof, the scaling from
one GPU to all. OUT_DIR/gpu_check.jsonl gets a line per step, OUT_DIR/benchmark.png the chart.
Aimed at under 15 minutes on one 8-GPU node (11 cells, most of the time; not yet
run on a GPU).

--cpu runs the same steps on 2 devices (2 logical CPUs, 2 Horovod ranks, 2 workers) with the
cells marked for the CPU, in fp32.

Exit codes: 0 when every check agrees and every cell was measured; 1 when one did not; 2 for a
bad flag; 4 at once when there is no GPU (without --cpu).
"""

import json
import os
import sys
import time

from absl import flags

from launch import entry
from launch import horovod_build
from launch import launcher
from trainer.bench import gpu_steps
from trainer.bench import output

NO_GPU_EXIT_CODE = 4  # 3 means a non-finite loss (trainer.main)
CPU_DEVICES = 2
FACE_TO_RECORD_SIDE = 816 / 256  # the real aligned faces' side over the records' side

flags.DEFINE_bool("cpu", False, "Run the sequence, reduced, on the CPU (no GPU needed).")
flags.DEFINE_string("out_dir", "runs/gpu_check", "Where gpu_check.jsonl, benchmark.png, the "
                    "synthetic faces and their records are written.")
flags.DEFINE_list("models", ["levi_hassner", "resnet"], "The benchmark's models: every cell "
                  "runs the first; the second has one cell of its own.")
flags.DEFINE_string("check_model", "levi_hassner_bn", "trainer.distcheck's model (with batch "
                    "norm, so that its synchronisation is checked too).")
flags.DEFINE_integer("check_batch_size", None, "trainer.distcheck's global batch (default: "
                     "its recipe's per replica).", lower_bound=1)
flags.DEFINE_integer("per_replica_batch_size", 64, "Each benchmark cell's batch per GPU (a "
                     "cell over N GPUs trains N times as many images per step).", lower_bound=1)
flags.DEFINE_string("records", None, "Records to measure the pipeline's cells on (e.g. the "
                    "real Adience's); default: synthetic faces built into OUT_DIR/records.")
flags.DEFINE_integer("subjects", 100, "Synthetic albums (input.synthetic --subjects).",
                     lower_bound=5)
flags.DEFINE_integer("image_size", 256, "Side of the records' images.", lower_bound=8)
flags.DEFINE_integer("crop_size", 227, "Side of the benchmark's crops.", lower_bound=8)
flags.DEFINE_integer("warmup_steps", 5, "Benchmark steps before timing.", lower_bound=0)
flags.DEFINE_integer("window_steps", 5, "Benchmark steps per timed window.", lower_bound=1)
flags.DEFINE_integer("windows", 3, "Timed windows per cell.", lower_bound=1)
flags.DEFINE_integer("timeout_seconds", 900, "Longest a step may take before it counts as "
                     "failed.", lower_bound=1)
flags.register_validator("crop_size", lambda crop: crop <= flags.FLAGS.image_size,
                         "--crop_size must not exceed --image_size")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    gpus = launcher.gpu_count()
    if not FLAGS.cpu and not gpus:
        print("no GPU here (nvidia-smi lists none): nothing to check; --cpu runs the same "
              "sequence on the CPU", file=sys.stderr, flush=True)
        return NO_GPU_EXIT_CODE
    _check_model_names()
    steps = gpu_steps.Steps(cpu=FLAGS.cpu, timeout_seconds=FLAGS.timeout_seconds)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    with output.open_jsonl(FLAGS.out_dir, "gpu_check.jsonl") as out:
        def record(kind, result):
            out.write(json.dumps({"kind": kind, "started": started, **result}) + "\n")
            out.flush()
            return result

        devices = record("devices", steps.devices(gpus))
        count = CPU_DEVICES if FLAGS.cpu else len(devices["gpus"])
        if count == 0:
            raise entry.Failure(f"TensorFlow sees no GPU although nvidia-smi lists {gpus}: "
                                f"{devices['error'] or 'is this the CPU flavour?'} (set up "
                                f"with TF_FLAVOUR=cuda bash launch/setup.sh)")
        checks = [record("distcheck", check) for check in _checks(steps, count)]
        records = record("records", steps.records(
            FLAGS.out_dir, FLAGS.subjects, round(FLAGS.image_size * FACE_TO_RECORD_SIDE),
            FLAGS.image_size, FLAGS.records))
        planned = gpu_steps.cells(count, FLAGS.models, FLAGS.cpu, FLAGS.per_replica_batch_size,
                                  FLAGS.crop_size, records["path"])
        swept = [] if FLAGS.cpu else gpu_steps.inter_op_sweep(planned, count, devices["cores"])
        cells = []
        for name, cell, environment in [(name, cell, {}) for name, cell in planned] + swept:
            print(f"[cell] {name}", file=sys.stderr, flush=True)
            cells.append(record("cell", steps.cell(name, cell, _benchmark_steps(),
                                                   environment)))
    print(gpu_steps.verdict(devices, checks, records, cells, count, FLAGS.cpu))
    print(f"chart: {gpu_steps.chart(cells, os.path.join(FLAGS.out_dir, 'benchmark.png'))}")
    print(f"JSON lines: {os.path.join(FLAGS.out_dir, 'gpu_check.jsonl')}")
    failed = gpu_steps.failures(checks, records, cells)
    return entry.FAULT_EXIT_CODE if failed else 0


def _check_model_names():
    from trainer import models  # imports TensorFlow: not before exit code 4

    for flag, names in (("models", FLAGS.models), ("check_model", [FLAGS.check_model])):
        unknown = [name for name in names if name not in models.names()]
        if unknown:
            raise entry.UserError(f"--{flag}: {','.join(unknown)} not one of "
                                  f"{', '.join(models.names())}")


def _checks(steps, count):
    flags_ = [f"--model={FLAGS.check_model}"]
    if FLAGS.check_batch_size:
        flags_.append(f"--batch_size={FLAGS.check_batch_size}")
    collectives = horovod_build.collectives()
    return [steps.distcheck_mirrored(count, flags_),
            steps.distcheck_horovod(count, flags_, collectives),
            steps.distcheck_multi_worker(count, flags_)]


def _benchmark_steps():
    return {"warmup_steps": FLAGS.warmup_steps, "window_steps": FLAGS.window_steps,
            "windows": FLAGS.windows}


if __name__ == "__main__":
    entry.run(main)
