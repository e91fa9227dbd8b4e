"""Subject-exclusive splits: the published folds, and our seeded 60/20/20 split by user_id."""

import collections
import functools
import re

import pytest

from conftest import REAL_FOLDS
from input import adience, splits

FRACTION_TOLERANCE = 0.03  # the largest album holds 4.3% of the examples
SEEDS = (0, 1, 2, 3)


@functools.cache
def real_examples():
    return adience.read_examples(REAL_FOLDS, check_images=False)[0]


def example(user_id, original_image, face_id="1", fold=0):
    return adience.Example(
        source=f"test:{user_id}:{original_image}:{face_id}", fold=fold, user_id=user_id,
        face_id=face_id, original_image=original_image, age="(25, 32)", age_class=4,
        gender_class=0, path="")


def users(examples):
    return {e.user_id for e in examples}


def photos(examples):
    return {e.original_image for e in examples}


def test_published_folds_keep_every_user_in_one_fold():
    examples = real_examples()
    folds = splits.by_fold(examples)
    assert list(folds) == ["fold0", "fold1", "fold2", "fold3", "fold4"]
    assert [len(fold) for fold in folds.values()] == [4377, 3092, 3285, 2963, 3676]
    for name, fold_examples in folds.items():
        assert all(splits.fold_name(e.fold) == name for e in fold_examples)
    folds_of_user = collections.defaultdict(set)
    for e in examples:
        folds_of_user[e.user_id].add(e.fold)
    assert all(len(user_folds) == 1 for user_folds in folds_of_user.values())
    assert splits.make_splits(examples, "folds", seed=0) == folds


def test_by_fold_lists_every_fold_even_when_empty():
    assert splits.by_fold([]) == {f"fold{i}": [] for i in range(adience.FOLDS)}


@pytest.mark.parametrize("seed", SEEDS)
def test_split_shares_no_user_and_no_photo_and_loses_nothing(seed):
    examples = real_examples()
    split = splits.by_subject(examples, seed)
    assert list(split) == ["train", "validation", "test"]
    sides = list(split.values())
    for i, side in enumerate(sides):
        for other in sides[i + 1:]:
            assert not users(side) & users(other)
            assert not photos(side) & photos(other)
    assert sorted(e.source for side in sides for e in side) == sorted(e.source for e in examples)
    for side in sides:  # each side keeps the input (fold, line) order
        side_users = users(side)
        assert side == [e for e in examples if e.user_id in side_users]


@pytest.mark.parametrize("seed", SEEDS)
def test_split_is_near_60_20_20_of_examples(seed):
    examples = real_examples()
    split = splits.by_subject(examples, seed)
    for side, target in zip(split.values(), splits.SPLIT_FRACTIONS):
        assert abs(len(side) / len(examples) - target) < FRACTION_TOLERANCE


def test_same_seed_same_split_other_seed_other_split():
    examples = real_examples()
    first = splits.make_splits(examples, "split", seed=7)
    assert splits.make_splits(examples, "split", seed=7) == first
    assert splits.by_subject(list(reversed(examples)), 7)["test"] == list(
        reversed(first["test"]))  # which users go where does not depend on input order
    assert users(splits.by_subject(examples, 8)["test"]) != users(first["test"])


def test_every_side_gets_a_user_even_when_one_user_outweighs_a_side():
    examples = [example("big", f"{i}.jpg") for i in range(100)]
    examples += [example("small_a", "a.jpg"), example("small_b", "b.jpg")]
    for seed in SEEDS:
        split = splits.by_subject(examples, seed)
        assert all(split.values())
        splits.check_subject_exclusive(split)


def test_fewer_than_three_users_or_bad_fractions_raise():
    two_users = [example("a", "a.jpg"), example("b", "b.jpg")]
    with pytest.raises(ValueError, match="at least 3 user ids, got 2"):
        splits.by_subject(two_users, seed=0)
    three_users = two_users + [example("c", "c.jpg")]
    for fractions in [(0.5, 0.5), (0.6, 0.3, 0.3), (0.8, 0.2, 0.0)]:
        with pytest.raises(ValueError, match="fractions"):
            splits.by_subject(three_users, seed=0, fractions=fractions)


def test_unknown_protocol_raises():
    with pytest.raises(ValueError, match="unknown protocol 'random'"):
        splits.make_splits(real_examples(), "random", seed=0)


def test_a_user_on_two_sides_is_named():
    split = splits.by_subject(real_examples(), seed=0)
    moved = split["train"][0]
    one_photo = [e for e in split["train"] if e.original_image == moved.original_image]
    split["test"] += one_photo  # the user's other photos stay in train
    split["train"] = [e for e in split["train"] if e not in one_photo]
    with pytest.raises(ValueError, match=re.escape(f"user_id {moved.user_id} is in 'train' "
                                                   "and in 'test'")):
        splits.check_subject_exclusive(split)


def test_a_photo_on_two_sides_is_named():
    split = splits.by_subject(real_examples(), seed=0)
    photo = split["validation"][0]
    split["test"].append(photo)
    with pytest.raises(ValueError, match=re.escape(f"photo '{photo.original_image}' is in "
                                                   f"'validation' (user_id {photo.user_id})")):
        splits.check_subject_exclusive(split)


def test_a_photo_filed_under_two_user_ids_is_named():
    split = {"train": [example("a", "x.jpg")], "test": [example("b", "x.jpg", face_id="2")]}
    with pytest.raises(ValueError, match=r"photo 'x\.jpg' is in 'train' \(user_id a\) and in "
                                         r"'test' \(user_id b"):
        splits.check_subject_exclusive(split)
    splits.check_subject_exclusive({"train": split["train"], "test": [example("b", "y.jpg")]})


def test_splits_of_the_gender_task_are_subject_exclusive_too():
    examples, _ = adience.read_examples(REAL_FOLDS, task="gender", check_images=False)
    for protocol in splits.PROTOCOLS:
        split = splits.make_splits(examples, protocol, seed=0)
        assert sum(map(len, split.values())) == len(examples)


def test_make_splits_rejects_fold_files_that_share_a_user():
    examples = [example("a", "a.jpg", fold=0), example("b", "b.jpg", fold=1),
                example("a", "c.jpg", fold=1)]
    with pytest.raises(ValueError, match="user_id a is in 'fold0' and in 'fold1'"):
        splits.make_splits(examples, "folds", seed=0)
