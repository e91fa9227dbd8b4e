"""The flags of the trainer's entry points, each defined once (absl refuses a flag defined twice).

An entry point calls `define_job_flags()` and, if it trains, `define_training_flags()` at import,
then builds its plain values here. Nothing below the entry points reads flags.
"""

import os

from absl import flags
from absl import logging
import tensorflow as tf

from launch import entry
from launch import host

from input import adience
from input import images
from trainer import bundles
from trainer import data
from trainer import loop
from trainer import models
from trainer import recipes
from trainer import strategy

FLAGS = flags.FLAGS
# With GPUs a step of Levi & Hassner takes milliseconds, about what the host needs to launch a
# tf.function call over 8 replicas: 10 steps per call make that launch a tenth, and still end
# calls at the default log interval (20).
STEPS_PER_CALL_GPU = 10


# Flags of several entry points, each defined here once; an entry point picks its own.
_SHARED_FLAGS = {
    "records": lambda: flags.DEFINE_string("records", None, "Records folder built by "
                                           "input.build."),
    "model_dir": lambda: flags.DEFINE_string("model_dir", None, "The job's folder: "
                                             "checkpoints, logs, run.json."),
    "strategy": lambda: flags.DEFINE_enum(
        "strategy", "auto", strategy.STRATEGIES,
        "auto: horovod under horovodrun, multi_worker when TF_CONFIG names several workers, "
        "mirrored with several GPUs, else one device."),
    "logical_cpus": lambda: flags.DEFINE_integer(
        "logical_cpus", 0, "With no GPU, split the CPU into this many devices (mirrored on one "
        "machine, for tests and debugging).", lower_bound=0),
    "batch_size": lambda: flags.DEFINE_integer(
        "batch_size", None, "Global batch size, over all replicas. Default for training: the "
        "recipe's per-replica batch (paper 50, modern 64) times the replicas, the learning rate "
        "scaled with it; for evaluation: 50 per replica.", lower_bound=1),
    "eval_crops": lambda: flags.DEFINE_enum(
        "eval_crops", "1", ["1", "10"], "The center crop, or the average of the paper's 10 "
        "crops (corners, center and their mirrors)."),
    "checkpoint": lambda: flags.DEFINE_string("checkpoint", None, "A checkpoint of the job "
                                              "(default: its latest)."),
    "gradient_compression": lambda: flags.DEFINE_enum(
        "gradient_compression", "none", strategy.GRADIENT_COMPRESSIONS, "Horovod only "
        "(refused under tf.distribute, where Keras sums the gradients itself): fp16 sends the "
        "gradients through the all-reduce as float16, half the bytes; worth it where the "
        "network is the limit (GPUs across nodes), slower over Gloo on CPUs."),
}
JOB_FLAGS = ("records", "model_dir", "strategy", "logical_cpus", "batch_size", "eval_crops")


def define_flags(*names):
    """Defines these shared flags (names of _SHARED_FLAGS) for the calling entry point."""
    for name in names:
        _SHARED_FLAGS[name]()


def define_job_flags():
    """The flags of every entry point that runs a model on records."""
    define_flags(*JOB_FLAGS)


