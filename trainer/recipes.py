"""Training recipes: the paper's solver exactly, and a modern one for the better networks.

A recipe is the solver's settings; every one of them can be overridden by a flag. Its batch is
per replica (the paper's 50 is what one GPU ran): the global batch is that times the replicas,
unless the job gives a global batch itself. The learning rate is given at the recipe's reference
batch size and scaled linearly with the global batch (Goyal et al. 2017), so that a job on 8
GPUs with 8x the batch keeps the same per-example step: the paper's 1e-3 at batch 50 becomes
8e-3 at batch 400. A rate scaled up needs a warm-up (the same paper): it starts at the
reference batch's rate and climbs linearly to the scaled one over the first epochs. Lengths
given in steps (the paper's 50,000 steps, its decay every 10,000) are steps at the reference
batch too, and shrink with a larger batch, so that the job sees the same number of epochs.
At its own batch, the paper's recipe is exactly as published: no warm-up.

A recipe may keep an exponential moving average of the weights (`ema_decay`, Polyak
averaging): the job evaluates, checkpoints at its end and exports the average, which late in
a schedule sits nearer the centre of the minimum the weights oscillate around.
"""

import contextlib

import dataclasses
import math

import keras
import tensorflow as tf

SCHEDULES = ("step", "cosine")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    batch_size: int  # per replica
    learning_rate: float  # at reference_batch_size
    reference_batch_size: int
    schedule: str  # "step": x decay_factor every decay_every steps; "cosine": warmup + cosine
    decay_every: int  # step schedule only
    decay_factor: float
    warmup_fraction: float  # the share of the steps spent warming up (at least the scaled one)
    momentum: float
    nesterov: bool
    weight_decay: float | None  # the L2 term's factor; None: the model family's weight_decay
    lr_multipliers: bool  # the model's per-layer multipliers (the paper's solver)
    label_smoothing: float
    dropout: float | None  # None: the model's default
    steps: int  # when neither --steps nor --epochs is given...
    epochs: int  # ...the recipe's length: steps if > 0, else epochs
    ema_decay: float = 0.0  # the weights' moving average's decay per step; 0: none


# Levi & Hassner's Caffe solver: SGD momentum 0.9, batch 50, 1e-3 x 0.1 every 10,000 of 50,000
# iterations, weight decay 5e-4 on weights, biases 2x and fc8 10x / 20x, dropout 0.5.
PAPER = Recipe(name="paper", batch_size=50, learning_rate=1e-3, reference_batch_size=50,
               schedule="step", decay_every=10_000, decay_factor=0.1, warmup_fraction=0.0,
               momentum=0.9, nesterov=False, weight_decay=None, lr_multipliers=True,
               label_smoothing=0.0, dropout=None, steps=50_000, epochs=0)

# For networks with batch norm trained from scratch: a large rate reached by a short warm-up
# (BN makes it stable), cosine decay to zero, label smoothing against over-confident logits on
# a small dataset.
MODERN = Recipe(name="modern", batch_size=64, learning_rate=0.1, reference_batch_size=256,
                schedule="cosine", decay_every=0, decay_factor=1.0, warmup_fraction=0.05,
                momentum=0.9, nesterov=True, weight_decay=None, lr_multipliers=False,
                label_smoothing=0.1, dropout=None, steps=0, epochs=30)

RECIPES = {recipe.name: recipe for recipe in (PAPER, MODERN)}
# Goyal et al. warm up a linearly scaled rate over 5 epochs; a short job, over at most a fifth
# of its steps.
SCALED_WARMUP_EPOCHS = 5
SCALED_WARMUP_MAX_FRACTION = 0.2


