"""How long a cross-validation will take on this machine, from a few of its real training steps.

The timed job is the first fold's, built as that fold builds it (`loop.prepare`), then thrown
away: it writes nothing, and every fold builds its own model and sets its seeds again, so the
timing changes no result. Training time is measured; evaluation time is not, only estimated:
a forward pass costs about a third of a training step per image (the backward pass is about
twice the forward), and evaluation batches carry some padding, so that figure is approximate.

No GPU step has been timed by this project: the time on one GPU is an assumption, printed as
one. It counts the network's arithmetic (a training step's is three forward passes) at a rate
a data-centre GPU plausibly sustains on such small convolutions, and at least a floor per step
for the launch of its kernels and the input, which bound small networks instead.
"""

import json
import time

import tensorflow as tf

from trainer import checkpoint as checkpoint_lib
from trainer import loop
from trainer import models
from trainer.bench import timing

WARMUP_STEPS = 2  # tracing, compilation and the input pipeline filling up: not timed
FORWARD_SHARE = 1 / 3  # of a training step's cost per image, for one evaluation forward pass
# The assumption behind the time on one GPU (not measured; README: What a GPU would change).
# Small networks at small batches reach a fraction of a GPU's peak (an A100's: 156 TFLOP/s in
# TF32, 312 in bf16), and each step pays kernel launches and the input's hand-over.
ASSUMED_GPU_FLOPS = 10e12  # sustained
ASSUMED_GPU_STEP_FLOOR = 0.005  # seconds per step, at least


def cross_validation(configs, infos, backend, steps, final_crops):
    """Times `steps` training steps of the first fold's job, then prints (the chief) what the
    folds of `configs` (with their data `infos`) will take; returns the figures.

    Every process must call it: the timed steps are collective. `final_crops`: the crops of
    each fold's final evaluations (one evaluation each).
    """
    seconds_per_step, global_batch_size, warmup, flops = time_training(configs[0], infos[0],
                                                                       backend, steps)
    work = [fold_work(config, info, backend, final_crops)
            for config, info in zip(configs, infos)]
    seconds_per_image = seconds_per_step / global_batch_size
    figures = {
        "timed_steps": steps - warmup, "warmup_steps": warmup,
        "seconds_per_step": seconds_per_step, "images_per_sec": 1 / seconds_per_image,
        "global_batch_size": global_batch_size,
        "folds": [config.held_out_fold for config in configs],
        "fold_steps": [steps_left for steps_left, _ in work],
        "train_steps": sum(steps_left for steps_left, _ in work),
        "eval_images": sum(images for _, images in work),
    }
    figures["train_seconds"] = figures["train_steps"] * seconds_per_step
    figures["eval_seconds"] = figures["eval_images"] * seconds_per_image * FORWARD_SHARE
    figures["total_seconds"] = figures["train_seconds"] + figures["eval_seconds"]
    figures["flops_per_image"] = flops
    figures["assumed_gpu_seconds"] = assumed_gpu_seconds(
        flops, global_batch_size, figures["train_steps"], figures["eval_images"])
    if backend.is_chief:
        print(describe(figures, configs[0].model), flush=True)
        print(json.dumps({"event": "estimate", "process": backend.process_index,
                          "time": time.time(), **figures}), flush=True)
    return figures


def time_training(config, info, backend, steps):
    """(seconds per step, global batch, warm-up steps, forward FLOPs per image) of `config`'s
    job (on its data `info`) over `steps` steps, the first WARMUP_STEPS (fewer if `steps` is
    small; at least one step is timed) untimed."""
    job = loop.prepare(config, backend, info)
    timer = timing.StepTimer(job)
    warmup = max(0, min(WARMUP_STEPS, steps - 1))
    timer.warm_up(warmup)
    seconds = timer.window(steps - warmup)
    return (seconds / (steps - warmup), job.plan["global_batch_size"], warmup,
            models.flops_per_image(job.model))


def assumed_gpu_seconds(flops_per_image, global_batch_size, train_steps, eval_images):
    """The time on one GPU under the module's assumption (not a measurement)."""
    step = max(3 * flops_per_image * global_batch_size / ASSUMED_GPU_FLOPS,
               ASSUMED_GPU_STEP_FLOOR)
    return train_steps * step + eval_images * flops_per_image / ASSUMED_GPU_FLOPS


def fold_work(config, info, backend, final_crops):
    """(training steps left, held-out images to evaluate) of one fold, from where it stands:
    a rerun resumes a fold from its latest checkpoint."""
    plan = loop.plan_job(config, backend, info)  # the very steps and eval period the fold uses
    total = plan["total_steps"]
    done = min(_steps_done(config.model_dir), total)
    evaluations = sum(loop.is_time(step, plan["eval_every"], total)
                      for step in range(done + 1, total + 1))
    evaluations = max(1, evaluations)  # the loop evaluates a finished fold once more
    images = info.eval_examples * (evaluations * config.eval_crops + sum(final_crops))
    return total - done, images


def describe(figures, model):
    """The estimate for people."""
    rows = [("training", f"{len(figures['folds'])} fold(s), {figures['train_steps']:,} steps",
             duration(figures["train_seconds"])),
            ("evaluation", f"{figures['eval_images']:,} held-out crops (approximate)",
             duration(figures["eval_seconds"])),
            ("total", "", "about " + duration(figures["total_seconds"]))]
    return "\n".join(
        [f"estimate on this machine: {figures['seconds_per_step']:.3f} s per training step, "
         f"{figures['images_per_sec']:,.1f} images/s ({model}, global batch "
         f"{figures['global_batch_size']}; {figures['timed_steps']} steps timed after "
         f"{figures['warmup_steps']} of warm-up)"] +
        [f"  {name:<11} {what:<40} {time_taken:>18}" for name, what, time_taken in rows] +
        [f"on one GPU, assumed (no GPU step measured): about "
         f"{duration(figures['assumed_gpu_seconds'])}, if it sustains "
         f"{ASSUMED_GPU_FLOPS / 1e12:g} TFLOP/s on {figures['flops_per_image'] / 1e9:.3f} "
         f"GFLOP per image forward and a step takes at least {ASSUMED_GPU_STEP_FLOOR * 1e3:g} "
         f"ms"])


def duration(seconds):
    """'2 h 05 min', '3 min 20 s' or '12 s'."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _steps_done(model_dir):
    """The step of the fold's latest checkpoint (checkpoint files are named ckpt-<step>)."""
    path = tf.train.latest_checkpoint(checkpoint_lib.checkpoint_dir(model_dir))
    return int(path.rsplit("-", 1)[1]) if path else 0
