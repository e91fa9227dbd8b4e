"""Image operations in TensorFlow ops, shared by the records build, the input pipeline and export.

One resize function serves the build and the exported model, so that an image served to the
model goes through exactly the pixels a recorded image went through (PIL's and TensorFlow's
resizes differ by up to 7 grey levels). The crops return where they cut, because the paper's
model subtracts the window of the mean image under each crop (Caffe's semantics).
"""

import tensorflow as tf

RECORD_SIZE = 256  # the paper stores 256x256 images...
CROP_SIZE = 227  # ...and trains and tests on 227x227 crops of them
RESIZE_METHOD = "bilinear"  # with antialiasing: a box-like filter when shrinking 816 -> 256
TEN_CROPS = 10


def decode_and_resize(encoded, size=RECORD_SIZE):
    """Encoded JPEG/PNG/BMP/GIF bytes -> a size x size x 3 uint8 image.

    A non-square image is center-cropped to a square first, so that faces keep their shape.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return resize_square(center_square(image), size)


def center_square(image):
    """The largest centered square of an H x W x C image."""
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    return image[top:top + side, left:left + side]


def resize_square(image, size):
    resized = tf.image.resize(image, [size, size], method=RESIZE_METHOD, antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def crop(image, offset, size=CROP_SIZE):
    """The size x size window of `image` whose top-left corner is `offset` (y, x)."""
    return tf.slice(image, tf.stack([offset[0], offset[1], 0]), [size, size, 3])


def random_crop_and_flip(image, seed, size=CROP_SIZE):
    """A random crop and a random horizontal flip, stateless: a function of `seed` alone.

    Args:
      image: H x W x 3.
      seed: int32/int64 tensor of shape [2].

    Returns:
      (crop, offset (y, x) as int32 [2], flipped as bool).
    """
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    shape = tf.shape(image)
    limits = tf.stack([shape[0] - size + 1, shape[1] - size + 1])
    offset = tf.random.stateless_uniform([2], offset_seed, minval=0, maxval=tf.int32.max,
                                         dtype=tf.int32) % limits
    flipped = tf.random.stateless_uniform([], flip_seed) < 0.5
    window = crop(image, offset, size)
    window = tf.cond(flipped, lambda: tf.image.flip_left_right(window), lambda: window)
    return window, offset, flipped


def center_offset(image, size=CROP_SIZE):
    shape = tf.shape(image)
    return tf.stack([(shape[0] - size) // 2, (shape[1] - size) // 2])


def ten_crop_offsets(image, size=CROP_SIZE):
    """The paper's oversampling: 4 corners and the center, then the same 5 mirrored."""
    shape = tf.shape(image)
    bottom, right = shape[0] - size, shape[1] - size
    corners = tf.stack([[0, 0], [0, right], [bottom, 0], [bottom, right],
                        center_offset(image, size)])
    offsets = tf.concat([corners, corners], axis=0)
    flipped = tf.constant([False] * 5 + [True] * 5)
    return offsets, flipped


def ten_crops(image, size=CROP_SIZE):
    """10 x size x size x 3 crops, with their offsets [10, 2] and flips [10]."""
    offsets, flipped = ten_crop_offsets(image, size)
    windows = tf.stack([crop(image, offsets[i], size) for i in range(TEN_CROPS)])
    windows = tf.where(flipped[:, None, None, None], tf.reverse(windows, axis=[2]), windows)
    return windows, offsets, flipped
