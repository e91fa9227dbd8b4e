"""A small residual network (He et al. 2016) that trains from scratch on Adience on a CPU.

ResNet-18's layout at half its width and with one basic block per stage (a "ResNet-10"),
sized for 56x56 crops; a larger crop is first averaged down to about 56x56:

    input   crop minus the window of the mean image under it
    shrink  average k x k, stride k, k = round(crop / 56); / 128    -> 56x56x3 (from 227)
    conv1   32 7x7 stride 2 valid, BN, ReLU           -> 25x25x32
    pool1   max 3x3 stride 2                          -> 13x13x32
    stage1  basic block, 32                           -> 13x13x32
    stage2  basic block, 64, stride 2 (projection)    -> 7x7x64
    stage3  basic block, 128, stride 2 (projection)   -> 4x4x128
    stage4  basic block, 256, stride 2 (projection)   -> 2x2x256
    average global average pooling                    -> 256
    drop    dropout 0.2
    fc8     num_classes (logits)

A basic block is relu(x + bn(conv3x3(relu(bn(conv3x3(x)))))); where it halves the side or
changes the width, x goes through a 1x1 convolution with the same stride and BN (He et al.'s
option B). The last BN of each residual branch starts with gamma = 0 (Goyal et al. 2017): every
block starts as the identity, so the untrained network is shallow and the large learning rates
of the modern recipe are stable from the first steps.

Why the shrink: at 227x227 the same layers without it (maps 111, 56, 28, 14, 7) did not learn
in ten epochs of the modern recipe on synthetic faces, training accuracy included, while with
it the same network, recipe and steps reached 54% (README: Learning at full resolution). Rate
and batch norm were the same in both: the layers' scale was not. At 227 a unit of the last
map sees part of the face, and global average pooling discards where the parts are; at 56 the
last map is 2x2 and each of its units sees the whole face (a full-resolution variant that
flattened its last map, 4x4, instead of averaging it learned as well, at four times the
cost). The shrink drops detail finer than 4 pixels of a 227 crop and makes the network as
cheap at 227 as at 56: 0.032 GFLOP per image (Levi & Hassner: 1.42), 1.2 M parameters
(11.4 M), the same weights at any crop.

Solver: weight decay on kernels only, no learning-rate multipliers (levi_hassner_bn's).
"""

import keras

from input import images
from trainer.models import mean_window
from trainer.models import replicas

PIXEL_SCALE = 1 / 128  # crops minus the mean lie in about [-128, 128]: bring them near [-1, 1]
INPUT_SIDE = 56  # the side the layers are sized for: a larger crop is averaged down to about it
STEM_FILTERS, STEM_KERNEL, STEM_STRIDE = 32, 7, 2
POOL_SIZE, POOL_STRIDE = 3, 2
STAGE_FILTERS = (32, 64, 128, 256)  # each stage after the first halves the side
BLOCKS_PER_STAGE = 1
DROPOUT = 0.2  # 256 averaged features feed the head; modest dropout, as in modern CNN heads
HEAD = "fc8"

# The L2 term's factor (recipes.l2_term: gradient WEIGHT_DECAY * w): He et al.'s value for
# their ImageNet and CIFAR ResNets, trained with SGD and momentum 0.9 as here.
WEIGHT_DECAY = 1e-4


def build(num_classes, mean_image, dropout=DROPOUT, crop_size=images.CROP_SIZE,
          replica_layers=replicas.ReplicaLayers()):
    """The network as a Keras functional model; arguments as levi_hassner.build's.

    Returns:
      A model from {"image", "crop_offset", "flip"} to float32 logits [B, num_classes].
    """
    model_inputs = mean_window.inputs(crop_size)
    x = mean_window.subtract_mean(model_inputs, mean_image)
    factor = shrink_factor(crop_size)
    if factor > 1:  # in float32, as the mean's subtraction: the next layer casts
        x = keras.layers.AveragePooling2D(factor, factor, dtype="float32", name="shrink")(x)
    x = keras.layers.Rescaling(PIXEL_SCALE, name="scale")(x)
    x = _conv(STEM_FILTERS, STEM_KERNEL, STEM_STRIDE, "conv1", padding="valid")(x)
    batch_norm = replica_layers.batch_norm
    x = batch_norm(name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(POOL_SIZE, POOL_STRIDE, padding="same", name="pool1")(x)
    for stage, filters in enumerate(STAGE_FILTERS, start=1):
        for block in range(1, BLOCKS_PER_STAGE + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, batch_norm, filters, strides, f"stage{stage}_block{block}")
    x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    x = replica_layers.dropout(dropout, "drop")(x)
    # float32 logits even under a mixed-precision policy, for the softmax loss.
    logits = keras.layers.Dense(num_classes, dtype="float32", name=HEAD)(x)
    return keras.Model(model_inputs, logits, name="resnet")


def shrink_factor(crop_size):
    """The side of the average pooling that brings a crop to about INPUT_SIDE (1: none)."""
    return max(1, round(crop_size / INPUT_SIDE))


def _basic_block(x, batch_norm, filters, strides, name):
    """relu(shortcut(x) + residual(x)), the residual's last BN starting at gamma = 0."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_project")(x)
        shortcut = batch_norm(name=f"{name}_project_bn")(shortcut)
    y = _conv(filters, 3, strides, f"{name}_conv1")(x)
    y = batch_norm(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = batch_norm(name=f"{name}_bn2", gamma_initializer="zeros")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_relu2")(y)


def _conv(filters, kernel, strides, name, padding="same"):
    # No bias: the BN after every convolution has its own (beta).
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                               use_bias=False, kernel_initializer="he_normal", name=name)
