"""The one training loop, for every strategy: `train(config, backend)`.

    step = first                        (the restored checkpoint's step, else 0)
    while step < total:
        stop if any process was signalled (all agree, see trainer.strategy)
        run the next call: up to --steps_per_call steps on every replica, ending early at the
            next log, checkpoint or evaluation (trainer.steps.train_call)
        when it is time to log, checkpoint or evaluate: read the calls' metrics from the
            device (the only host reads), stop with an error on a non-finite loss, then do it

Between those points nothing is read back: the host queues calls while the device computes.

The input skips straight to the first step, so that with --deterministic a resumed job sees
exactly the batches an uninterrupted one would have. Only the chief writes checkpoints, logs
and run.json; every process runs the same steps.
"""

import contextlib
import dataclasses
import math
import os
import socket
import time

import keras
import numpy as np
import tensorflow as tf

from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer import data
from trainer import evaluation
from trainer import logs
from trainer import metrics
from trainer import models
from trainer import recipes
from trainer import steps as steps_lib

PRECISIONS = {"fp32": "float32", "mixed_float16": "mixed_float16",
              "mixed_bfloat16": "mixed_bfloat16"}
GLOBAL_SEED_RANGE = 2**31 - 2


class TrainingError(entry.Failure):
    """A job that cannot go on; the entry point prints it and exits with `exit_code` (1)."""


class NonFiniteLoss(TrainingError):
    exit_code = 3  # the last good checkpoint is kept; a stop by SIGTERM/SIGINT exits 0


class ResumeMismatch(entry.UserError, TrainingError):
    """Another job's checkpoints in --model_dir: like bad flags, found before any training."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    records: str | None
    recipe: recipes.Recipe
    model: str = "levi_hassner"
    task: str = "age"
    data: str = "records"
    held_out_fold: int = 0
    steps: int = 0  # 0: from epochs, else the recipe's length
    epochs: float = 0
    crop_size: int = 227
    eval_crops: int = 1
    eval_every: int = 0  # steps; 0: once per epoch
    log_every: int = 20
    checkpoint_every: int = 1000  # steps; 0: only at the end (and on a stop)
    precision: str = "fp32"
    xla: bool = False
    deterministic: bool = False
    seed: int = 0
    cache: bool = False
    backbone_weights: str | None = None
    input_threads: int | None = None
    batch_norm: str = "sync"  # one of strategy.BATCH_NORMS
    global_batch_size: int | None = None  # None: the recipe's per-replica batch x replicas
    steps_per_call: int = 1  # training steps run in one tf.function call


def is_time(step, every, total):
    """Whether a periodic action runs after `step`: every `every` steps, and at the end."""
    return step == total or (every > 0 and step % every == 0)


@dataclasses.dataclass(frozen=True)
class Job:
    """What a training run computes with: the data's description, the values derived from
    the config, the model, its optimizer and the step counter."""
    config: TrainConfig
    backend: object
    info: data.DataInfo
    plan: dict
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable


def prepare(config, backend, info=None):
    """Sets the process's precision and seeds, then builds the job (nothing restored yet).

    `info`: the data's description (trainer.data.describe) when the caller already made it;
    else it is made here from the config.
    """
    keras.mixed_precision.set_global_policy(PRECISIONS[config.precision])
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Never TF's global seed 0: with it, a tensor op seed (the pipeline's per-epoch shuffle
    # seed) makes tf.random's get_seed compare a tensor in Python, and tracing fails.
    keras.utils.set_random_seed(config.seed % GLOBAL_SEED_RANGE + 1)
    info = info or describe_data(config)
    plan = plan_job(config, backend, info)
    model, optimizer, step = _build(config, backend, info, plan)
    return Job(config, backend, info, plan, model, optimizer, step)


def describe_data(config):
    """The description of the job's data: the records folder read and checked once."""
    return data.describe(config.data, config.records, config.task, config.held_out_fold,
                         config.crop_size)


def replica_step(job):
    """The job's training step for one replica (trainer.steps.replica_train_step)."""
    config, family, recipe = job.config, models.get(job.config.model), job.config.recipe
    weight_decay = family.weight_decay if recipe.weight_decay is None else recipe.weight_decay
    decay_variables = family.decay_variables(job.model)
    return steps_lib.replica_train_step(
        job.backend, job.model, job.optimizer, job.plan["global_batch_size"],
        job.info.num_classes, label_smoothing=recipe.label_smoothing,
        regularization=(lambda: recipes.l2_term(decay_variables, weight_decay))
        if weight_decay else None,
        lr_multipliers=family.lr_multipliers(job.model) if recipe.lr_multipliers else None,
        xla=config.xla)


