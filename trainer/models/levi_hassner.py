"""Levi & Hassner (2015), "Age and Gender Classification using Convolutional Neural Networks".

The network and solver exactly as published (Caffe semantics, as in the authors' release):

    input   227x227x3 crop minus the window of the mean image under it
    conv1   96 7x7 stride 4, ReLU          -> 56x56x96
    pool1   max 3x3 stride 2               -> 28x28x96
    norm1   LRN, local_size 5
    conv2   256 5x5 pad 2, ReLU            -> 28x28x256
    pool2   max 3x3 stride 2               -> 14x14x256
    norm2   LRN, local_size 5
    conv3   384 3x3 pad 1, ReLU            -> 14x14x384
    pool5   max 3x3 stride 2               -> 7x7x384 = 18,816
    fc6     512, ReLU, dropout 0.5
    fc7     512, ReLU, dropout 0.5
    fc8     num_classes (logits)

11,415,048 trainable parameters for 8 classes; about 0.71 G multiply-adds forward per image.
Solver: SGD, momentum 0.9, weight decay 5e-4 on weights only, learning-rate multipliers 2x on
biases and 10x / 20x on fc8's weights / biases.
"""

import keras
import tensorflow as tf

from input import images
from trainer.models import mean_window
from trainer.models import replicas

CONV_STD = 0.01  # conv1..conv3 weights
FC_STD = 0.005  # fc6, fc7 weights
HEAD_STD = 0.01  # fc8 weights
POOL_SIZE, POOL_STRIDE = 3, 2  # Caffe rounds up; "same" gives Caffe's sizes and windows here
DROPOUT = 0.5

# Caffe's LRN: b = a / (k + alpha / n * sum over n channels of a^2) ^ beta
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0

WEIGHT_DECAY = 5e-4  # on weights only
BIAS_LR_MULTIPLIER = 2.0
HEAD = "fc8"
HEAD_LR_MULTIPLIER = 10.0  # fc8's weights; its biases get 10 x 2 = 20


def build(num_classes, mean_image, dropout=DROPOUT, crop_size=images.CROP_SIZE,
          replica_layers=replicas.ReplicaLayers()):
    """The published network as a Keras functional model.

    Args:
      num_classes: 8 for age groups, 2 for gender.
      mean_image: the training folds' per-pixel mean (H x W x 3 float32), or None.
      dropout: after fc6 and fc7.
      crop_size: the side of the input crops; 227 in the paper, smaller in tests.
      replica_layers: the dropout (and batch norm) the distribution decides, see
        trainer.models.replicas.

    Returns:
      A model from {"image", "crop_offset", "flip"} to float32 logits [B, num_classes].
    """
    model_inputs = mean_window.inputs(crop_size)
    x = mean_window.subtract_mean(model_inputs, mean_image)
    x = _conv("conv1", 96, 7, strides=4, padding="valid", bias=0.0)(x)
    x = _pool("pool1")(x)
    x = CaffeLRN(name="norm1")(x)
    x = _conv("conv2", 256, 5, padding="same", bias=1.0)(x)  # Caffe's pad 2
    x = _pool("pool2")(x)
    x = CaffeLRN(name="norm2")(x)
    x = _conv("conv3", 384, 3, padding="same", bias=0.0)(x)  # Caffe's pad 1
    x = _pool("pool5")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _dense("fc6", 512, FC_STD, bias=1.0, activation="relu")(x)
    x = replica_layers.dropout(dropout, "drop6")(x)
    x = _dense("fc7", 512, FC_STD, bias=1.0, activation="relu")(x)
    x = replica_layers.dropout(dropout, "drop7")(x)
    # float32 logits even under a mixed-precision policy, for the softmax loss.
    logits = _dense(HEAD, num_classes, HEAD_STD, bias=0.0, dtype="float32")(x)
    return keras.Model(model_inputs, logits, name="levi_hassner")


def _conv(name, filters, kernel, bias, strides=1, padding="same"):
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                               activation="relu", kernel_initializer=_gaussian(CONV_STD),
                               bias_initializer=keras.initializers.Constant(bias), name=name)


def _pool(name):
    return keras.layers.MaxPooling2D(POOL_SIZE, POOL_STRIDE, padding="same", name=name)


def _dense(name, units, std, bias, **kwargs):
    return keras.layers.Dense(units, kernel_initializer=_gaussian(std),
                              bias_initializer=keras.initializers.Constant(bias), name=name,
                              **kwargs)


def _gaussian(std):
    # A new initializer per layer: every call of one unseeded Keras 3 instance draws equal values.
    return keras.initializers.RandomNormal(mean=0.0, stddev=std)


@keras.saving.register_keras_serializable(package="agenet")
class CaffeLRN(keras.layers.Layer):
    """Caffe's cross-channel local response normalization, computed in float32.

    Caffe divides alpha by the window size; TensorFlow's LRN does not, hence alpha / size.
    TensorFlow has no bfloat16 LRN kernel on CPU, so the layer casts in and out of float32.
    """

    def __init__(self, size=LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K, **kwargs):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def call(self, x):
        normalized = tf.nn.local_response_normalization(
            tf.cast(x, tf.float32), depth_radius=self.size // 2, bias=self.k,
            alpha=self.alpha / self.size, beta=self.beta)
        return tf.cast(normalized, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha,
                "beta": self.beta, "k": self.k}


def decay_variables(model):
    """The variables Caffe's weight decay applies to: every layer's weights, no bias."""
    return [layer.kernel for layer in _weighted_layers(model)]


def lr_multipliers(model):
    """Caffe's per-variable learning-rate multipliers, by variable path ("conv1/kernel").

    Weights 1x, biases 2x; the head (fc8) 10x its weights and 20x its biases.
    """
    multipliers = {}
    for layer in _weighted_layers(model):
        scale = HEAD_LR_MULTIPLIER if layer.name == HEAD else 1.0
        multipliers[layer.kernel.path] = scale
        if layer.bias is not None:
            multipliers[layer.bias.path] = scale * BIAS_LR_MULTIPLIER
    return multipliers


def _weighted_layers(model):
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
