"""A tiny stand-in for Levi & Hassner: the same inputs, outputs, layer names and solver.

A few thousand parameters, so that tests run the real training loop in seconds. Global average
pooling makes its size independent of the crop size.
"""

import keras

from input import images
from trainer.models import mean_window
from trainer.models import replicas
# The paper's solver, so that the tiny model exercises the same training step.

PIXEL_SCALE = 1 / 128  # crops minus the mean lie in about [-128, 128]: bring them near [-1, 1]
POOL_SIZE, POOL_STRIDE = 3, 2


def build(num_classes, mean_image, dropout=0.0, crop_size=images.CROP_SIZE,
          replica_layers=replicas.ReplicaLayers()):
    """conv1 (8 5x5 / 4) -> pool1 -> conv2 (16 3x3) -> average -> fc8; see levi_hassner.build."""
    model_inputs = mean_window.inputs(crop_size)
    x = mean_window.subtract_mean(model_inputs, mean_image)
    # Unlike the paper's 0.01 gaussians, default initialisers on scaled pixels train in a few
    # steps at a large learning rate.
    x = keras.layers.Rescaling(PIXEL_SCALE, name="scale")(x)
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(POOL_SIZE, POOL_STRIDE, padding="same", name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    x = replica_layers.dropout(dropout, "drop")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="fc8")(x)
    return keras.Model(model_inputs, logits, name="tiny")