def train_step(job):
    """The job's distributed training step: batch -> {"loss", "correct"} summed globally."""
    return steps_lib.train_step(job.backend, replica_step(job))


def train_call(job, first_step):
    """(the job's training call, its feed's state) from `first_step` on: see
    trainer.steps.train_call and trainer.data's feeds."""
    config = job.config
    feed = data.train_feed(job.backend, job.info, job.plan["global_batch_size"], first_step,
                           config.seed, config.deterministic, config.crop_size, config.cache,
                           config.input_threads)
    return (steps_lib.train_call(job.backend, replica_step(job), job.optimizer, feed),
            feed.start())


def train(config, backend, info=None):
    """Trains (or resumes) the job of `config` under `backend`; returns a summary dict.
    `info` as in `prepare`."""
    if backend.is_chief:  # the only writer of the folder
        entry.check_writable_dir(config.model_dir, "--model_dir")
    job = prepare(config, backend, info)
    checkpoints = checkpoint_lib.Checkpoints(
        # Keras 3 leaves its dropout seed generators out of the model's checkpoint graph: list
        # the non-trainable state explicitly, or a resumed job draws other dropout masks.
        tf.train.Checkpoint(model=job.model, optimizer=job.optimizer, step=job.step,
                            model_state=list(job.model.non_trainable_variables)),
        config.model_dir,
        backend.checkpoint_write_dir(checkpoint_lib.checkpoint_dir(config.model_dir)))
    writer = logs.MetricWriter(config.model_dir, backend.is_chief, backend.process_index)
    run = _describe_run(job)
    restored = None
    if backend.restores_checkpoints() and checkpoints.latest():
        _check_resumable(config.model_dir, run, writer)  # before a restore that would crash
        restored = checkpoints.restore()
    backend.sync_variables(job.model.variables + job.optimizer.variables + [job.step])
    _check_same_step(backend, config.model_dir, int(job.step.numpy()))
    stop = backend.stop_signal(checkpoints.checkpoint, checkpoints.directory,
                               save=lambda at: checkpoints.save(int(at)))
    _announce_start(writer, run, restored, int(job.step.numpy()))
    for message in _scale_warnings(run) if backend.is_chief else []:
        writer.announce("warning", message=message)
    if backend.is_chief:
        checkpoint_lib.write_run(config.model_dir, run)
    try:
        return _loop(job, checkpoints, writer, stop)
    finally:
        backend.remove_temporary_checkpoints(checkpoints.directory)
        writer.close()


def global_batch_size(given, per_replica, replicas):
    """`given` (--batch_size, global) when not None, else `per_replica` x replicas; a
    UserError when it does not split into equal per-replica batches of at least 1."""
    if given is None:
        return per_replica * replicas
    if given % replicas:
        why = ("under 1 example per replica" if given < replicas
               else "it does not split evenly")
        raise entry.UserError(
            f"--batch_size={given}: a global batch over {replicas} replicas must be a multiple "
            f"of {replicas} ({why}); leave it out for {per_replica} per replica")
    return given


def plan_job(config, backend, info):
    """The values derived once from the config: batch sizes, steps, warm-up and rate."""
    recipe = config.recipe
    batch = global_batch_size(config.global_batch_size, recipe.batch_size, backend.num_replicas)
    steps_per_epoch = max(1, math.ceil(info.train_examples / batch))
    total = recipes.total_steps(recipe, config.steps, config.epochs, info.train_examples, batch)
    return {"global_batch_size": batch,
            "per_replica_batch_size": batch // backend.num_replicas,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total,
            "learning_rate": recipes.scaled_learning_rate(recipe, batch),
            "warmup_steps": recipes.warmup_steps(recipe, batch, total, steps_per_epoch),
            "eval_every": config.eval_every or steps_per_epoch}


# Fewer steps per epoch than this: the global batch is too large a share of the data for the
# linear scaling of the rate to hold (Goyal et al. saw it break past ~8k of ImageNet's 1.28M).
MIN_STEPS_PER_EPOCH = 20


