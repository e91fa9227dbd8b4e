"""Levi & Hassner's network with batch norm and a global-average-pooling head.

The paper's stem with each LRN replaced by batch norm after the convolution (Ioffe & Szegedy
2015), and its fc6-fc7 head (18,816 x 512 and 512 x 512: 9.9 M of its 11.4 M parameters)
replaced by an average over positions:

    input   227x227x3 crop minus the window of the mean image under it
    conv1   96 7x7 stride 4, BN, ReLU      -> 56x56x96
    pool1   max 3x3 stride 2               -> 28x28x96
    conv2   256 5x5 pad 2, BN, ReLU        -> 28x28x256
    pool2   max 3x3 stride 2               -> 14x14x256
    conv3   384 3x3 pad 1, BN, ReLU        -> 14x14x384
    pool5   max 3x3 stride 2               -> 7x7x384
    average global average pooling        -> 384
    drop    dropout 0.5
    fc8     num_classes (logits)

Why this head: with Adience's some 15,000 training faces (4 of its 5 folds), the paper's fc6
holds most of the network's capacity to memorise (it needs dropout 0.5 twice and heavy decay).
Averaging the 7x7 map has no parameters, keeps the features wherever the face's parts fall in
the crop, and lets the network run at any crop size; fc8 then learns 384 weights per class. The
forward cost stays about the paper's (its convolutions are 98.6% of it: 1.40 against 1.42 GFLOP
per 227x227 image), with 1.5 M parameters instead of 11.4 M.

Batch norm lets the whole network take the large learning rates of the modern recipe. The
convolutions lose their biases (BN's beta replaces them) and start from He-normal weights, the
scale that keeps ReLU activations' variance through depth (He et al. 2015). No pixel scaling is
needed: BN after conv1 makes the network blind to the input's scale.

Solver: weight decay on kernels only, no learning-rate multipliers; see WEIGHT_DECAY.
"""

import keras

from input import images
from trainer.models import levi_hassner
from trainer.models import mean_window
from trainer.models import nesting
from trainer.models import replicas


DROPOUT = 0.5  # the paper's rate, now on the only layer with many weights per class
HEAD = "fc8"

# The L2 term's factor (recipes.l2_term: gradient WEIGHT_DECAY * w, PyTorch's weight_decay).
# Under batch norm a convolution's kernel scale no longer changes the function, so decay stops
# regularising it and only keeps its norm, hence its effective learning rate (lr / |w|^2),
# from drifting (van Laarhoven 2017). BN networks use 1e-4 (ResNet) to 4e-5 (MobileNetV2, Inception) where
# unnormalised ones used 5e-4; 5e-5 lies in that range, and the head is too small to need more.
WEIGHT_DECAY = 5e-5

# The layers whose kernels are decayed; BN's gamma and beta and all biases are not: shrinking
# them moves the normalised activations' scale and offset, which regularises nothing ("no bias
# decay": Jia et al. 2018, He et al. 2019's "Bag of Tricks").
KERNEL_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def build(num_classes, mean_image, dropout=DROPOUT, crop_size=images.CROP_SIZE,
          replica_layers=replicas.ReplicaLayers()):
    """The network as a Keras functional model; arguments as levi_hassner.build's.

    Returns:
      A model from {"image", "crop_offset", "flip"} to float32 logits [B, num_classes].
    """
    model_inputs = mean_window.inputs(crop_size)
    x = mean_window.subtract_mean(model_inputs, mean_image)
    batch_norm = replica_layers.batch_norm
    x = _conv_bn_relu(x, batch_norm, "conv1", 96, 7, strides=4, padding="valid")
    x = _pool("pool1")(x)
    x = _conv_bn_relu(x, batch_norm, "conv2", 256, 5)
    x = _pool("pool2")(x)
    x = _conv_bn_relu(x, batch_norm, "conv3", 384, 3)
    x = _pool("pool5")(x)
    x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    x = replica_layers.dropout(dropout, "drop")(x)
    # float32 logits even under a mixed-precision policy, for the softmax loss.
    logits = keras.layers.Dense(num_classes, dtype="float32", name=HEAD)(x)
    return keras.Model(model_inputs, logits, name="levi_hassner_bn")


def _conv_bn_relu(x, batch_norm, name, filters, kernel, strides=1, padding="same"):
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                            kernel_initializer="he_normal", name=name)(x)
    x = batch_norm(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _pool(name):
    # The paper's pools: Caffe rounds up, "same" gives Caffe's sizes and windows here.
    return keras.layers.MaxPooling2D(levi_hassner.POOL_SIZE, levi_hassner.POOL_STRIDE,
                                     padding="same", name=name)


def decay_variables(model):
    """Every convolution's and dense layer's kernel, those of nested models included."""
    return [layer.kernel for layer in nesting.all_layers(model)
            if isinstance(layer, KERNEL_LAYERS)]


def lr_multipliers(model):
    """No multipliers: every variable learns at the scheduled rate (the paper's 2x / 10x were
    for Caffe's unnormalised network and its freshly initialised head)."""
    return {}
