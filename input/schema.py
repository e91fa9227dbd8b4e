"""The one record schema, written by `input.build` and parsed by `input.pipeline`; shard names.

Keys follow TensorFlow's common image-record names, so other tools can read the shards:

| key | type | what |
|---|---|---|
| `image/encoded` | bytes | the 256x256 image: JPEG bytes, or the decoded uint8 pixels (H*W*3, row-major RGB) when the format is `raw` |
| `image/format` | bytes | `jpeg` or `raw` |
| `image/height`, `image/width` | int64 | the stored image's size |
| `image/class/label` | int64 | the class of the task the records were built for (age group 0..7, or gender 0/1) |
| `image/filename` | bytes | the source image, relative to the Adience folder |
| `age/class` | int64 | age group 0..7, or -1 when the rule does not map the row's age |
| `gender/class` | int64 | 0 female, 1 male, -1 unknown |
| `subject/user_id` | bytes | the album (the unit every split keeps on one side) |
| `subject/face_id` | bytes | the person |
| `source` | bytes | fold file and line, e.g. `fold_0_data.txt:17` |
| `fold` | int64 | the fold file the row came from |
"""

import tensorflow as tf

FORMATS = ("jpeg", "raw")
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"
MANIFEST = "manifest.json"
PIXEL_SUMS = "pixel_sums.npz"  # per split: the per-pixel sum of its images (float64 H x W x 3)

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "age/class": tf.io.FixedLenFeature([], tf.int64),
    "gender/class": tf.io.FixedLenFeature([], tf.int64),
    "subject/user_id": tf.io.FixedLenFeature([], tf.string),
    "subject/face_id": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
    "fold": tf.io.FixedLenFeature([], tf.int64),
}


def shard_name(split, index, count):
    return SHARD_PATTERN.format(split=split, index=index, count=count)


def _bytes(value):
    value = value.encode() if isinstance(value, str) else value
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def serialize(image_bytes, image_format, size, label, example, filename):
    """One record of an `input.adience.Example`; `size` is the stored image's side, `filename`
    the source image relative to the Adience folder."""
    features = {
        "image/encoded": _bytes(image_bytes),
        "image/format": _bytes(image_format),
        "image/height": _int(size),
        "image/width": _int(size),
        "image/class/label": _int(label),
        "image/filename": _bytes(filename),
        "age/class": _int(example.age_class),
        "gender/class": _int(example.gender_class),
        "subject/user_id": _bytes(example.user_id),
        "subject/face_id": _bytes(example.face_id),
        "source": _bytes(example.source),
        "fold": _int(example.fold),
    }
    example_proto = tf.train.Example(features=tf.train.Features(feature=features))
    return example_proto.SerializeToString(deterministic=True)  # map order: same bytes every run


def parse(serialized, image_format, size):
    """A serialized record -> {"image": uint8 [size, size, 3], "label": int32, ...}.

    `image_format` and `size` come from the manifest (one format per records folder), which
    gives the image a static shape and spares a branch per record.
    """
    record = tf.io.parse_single_example(serialized, FEATURES)
    if image_format == "raw":
        image = tf.reshape(tf.io.decode_raw(record["image/encoded"], tf.uint8), [size, size, 3])
    else:
        image = tf.ensure_shape(tf.io.decode_jpeg(record["image/encoded"], channels=3),
                                [size, size, 3])
    return {
        "image": image,
        "label": tf.cast(record["image/class/label"], tf.int32),
        "age": tf.cast(record["age/class"], tf.int32),
        "gender": tf.cast(record["gender/class"], tf.int32),
        "user_id": record["subject/user_id"],
        "source": record["source"],
    }


def parse_label(serialized):
    """Only the label: what `input.verify` needs to count classes without decoding images."""
    features = {"image/class/label": FEATURES["image/class/label"]}
    return tf.io.parse_single_example(serialized, features)["image/class/label"]
