"""Models by name.

Every model module offers the same few names, which the trainer uses without knowing the model:

    build(num_classes, mean_image, dropout=..., crop_size=...) -> keras.Model
        inputs {"image" uint8 [B, c, c, 3], "crop_offset" int32 [B, 2], "flip" bool [B]}
        (`features(batch)` picks them out of a pipeline batch), float32 logits out;
    WEIGHT_DECAY, decay_variables(model), caffe_l2(variables, weight_decay),
    lr_multipliers(model) -> {variable path: multiplier}: the paper's solver.
"""

import numpy as np

from trainer.models import levi_hassner
from trainer.models import tiny
from trainer.models.mean_window import INPUT_KEYS, features  # noqa: F401

MODELS = {
    "levi_hassner": levi_hassner,
    "tiny": tiny,
}


def names():
    return sorted(MODELS)


def get(name):
    """The module of the model called `name`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return MODELS[name]


def build(name, num_classes, mean_image, **options):
    """The model called `name`; `options` go to its module's `build` (dropout, crop_size)."""
    return get(name).build(num_classes, mean_image, **options)


def flops_per_image(model):
    """Forward FLOPs per image of the model's convolutions and dense layers (2 per multiply-add).

    A layer's multiply-adds are its kernel's size times its output positions; pooling, LRN,
    activations and biases are left out, as is usual.
    """
    multiply_adds = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            positions = np.prod(layer.output.shape[1:-1], dtype=np.int64)  # 1 for a Dense
            multiply_adds += int(np.prod(kernel.shape, dtype=np.int64) * positions)
    return 2 * multiply_adds