def resolve(name, **overrides):
    """The recipe called `name` with the overrides that are not None."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    recipe = dataclasses.replace(RECIPES[name], **{key: value for key, value in overrides.items()
                                                   if value is not None})
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {recipe.schedule!r}; known: {', '.join(SCHEDULES)}")
    return recipe


def scaled_learning_rate(recipe, global_batch_size):
    return recipe.learning_rate * global_batch_size / recipe.reference_batch_size


def total_steps(recipe, steps, epochs, train_examples, global_batch_size):
    """The job's length in steps: --steps, else --epochs, else the recipe's."""
    if steps:
        return steps
    epochs = epochs or recipe.epochs
    if epochs:
        return max(1, math.ceil(epochs * train_examples / global_batch_size))
    return _at_batch(recipe, recipe.steps, global_batch_size)


def _at_batch(recipe, reference_steps, global_batch_size):
    """Steps at the reference batch -> steps at this batch, for the same examples seen."""
    return max(1, round(reference_steps * recipe.reference_batch_size / global_batch_size))


def warmup_steps(recipe, global_batch_size, total, steps_per_epoch):
    """The recipe's own warm-up, or the one a rate scaled above the reference's needs."""
    own = int(recipe.warmup_fraction * total)
    if global_batch_size <= recipe.reference_batch_size:
        return own
    scaled = min(math.ceil(SCALED_WARMUP_EPOCHS * steps_per_epoch),
                 int(SCALED_WARMUP_MAX_FRACTION * total))
    return max(own, scaled)


def schedule(recipe, global_batch_size, total, warmup):
    """The learning rate as a function of the optimizer's step; `warmup` steps (warmup_steps)."""
    peak_learning_rate = scaled_learning_rate(recipe, global_batch_size)
    if recipe.schedule == "step":
        decay = keras.optimizers.schedules.ExponentialDecay(
            peak_learning_rate, decay_rate=recipe.decay_factor, staircase=True,
            decay_steps=_at_batch(recipe, recipe.decay_every, global_batch_size))
        if not warmup:
            return decay
        return LinearWarmup(min(recipe.learning_rate, peak_learning_rate), warmup, decay)
    # Keras warms up from initial_learning_rate to warmup_target, then decays over decay_steps.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak_learning_rate,
        decay_steps=max(1, total - warmup), warmup_target=peak_learning_rate if warmup else None,
        warmup_steps=warmup)


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """From `start`, linearly up to `after`'s rate over `warmup` steps, then `after`'s."""

    def __init__(self, start, warmup, after):
        self.start, self.warmup, self.after = start, warmup, after

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = tf.cast(self.after(step), tf.float32)
        climbed = self.start + (rate - self.start) * step / self.warmup
        return tf.where(step < self.warmup, climbed, rate)

    def get_config(self):
        return {"start": self.start, "warmup": self.warmup,
                "after": keras.optimizers.schedules.serialize(self.after)}


def optimizer(recipe, global_batch_size, total, warmup, precision):
    """SGD with momentum on the recipe's schedule; loss scaling under float16."""
    sgd = keras.optimizers.SGD(schedule(recipe, global_batch_size, total, warmup),
                               momentum=recipe.momentum, nesterov=recipe.nesterov,
                               use_ema=recipe.ema_decay > 0,
                               ema_momentum=recipe.ema_decay or 0.99)
    if precision == "mixed_float16":
        # float16 gradients of small losses underflow: scale the loss up, the gradients down,
        # and skip the steps whose gradients overflow (dynamic loss scaling).
        return keras.optimizers.LossScaleOptimizer(sgd)
    return sgd


def _averaging(optimizer):
    """The SGD under the loss scaling, if it keeps a moving average of the weights; else None."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner if inner.use_ema else None


@contextlib.contextmanager
def averaged_weights(optimizer, variables):
    """Within it, `variables` (the model's trainable ones) hold their moving average; after it,
    the weights being trained again. Without a moving average it changes nothing."""
    if _averaging(optimizer) is None:
        yield
        return
    trained = [tf.identity(v) for v in variables]
    use_average(optimizer, variables)
    try:
        yield
    finally:
        for variable, value in zip(variables, trained):
            variable.assign(value)


def use_average(optimizer, variables):
    """Makes `variables` their moving average for good (the end of training), if there is one."""
    averaging = _averaging(optimizer)
    if averaging is not None:
        averaging.finalize_variable_values(variables)  # on every replica


def l2_term(variables, weight_decay):
    """The loss term whose gradient is Caffe's weight decay, weight_decay * w (before
    momentum, unlike Keras' decoupled `weight_decay=`).

    tf.nn.l2_loss(w) is sum(w^2) / 2, so its gradient is w. keras.regularizers.L2(wd) adds
    wd * sum(w^2), whose gradient 2 * wd * w would be twice Caffe's decay. Under several
    replicas, divide this term by their number (trainer.strategy's scale_regularization).
    """
    return weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in variables])
