"""Training data is really shuffled: the first examples of an epoch come from as many albums as
uniform draws would, on the real Adience albums (the fold files' user_ids, their sizes and their
order), through the build and the training pipeline with their defaults (a 2,048-record
buffer: `--cache`'s whole-share shuffle is tested in test_pipeline.py).

Batches do not carry their album, so every face of album k is a flat image of grey level k:
the album of an example is its first pixel.
"""

import collections
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REAL_FOLDS
from input import adience
from input import build
from input import pipeline
from input import records as records_lib
from input import schema

IMAGE_SIZE = 8  # the records' images and crops: only their grey level matters here
FIRST = 64  # examples at the start of an epoch
EPOCHS = 4  # averaged: 64 uniform draws vary by about 3 albums around 41
SEED = 0
HELD_OUT_FOLD = 0


@pytest.fixture(scope="module")
def album_records(tmp_path_factory):
    """(records of the real fold files built with the defaults, their albums by grey level).
    The held-out fold is left empty: the build would spend a quarter of its time on it."""
    tree = tmp_path_factory.mktemp("albums")
    for fold in range(adience.FOLDS):
        shutil.copy(REAL_FOLDS / adience.FOLD_FILE.format(fold), tree)
    held_out = tree / adience.FOLD_FILE.format(HELD_OUT_FOLD)  # not read here: its header only
    held_out.write_text(held_out.read_text().split("\n")[0] + "\n")
    examples, _ = adience.read_examples(str(tree), check_images=False)
    albums = sorted({example.user_id for example in examples})
    assert len(albums) <= 256  # one grey level each
    for level, album in enumerate(albums):
        Image.fromarray(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), level, np.uint8)).save(
            tree / f"album{level}.png")
    level_of = {album: level for level, album in enumerate(albums)}
    for example in examples:  # every face of an album: a link to the album's image
        os.makedirs(os.path.dirname(example.path), exist_ok=True)
        os.link(tree / f"album{level_of[example.user_id]}.png", example.path)
    out = tmp_path_factory.mktemp("album_records")
    build.build(str(tree), str(out), workers=2, image_size=IMAGE_SIZE, image_format="raw",
                seed=SEED)
    return records_lib.load(str(out)), albums


def expected_distinct_albums(sizes, draws):
    """The mean number of distinct albums in `draws` examples drawn uniformly without
    replacement from albums of these sizes."""
    total = sum(sizes)
    return sum(1 - math.comb(total - size, draws) / math.comb(total, draws) for size in sizes)


def album_sizes(records, split_names):
    """Examples per album (the records' subject/user_id) in these splits."""
    user_id = {"subject/user_id": schema.FEATURES["subject/user_id"]}
    users = tf.data.TFRecordDataset(records.files(records.shards(split_names))).map(
        lambda record: tf.io.parse_single_example(record, user_id)["subject/user_id"])
    return collections.Counter(user.numpy().decode() for user in users)


def test_an_epoch_starts_with_as_many_albums_as_uniform_draws(album_records):
    records, albums = album_records
    train_splits, _ = records.protocol_splits(HELD_OUT_FOLD)
    sizes = album_sizes(records, train_splits)
    examples = sum(sizes.values())
    expected = expected_distinct_albums(list(sizes.values()), FIRST)
    distinct = []
    for epoch in range(EPOCHS):  # each epoch's start, reached without reading the ones before
        dataset = pipeline.train_dataset(records, train_splits, 1, seed=SEED,
                                         deterministic=True, start_step=epoch * examples,
                                         crop_size=IMAGE_SIZE)
        levels = [int(batch["image"][0, 0, 0, 0]) for batch in dataset.take(FIRST)]
        assert {albums[level] for level in levels} <= sizes.keys()
        distinct.append(len(set(levels)))
    assert np.mean(distinct) >= 0.8 * expected, (distinct, expected)
