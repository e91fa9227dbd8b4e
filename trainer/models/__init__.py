"""Models by name: the registry returns each family's contract, one `ModelFamily`.

The trainer knows a model only through it:

    build(num_classes, mean_image, dropout=..., crop_size=..., replica_layers=...) -> keras.Model
        inputs input.batch.MODEL_INPUTS of a batch {"image" uint8 [B, c, c, 3], "crop_offset"
        int32 [B, 2], "flip" bool [B]}, float32 logits out; every batch-norm and dropout layer
        made by `replica_layers` (a replicas.ReplicaLayers, which the strategy module makes:
        batch norm over the global batch, each replica's own dropout masks), those of a network
        the family does not write included (a keras.applications backbone is rebuilt by
        `replica_layers.with_batch_norm`);
    weight_decay: the default factor of the solver's L2 term (recipes.l2_term);
    decay_variables(model): the variables that term applies to;
    lr_multipliers(model) -> {variable path: multiplier}: the paper's solver's per-layer rates
        (the recipe decides whether they are used); {} for the networks with batch norm.

levi_hassner is the published network; levi_hassner_bn, resnet and mobilenet_v2 the better ones
(mobilenet_v2's `build` also takes `weights`, a local file of ImageNet weights); tiny is for
tests.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np

from trainer.models import levi_hassner
from trainer.models import levi_hassner_bn
from trainer.models import mobilenet_v2
from trainer.models import nesting
from trainer.models import resnet
from trainer.models import tiny


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What every model family provides (see the module docstring)."""
    build: Callable
    weight_decay: float
    decay_variables: Callable
    lr_multipliers: Callable


MODELS = {
    "levi_hassner": ModelFamily(levi_hassner.build, levi_hassner.WEIGHT_DECAY,
                                levi_hassner.decay_variables, levi_hassner.lr_multipliers),
    "levi_hassner_bn": ModelFamily(levi_hassner_bn.build, levi_hassner_bn.WEIGHT_DECAY,
                                   levi_hassner_bn.decay_variables,
                                   levi_hassner_bn.lr_multipliers),
    "mobilenet_v2": ModelFamily(mobilenet_v2.build, mobilenet_v2.WEIGHT_DECAY,
                                levi_hassner_bn.decay_variables,
                                levi_hassner_bn.lr_multipliers),
    "resnet": ModelFamily(resnet.build, resnet.WEIGHT_DECAY, levi_hassner_bn.decay_variables,
                          levi_hassner_bn.lr_multipliers),
    "tiny": ModelFamily(tiny.build, levi_hassner.WEIGHT_DECAY, levi_hassner.decay_variables,
                        levi_hassner.lr_multipliers),
}


def names():
    return sorted(MODELS)


def get(name):
    """The ModelFamily called `name`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return MODELS[name]


def build(name, num_classes, mean_image, **options):
    """The model called `name`; `options` go to its `build` (dropout, crop_size, ...)."""
    return get(name).build(num_classes, mean_image, **options)


def flops_per_image(model):
    """Forward FLOPs per image of the model's convolutions and dense layers (2 per multiply-add).

    A layer's multiply-adds are its kernel's size times its output positions (a depthwise
    kernel [k, k, in, multiplier] included); pooling, LRN, batch norm (foldable into the
    convolution), activations, residual additions and biases are left out, as is usual.
    Nested models (a keras.applications backbone) are walked into.
    """
    multiply_adds = 0
    for layer in nesting.all_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            positions = np.prod(layer.output.shape[1:-1], dtype=np.int64)  # 1 for a Dense
            multiply_adds += int(np.prod(kernel.shape, dtype=np.int64) * positions)
    return 2 * multiply_adds


def moving_statistics(model):
    """The moving means and variances of the model's batch-norm layers, nested ones included."""
    return [variable for layer in nesting.all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)
            for variable in (layer.moving_mean, layer.moving_variance)]
