"""The models' inputs, and Caffe's mean-image subtraction as a Keras layer.

Caffe subtracts from each crop the window of the per-pixel mean image under that crop (same
offset), mirrored when the crop was mirrored; not the mean's center. The pipeline therefore
sends each crop with its offset and flip, and `MeanWindow` cuts the matching windows for the
whole batch with two gathers (rows, then columns), so that the model input is

    float(crop) - flip?(mean[y:y + h, x:x + w])

The mean is a non-trainable weight: checkpoints and SavedModels carry the mean of the folds the
model was trained on.
"""

import keras
import numpy as np
import tensorflow as tf

from input import batch

def inputs(crop_size):
    """The models' named inputs (input.batch.MODEL_INPUTS): uint8 crops, their (y, x) offsets
    and their flips."""
    return batch.make_inputs(
        keras.Input((crop_size, crop_size, 3), dtype="uint8", name=batch.IMAGE),
        keras.Input((2,), dtype="int32", name=batch.CROP_OFFSET),
        keras.Input((), dtype="bool", name=batch.FLIP))


def subtract_mean(model_inputs, mean_image, name="mean_window"):
    """float32 crops minus their windows of `mean_image` (H x W x 3, or None: minus nothing)."""
    shape = None if mean_image is None else np.shape(mean_image)
    layer = MeanWindow(shape, name=name)
    if mean_image is not None:
        layer.mean.assign(np.asarray(mean_image, np.float32))
    return layer(*(model_inputs[key] for key in batch.MODEL_INPUTS))


@keras.saving.register_keras_serializable(package="agenet")
class MeanWindow(keras.layers.Layer):
    """Crops minus the windows of the mean image under them; see the module docstring.

    Always computes in float32 (uint8 pixels minus a float mean would lose precision in
    bfloat16); the next layer casts to its compute dtype.
    """

    def __init__(self, mean_shape=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean_shape = None if mean_shape is None else tuple(int(d) for d in mean_shape)
        self.mean = None
        if self.mean_shape is not None:
            self.mean = self.add_weight(shape=self.mean_shape, initializer="zeros",
                                        trainable=False, name="mean")

    def call(self, image, crop_offset, flip):
        pixels = tf.cast(image, tf.float32)
        if self.mean is None:
            return pixels
        height, width = image.shape[1], image.shape[2]  # static: the window follows the crop
        if height > self.mean_shape[0] or width > self.mean_shape[1]:
            raise ValueError(f"{height}x{width} crops do not fit in the "
                             f"{self.mean_shape[0]}x{self.mean_shape[1]} mean image")
        offset = tf.cast(crop_offset, tf.int32)
        rows = offset[:, :1] + tf.range(height)  # [B, h]
        steps = tf.range(width)
        mirrored = tf.where(flip[:, None], width - 1 - steps, steps)  # [B, w]
        columns = offset[:, 1:] + mirrored
        window = tf.gather(self.mean, rows)  # [B, h, W, 3]
        window = tf.gather(window, columns, axis=2, batch_dims=1)  # [B, h, w, 3]
        return pixels - window

    def compute_output_shape(self, image_shape, crop_offset_shape=None, flip_shape=None):
        return tuple(image_shape)

    def get_config(self):
        return {**super().get_config(), "mean_shape": self.mean_shape}
