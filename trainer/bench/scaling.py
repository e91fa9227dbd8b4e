"""A model of data-parallel scaling to many GPUs: what a ring all-reduce of the gradients costs
next to the step's compute, at a given network bandwidth and GPU count.

A ring all-reduce of B bytes over N workers sends 2 (N - 1) / N x B bytes through each link, in
2 (N - 1) steps that each pay the link's latency once per message; Horovod's tensor fusion packs
the gradients into buffers of up to 64 MB (fewer messages), and fp16 compression halves B. The
scaling efficiency is the compute time over the step time, with the all-reduce not overlapped
with the backward pass (a lower bound: Horovod overlaps part of it).

Levi & Hassner: 11,415,048 parameters, 45.7 MB of float32 gradients per step.

Beside the model, the all-reduce measured on this machine (trainer.bench.allreduce's JSON line,
`load_measured`): its times in float32 and fp16, the ring bandwidth each amounts to, and the
efficiency they would give. Over Gloo on CPUs fp16 is slower, not faster: there the sum in
float16, not the bytes, is the cost.
"""

import json
import math

from launch import entry

FLOAT32_BYTES = 4
FUSION_BUFFER_BYTES = 64 * 1024 * 1024  # HOROVOD_FUSION_THRESHOLD's default
LINK_LATENCY_SECONDS = 10e-6  # per message per ring step, a typical InfiniBand/RoCE figure
GPU_COUNTS = (8, 16, 64, 256)


def allreduce_seconds(gradient_bytes, tensors, workers, bandwidth_gbit, fusion=True,
                      fp16=False, latency=LINK_LATENCY_SECONDS):
    """Seconds of one ring all-reduce of the step's gradients."""
    if workers <= 1:
        return 0.0
    size = gradient_bytes / 2 if fp16 else gradient_bytes
    messages = math.ceil(size / FUSION_BUFFER_BYTES) if fusion else tensors
    transfer = 2 * (workers - 1) / workers * size / (bandwidth_gbit * 1e9 / 8)
    return transfer + 2 * (workers - 1) * messages * latency


def ring_gbit(gradient_bytes, workers, seconds, fp16=False):
    """The link bandwidth at which a ring all-reduce of the gradients takes `seconds` (latency
    left out): `allreduce_seconds` solved for the bandwidth."""
    size = gradient_bytes / 2 if fp16 else gradient_bytes
    return 2 * (workers - 1) / workers * size / seconds * 8 / 1e9


def efficiency(step_seconds, communication_seconds):
    """Compute time over step time: 1.0 is perfect linear scaling."""
    return step_seconds / (step_seconds + communication_seconds)


def table(step_seconds, parameters, tensors, bandwidth_gbit, gpu_counts=GPU_COUNTS,
          measured=None):
    """The predicted efficiency at each GPU count, plain, with fusion, and with fusion + fp16;
    then, given `measured` (a JSON line of trainer.bench.allreduce), the measured all-reduce."""
    gradient_bytes = parameters * FLOAT32_BYTES
    lines = [f"scaling model: {parameters:,} parameters ({gradient_bytes / 1e6:.1f} MB of "
             f"float32 gradients, {tensors} tensors), compute {1000 * step_seconds:.1f} ms per "
             f"step per GPU, ring all-reduce at {bandwidth_gbit:g} Gbit/s, no overlap",
             f"{'GPUs':>6} {'all-reduce ms':>14} {'efficiency':>11} {'fused':>7} "
             f"{'fused+fp16':>11}"]
    for gpus in gpu_counts:
        plain = allreduce_seconds(gradient_bytes, tensors, gpus, bandwidth_gbit, fusion=False)
        fused = allreduce_seconds(gradient_bytes, tensors, gpus, bandwidth_gbit)
        half = allreduce_seconds(gradient_bytes, tensors, gpus, bandwidth_gbit, fp16=True)
        lines.append(f"{gpus:>6} {1000 * plain:>14.1f} {efficiency(step_seconds, plain):>10.0%} "
                     f"{efficiency(step_seconds, fused):>7.0%} "
                     f"{efficiency(step_seconds, half):>11.0%}")
    if measured:
        lines += measured_lines(step_seconds, measured)
    return "\n".join(lines)


def measured_lines(step_seconds, measured):
    """The measured all-reduce of both compressions, as ring bandwidths and efficiencies."""
    size, ranks = measured["gradient_bytes"], measured["ranks"]
    seconds = {compression: ms / 1000 for compression, ms in measured["median_ms"].items()}
    return [f"measured here: {ranks} ranks over {measured['collectives']}, "
            f"{measured['model']}'s {measured['tensors']} tensors ({size / 1e6:.1f} MB): "
            f"float32 {1000 * seconds['none']:.1f} ms (a ring at "
            f"{ring_gbit(size, ranks, seconds['none']):.2f} Gbit/s), fp16 "
            f"{1000 * seconds['fp16']:.1f} ms ("
            f"{ring_gbit(size, ranks, seconds['fp16'], fp16=True):.2f} Gbit/s): fp16 "
            f"{seconds['fp16'] / seconds['none']:.2f}x float32",
            f"  with them, at {1000 * step_seconds:.1f} ms of compute per step: efficiency "
            f"{efficiency(step_seconds, seconds['none']):.0%} in float32, "
            f"{efficiency(step_seconds, seconds['fp16']):.0%} in fp16"]


def load_measured(path):
    """The last measurement in `path` (OUT_DIR/allreduce.jsonl of trainer.bench.allreduce).

    Raises:
      entry.UserError: naming the file, when it is missing or holds no measurement.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        measured = json.loads(lines[-1]) if lines else {}
    except OSError as error:
        raise entry.UserError(entry.path_error(error)) from error
    except json.JSONDecodeError:
        measured = {}
    if not {"gradient_bytes", "ranks", "median_ms"} <= measured.keys():
        raise entry.UserError(f"{path}: no all-reduce measurement (made by horovodrun -np N "
                              f"python -m trainer.bench.allreduce)")
    return measured
