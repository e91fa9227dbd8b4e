"""Models by name.

Every model module offers the same few names, which the trainer uses without knowing the model:

    build(num_classes, mean_image, dropout=..., crop_size=...) -> keras.Model
        inputs {"image" uint8 [B, c, c, 3], "crop_offset" int32 [B, 2], "flip" bool [B]}
        (`features(batch)` picks them out of a pipeline batch), float32 logits out;
    WEIGHT_DECAY, decay_variables(model), caffe_l2(variables, weight_decay),
    lr_multipliers(model) -> {variable path: multiplier}: the paper's solver, or (for the
        networks with batch norm) decay on kernels only and no multipliers.

levi_hassner is the published network; levi_hassner_bn, resnet and mobilenet_v2 the better ones
(mobilenet_v2's `build` also takes `weights`, a local file of ImageNet weights); tiny is for
tests.
"""

import numpy as np

from trainer.models import levi_hassner
from trainer.models import levi_hassner_bn
from trainer.models import mobilenet_v2
from trainer.models import nesting
from trainer.models import resnet
from trainer.models import tiny
from trainer.models.mean_window import INPUT_KEYS, features  # noqa: F401

MODELS = {
    "levi_hassner": levi_hassner,
    "levi_hassner_bn": levi_hassner_bn,
    "mobilenet_v2": mobilenet_v2,
    "resnet": resnet,
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
    """The model called `name`; `options` go to its module's `build` (dropout, crop_size, ...)."""
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