def _scale_warnings(run):
    if run["data"] not in data.FROM_RECORDS or run["steps_per_epoch"] >= MIN_STEPS_PER_EPOCH:
        return []
    fitting = max(run["replicas"], run["train_examples"] // MIN_STEPS_PER_EPOCH
                  // run["replicas"] * run["replicas"])
    return [f"a global batch of {run['global_batch_size']} makes only "
            f"{run['steps_per_epoch']} steps per epoch of {run['train_examples']} training "
            f"examples (under {MIN_STEPS_PER_EPOCH}): the scaled learning rate may no longer "
            f"reach the recipe's accuracy (README: global batch and accuracy); --batch_size="
            f"{fitting} keeps {MIN_STEPS_PER_EPOCH}"]


def _build(config, backend, info, plan):
    """The model, its optimizer (built, so that a restore fills its slots) and the step."""
    with backend.scope():
        model = models.build(config.model, info.num_classes, info.mean_image,
                             replica_layers=backend.replica_layers(config.batch_norm),
                             **_model_options(config))
        _check_xla(config, backend, model)
        optimizer = recipes.optimizer(config.recipe, plan["global_batch_size"],
                                      plan["total_steps"], plan["warmup_steps"],
                                      config.precision)
        optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    return model, optimizer, step


def _loop(job, checkpoints, writer, stop):
    config, backend, plan, model, step = (job.config, job.backend, job.plan, job.model,
                                          job.step)
    first, total = int(step.numpy()), plan["total_steps"]
    call, state = train_call(job, first)
    evaluator = _evaluator(config, backend, job.info, model, plan["global_batch_size"])
    average_statistics = _statistics_averager(job)  # before each evaluation and checkpoint
    periods = {"log": config.log_every, "checkpoint": config.checkpoint_every,
               **({"evaluate": plan["eval_every"]} if evaluator else {})}
    # The clock starts after the first call, which traces and compiles: not in images/s.
    window, last_eval, stopped_by, current = _Window(), None, None, first
    while current < total:
        if stop.requested(current):
            stopped_by = stop.received or "a signal to another process"
            break
        steps = call_length(current, total, config.steps_per_call, periods.values())
        with _records_errors(config, checkpoints):
            window.add(call(state, tf.constant(current, tf.int64),
                            tf.constant(steps, tf.int64)), steps)
        current += steps
        step.assign(current)
        due = {name for name, every in periods.items() if is_time(current, every, total)}
        if not due and window.timed:
            continue  # nothing to read: the next call is queued while this one runs
        with _records_errors(config, checkpoints):
            window.read()
        _check_loss(window, writer, checkpoints)
        if "log" in due:
            writer.write(current, window.metrics(plan["global_batch_size"],
                                                 backend.num_replicas))
            window = _Window()
        if "checkpoint" in due and current < total:  # the last: after the loop, averaged
            average_statistics()
            _check_finite(model, current)
            checkpoints.save(current)
        if "evaluate" in due:
            average_statistics()
            with recipes.averaged_weights(job.optimizer, model.trainable_variables):
                last_eval = evaluator(current, writer)
        window.start_clock()

    final = int(step.numpy())
    window.read()
    _check_loss(window, writer, checkpoints)
    average_statistics()
    if not stopped_by:  # what is evaluated, exported and cross-validated: the average
        recipes.use_average(job.optimizer, model.trainable_variables)
    if evaluator and last_eval is None and not stopped_by:  # a finished job run again
        last_eval = evaluator(final, writer)
    _check_finite(model, final)
    checkpoints.save(final)
    writer.announce("stopped" if stopped_by else "finished", step=final, signal=stopped_by,
                    checkpoint=checkpoints.latest() if backend.is_chief else None)
    return {"step": final, "total_steps": total, "stopped_by": stopped_by, "eval": last_eval}


def call_length(current, total, steps_per_call, periods):
    """Steps of the call after step `current`: at most `steps_per_call`, ending at the next
    multiple of each period (> 0: logs, checkpoints, evaluations) and at `total`."""
    end = min(total, current + steps_per_call)
    for every in periods:
        if every > 0:
            end = min(end, (current // every + 1) * every)
    return end - current


def _check_loss(window, writer, checkpoints):
    """Stops the job when a step of the window's calls had a non-finite loss."""
    if window.first_non_finite is None:
        return
    at, loss = window.first_non_finite
    writer.announce("non_finite_loss", step=at, loss=loss, last_checkpoint=checkpoints.latest())
    raise NonFiniteLoss(f"the loss is {loss} at step {at}: training stopped; the last good "
                        f"checkpoint is {checkpoints.latest()}")


def _check_xla(config, backend, model):
    """--xla compiles the forward pass, where synchronized batch norm all-reduces: MirroredStrategy
    refuses a synchronization point inside compiled control flow, Horovod's build has no XLA
    ops and XLA no CPU collectives. Per-replica batch norm compiles. Under op determinism XLA
    refuses ops it has no deterministic form of (max pooling's gradient) mid-training."""
    if config.xla and config.deterministic:
        raise entry.UserError("--xla cannot be --deterministic: XLA has no deterministic "
                              "gradient of max pooling; drop one of them")
    if (config.xla and config.batch_norm == "sync" and backend.num_replicas > 1
            and models.moving_statistics(model)):
        raise entry.UserError(
            f"--xla cannot compile {config.model}'s batch norm synchronized over "
            f"{backend.num_replicas} replicas: drop --xla, or add --batch_norm=local")


def _statistics_averager(job):
    """A function that makes the replicas' batch-norm moving statistics one model's: under
    --batch_norm=local each replica's drift apart, so they are set to their mean across
    replicas (every process calls it at the same steps). Otherwise it does nothing."""
    statistics = models.moving_statistics(job.model)
    if job.config.batch_norm != "local" or job.backend.num_replicas == 1 or not statistics:
        return lambda: None
    return tf.function(lambda: job.backend.average_across_replicas(statistics))


@contextlib.contextmanager
def _records_errors(config, checkpoints):
    """Damaged records (a shard truncated or changed after the start's size check) end the job
    with one line naming the folder, and the last checkpoint is kept."""
    try:
        yield
    except tf.errors.DataLossError as error:
        raise TrainingError(
            f"{config.records}: damaged records ({error.message.splitlines()[0]}): run python "
            f"-m input.verify {config.records}; the last checkpoint, "
            f"{checkpoints.latest()}, is kept") from None


# What a resumed job must share with the job that wrote the checkpoint, and what it should.
MUST_MATCH = ("model", "task", "class_names", "crop_size", "mean_shape", "precision")
EXACT_RESUME_NEEDS = ("global_batch_size", "processes", "replicas", "seed", "deterministic",
                      "records", "held_out_fold", "data")


def _check_resumable(model_dir, run, writer):
    """A clear error when the checkpoint is of another model or task (or precision, whose
    optimizer state differs); a warning when the resumed job cannot be an exact one."""
    if not checkpoint_lib.has_run(model_dir):
        return
    previous = checkpoint_lib.read_run(model_dir)
    clashes = {key: (previous.get(key), run[key]) for key in MUST_MATCH
               if previous.get(key) != run[key]}
    if clashes:
        details = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in clashes.items())
        raise ResumeMismatch(f"{model_dir} holds checkpoints of another job ({details}): use "
                             f"another --model_dir, or the same settings to resume")
    changed = [key for key in EXACT_RESUME_NEEDS if previous.get(key) != run[key]]
    if changed:
        writer.announce("warning", message="resuming with other " + ", ".join(changed) +
                        ": training goes on, but not exactly as the interrupted job would have")


def _check_same_step(backend, model_dir, step):
    """Every worker restores from --model_dir on its own: one that cannot see the checkpoints
    would start from step 0 with fresh weights beside a resumed chief, and the job would hang
    at its end. Every process sees every step, so all of them stop here together."""
    steps = backend.gather(step)
    if len(set(steps.tolist())) > 1:
        per_process = np.asarray(steps).reshape(backend.num_processes, -1)[:, 0]
        found = ", ".join(f"process {i}: step {s}" for i, s in enumerate(per_process))
        raise ResumeMismatch(f"--model_dir={model_dir}: the processes restored different "
                             f"steps ({found}); every worker must see the same folder (a "
                             f"shared file system) with the same checkpoints")


def _check_finite(model, step):
    """A checkpoint must be a good one: weights that overflowed are never saved."""
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables):
        raise NonFiniteLoss(f"the weights are not finite after step {step}: training stopped "
                            f"without saving them")


def _model_options(config):
    options = {"crop_size": config.crop_size}
    if config.recipe.dropout is not None:
        options["dropout"] = config.recipe.dropout
    if config.backbone_weights:
        options["weights"] = config.backbone_weights
    return options


def _describe_run(job):
    """What run.json records and the start line says: the derived values, computed once."""
    config, backend, info, model = job.config, job.backend, job.info, job.model
    recipe = config.recipe
    return {
        "model": config.model, "task": config.task, "data": config.data,
        "records": config.records and os.path.abspath(config.records),
        "held_out_fold": config.held_out_fold, "eval_splits": list(info.eval_splits),
        "class_names": list(info.class_names), "crop_size": config.crop_size,
        "mean_shape": list(info.mean_image.shape), "recipe": dataclasses.asdict(recipe),
        "strategy": backend.name, "processes": backend.num_processes,
        "gradient_compression": backend.gradient_compression,
        "replicas": backend.num_replicas, **job.plan,
        "train_examples": info.train_examples, "eval_examples": info.eval_examples,
        "precision": config.precision, "xla": config.xla,
        "steps_per_call": config.steps_per_call,
        "deterministic": config.deterministic, "seed": config.seed,
        "compute_dtype": next(layer.compute_dtype for layer in model.layers
                              if getattr(layer, "kernel", None) is not None),
        "trainable_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "flops_per_image": models.flops_per_image(model),
    }


def _announce_start(writer, run, restored, first):
    writer.announce("start", host=socket.gethostname(), pid=os.getpid(),
                    devices=[d.name for d in tf.config.list_logical_devices()
                             if d.device_type in ("CPU", "GPU")],
                    cpus=sorted(os.sched_getaffinity(0)), **run)
    logs.say(f"{run['model']}: {run['trainable_parameters']:,} trainable parameters, "
             f"{run['flops_per_image'] / 1e9:.4f} GFLOP forward per image; "
             f"{run['strategy']} with {run['replicas']} replicas; global batch "
             f"{run['global_batch_size']} ({run['per_replica_batch_size']} per replica); "
             f"{run['total_steps']} steps ({run['steps_per_epoch']} per epoch), learning rate "
             f"{run['learning_rate']:g}"
             + (f" after {run['warmup_steps']} steps of warm-up" if run["warmup_steps"] else ""))

    if restored:
        writer.announce("restored", step=first, checkpoint=restored,
                        remaining_steps=run["total_steps"] - first)


class _Window:
    """The metrics of the calls since the last log line. Each call's sums stay on the device
    until `read`, which waits for them; the clock runs from `start_clock` to `read`, so that
    evaluations, checkpoints and the first call's tracing are not timed."""

    def __init__(self):
        self._unread, self._clock = [], None
        self.steps = self.timed_steps = 0
        self.seconds = self.loss = self.correct = 0.0
        self.learning_rate = self.first_non_finite = None

    @property
    def timed(self):
        return self._clock is not None

    def start_clock(self):
        self._clock = time.perf_counter()

    def add(self, sums, steps):
        """A call's sums (trainer.steps.train_call) over `steps` steps."""
        self._unread.append(sums)
        self.steps += steps
        self.timed_steps += steps if self.timed else 0

    def read(self):
        """Reads the unread sums from the device; stops the clock."""
        for sums in self._unread:
            values = {key: value.numpy() for key, value in sums.items()}
            self.loss += float(values["loss"])
            self.correct += float(values["correct"])
            self.learning_rate = float(values["learning_rate"])
            if values["first_non_finite"] >= 0 and self.first_non_finite is None:
                self.first_non_finite = (int(values["first_non_finite"]),
                                         float(values["non_finite_loss"]))
        self._unread = []
        if self._clock is not None:
            self.seconds += time.perf_counter() - self._clock
            self._clock = None

    def metrics(self, global_batch_size, replicas):
        """train/loss is the cross-entropy, without the L2 term."""
        values = {"train/loss": self.loss / self.steps,
                  "train/accuracy": self.correct / (self.steps * global_batch_size),
                  "train/learning_rate": self.learning_rate}
        if self.seconds and self.timed_steps:
            images_per_sec = self.timed_steps * global_batch_size / self.seconds
            values.update({"train/images_per_sec": images_per_sec,
                           "train/images_per_sec_per_replica": images_per_sec / replicas,
                           "train/step_seconds": self.seconds / self.timed_steps})
        return values


def _evaluator(config, backend, info, model, global_batch_size):
    """A function(step, writer) that evaluates on the held-out split and logs it (or None)."""
    if info.source not in data.FROM_RECORDS:
        return None
    held_out = evaluation.evaluator(backend, info, model, global_batch_size, config.eval_crops,
                                    config.crop_size, config.input_threads)

    def evaluate(step, writer):
        summary = held_out()
        writer.write(step, {f"eval/{key}": value for key, value in summary.items()})
        writer.text(step, "eval/confusion_matrix",
                    metrics.format_confusion(summary["confusion"], info.class_names))
        return summary

    return evaluate