def define_training_flags():
    """Flags of the entry points that train (main, cross_validate)."""
    flags.DEFINE_enum("bundle", None, sorted(bundles.BUNDLES), "A named way to train "
                      "(trainer.bundles): its model, recipe and settings become the defaults "
                      "of those flags; a flag given wins. paper: Levi & Hassner as published; "
                      "improved: the fastest to their accuracy the races found.")
    flags.DEFINE_enum("model", "levi_hassner", models.names(), "The network.")
    flags.DEFINE_enum("task", "age", adience.TASKS, "Age groups or gender; must match the "
                      "records.")
    flags.DEFINE_enum("data", "records", data.SOURCES, "records (read by tf.data), resident "
                      "(the records decoded once and held on each replica's device), or "
                      "synthetic in-memory batches (to measure training without input, or "
                      "check strategies).")
    flags.DEFINE_enum("recipe", "paper", sorted(recipes.RECIPES), "paper: Levi & Hassner's "
                      "solver exactly. modern: warmup + cosine, label smoothing, nesterov.")
    flags.DEFINE_float("learning_rate", None, "Peak learning rate at the recipe's reference "
                       "batch size, scaled linearly with --batch_size.", lower_bound=0.0)
    flags.DEFINE_enum("schedule", None, recipes.SCHEDULES, "step (x decay_factor every "
                      "--decay_every steps) or cosine (with warm-up).")
    flags.DEFINE_integer("decay_every", None, "Steps between the step schedule's decays.",
                         lower_bound=1)
    flags.DEFINE_float("warmup_fraction", None, "Share of the steps spent warming up (at least "
                       "5 epochs, at most a fifth of the steps, when the global batch exceeds "
                       "the recipe's reference).",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("weight_decay", None, "L2 term factor (Caffe's weight_decay: gradient "
                       "weight_decay * w); 0 turns it off. Default: the model's.", lower_bound=0.0)
    flags.DEFINE_float("label_smoothing", None, "Label smoothing of the cross-entropy.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("ema_decay", None, "Keep a moving average of the weights with this "
                       "decay per step, and evaluate, checkpoint at the end and export it; 0: "
                       "none (the recipes' default).", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("dropout", None, "Dropout rate. Default: the model's.", lower_bound=0.0,
                       upper_bound=1.0)
    flags.DEFINE_integer("steps", 0, "Training steps (default: from --epochs, else the "
                         "recipe's: 50,000 for the paper).", lower_bound=0)
    flags.DEFINE_float("epochs", 0, "Training epochs over the training split.", lower_bound=0.0)
    flags.DEFINE_integer("held_out_fold", 0, "Fold held out for evaluation (folds protocol).",
                         lower_bound=0)
    flags.DEFINE_integer("crop_size", images.CROP_SIZE, "Side of the training and evaluation "
                         "crops.", lower_bound=1)
    flags.DEFINE_integer("eval_every", 0, "Evaluate every this many steps (0: every epoch) and "
                         "at the end.", lower_bound=0)
    flags.DEFINE_integer("steps_per_call", 0, "Training steps run in one call of the compiled "
                         "step, their metrics kept on the device until logged (a call ends "
                         "early at a log, checkpoint or evaluation). 0: 1 without a GPU, "
                         f"{STEPS_PER_CALL_GPU} with GPUs (the host's launch of each step "
                         "amortised).", lower_bound=0)
    flags.DEFINE_integer("log_every", 20, "Log every this many steps.", lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", 1000, "Checkpoint every this many steps (0: only "
                         "at the end and on a stop).", lower_bound=0)
    flags.DEFINE_enum("precision", "fp32", sorted(loop.PRECISIONS), "mixed_float16 adds loss "
                      "scaling; mixed_bfloat16 runs on CPUs with AVX-512 BF16 too.")
    flags.DEFINE_bool("xla", False, "Compile the forward and backward pass with XLA.")
    flags.DEFINE_bool("deterministic", False, "Op determinism and a data order that is a "
                      "function of the seed: a resumed job ends with the same weights.")
    flags.DEFINE_integer("seed", 0, "Seed of the initial weights, data order and crops.")
    flags.DEFINE_bool("cache", False, "Keep the decoded training records in memory.")
    flags.DEFINE_enum("batch_norm", "sync", strategy.BATCH_NORMS, "sync: batch norm over the "
                      "global batch (moments all-reduced across replicas). local: over each "
                      "replica's slice, moving statistics averaged before evaluations and "
                      "checkpoints.")
    flags.DEFINE_string("backbone_weights", None, "Local ImageNet weights file of the "
                        "keras.applications backbone (mobilenet_v2); never downloaded.")
    define_flags("gradient_compression")


def start_process():
    """Sizes TensorFlow's thread pools (before its first op) and quiets its INFO lines, which
    would drown the metrics; returns the thread counts."""
    threads = host.configure_threads()
    logging.set_verbosity(logging.WARNING)
    return threads


def require(*names):
    """A user error when a required flag is missing (one a flag validator cannot require
    because it depends on another flag, like --records with --data=records)."""
    missing = [name for name in names if getattr(FLAGS, name) is None]
    if missing:
        raise entry.UserError("missing " + ", ".join(f"--{name}" for name in missing))


# The flags that override one of the recipe's settings, each named as the setting.
RECIPE_FLAGS = ("learning_rate", "schedule", "decay_every", "warmup_fraction", "weight_decay",
                "label_smoothing", "dropout", "ema_decay")


def default_steps_per_call():
    return STEPS_PER_CALL_GPU if tf.config.list_physical_devices("GPU") else 1


def train_config(input_threads=None, **overrides):
    """The TrainConfig of the training flags (`overrides`: values an entry point sets)."""
    if FLAGS.backbone_weights and not os.path.isfile(FLAGS.backbone_weights):
        raise entry.UserError(f"--backbone_weights={FLAGS.backbone_weights}: no such file")
    bundle = bundles.BUNDLES[FLAGS.bundle] if FLAGS.bundle else None  # an enum flag
    setting = {name: getattr(bundle, name) if bundle and not FLAGS[name].present
               else getattr(FLAGS, name) for name in bundles.FLAG_SETTINGS}
    # The bundle's recipe settings belong to its recipe, not to another one given by flag.
    recipe_settings = bundle.recipe_settings if bundle and not FLAGS["recipe"].present else {}
    recipe = recipes.resolve(setting["recipe"], **{**recipe_settings, **{
        name: getattr(FLAGS, name) for name in RECIPE_FLAGS if getattr(FLAGS, name) is not None
    }})
    values = dict(
        model_dir=FLAGS.model_dir, records=FLAGS.records, recipe=recipe,
        model=setting["model"], task=FLAGS.task, data=setting["data"],
        held_out_fold=FLAGS.held_out_fold, steps=FLAGS.steps, epochs=setting["epochs"],
        crop_size=FLAGS.crop_size, eval_crops=int(FLAGS.eval_crops),
        eval_every=FLAGS.eval_every, log_every=FLAGS.log_every,
        checkpoint_every=FLAGS.checkpoint_every, precision=setting["precision"],
        xla=setting["xla"],
        deterministic=FLAGS.deterministic, seed=FLAGS.seed, cache=FLAGS.cache,
        backbone_weights=FLAGS.backbone_weights, input_threads=input_threads,
        batch_norm=FLAGS.batch_norm, global_batch_size=FLAGS.batch_size,
        steps_per_call=setting["steps_per_call"] or default_steps_per_call())
    values.update(overrides)
    return loop.TrainConfig(**values)
