"""Subject-exclusive splits of Adience examples: the published folds, or our own 60/20/20.

A subject is a `user_id`: one Flickr album, the unit the published folds keep apart. Several
people of one album share photos (3,690 of 13,082 photos hold more than one face), so a split
by `face_id` would put crops of one photo on both sides; a split by album cannot.
"""

import collections
import random

from input import adience

PROTOCOLS = ("folds", "split")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train / validation / test, by examples, split by user_id
SPLIT_NAMES = ("train", "validation", "test")


def fold_name(fold: int) -> str:
    """The split name of a published fold: "fold0" .. "fold4"."""
    return f"fold{fold}"


def by_fold(examples):
    """The published folds: {"fold0": [...], ..., "fold4": [...]}, every fold present."""
    splits = {fold_name(fold): [] for fold in range(adience.FOLDS)}
    for example in examples:
        name = fold_name(example.fold)
        if name not in splits:
            raise ValueError(f"{example.source}: fold {example.fold} is not one of the "
                             f"{adience.FOLDS} published folds")
        splits[name].append(example)
    return splits


def _first_past(sizes, share):
    """Index of the first user whose block of examples is centred past `share` of them all.

    Cutting there puts each user on the side holding most of its block, so each side is off
    its target by at most half of one user's examples.
    """
    target, seen = share * sum(sizes), 0
    for index, size in enumerate(sizes):
        if seen + size / 2 > target:
            return index
        seen += size
    return len(sizes)


def _check_fractions(fractions):
    if len(fractions) != len(SPLIT_NAMES) or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be {len(SPLIT_NAMES)} positive shares "
                         f"({', '.join(SPLIT_NAMES)}) summing to 1, got {fractions}")


def by_subject(examples, seed, fractions=SPLIT_FRACTIONS):
    """Train / validation / test by user_id, near `fractions` of the examples.

    Users are sorted, shuffled with `random.Random(seed)` and cut into three runs at the
    cumulative fractions of their examples; every side gets at least one user. Within a side
    the examples keep their input order.

    Raises:
      ValueError: fewer than three users, or fractions that are not three positive shares.
    """
    _check_fractions(fractions)
    sizes = collections.Counter(example.user_id for example in examples)
    users = sorted(sizes)
    if len(users) < len(SPLIT_NAMES):
        raise ValueError(f"a subject-exclusive split needs at least {len(SPLIT_NAMES)} "
                         f"user ids, got {len(users)}")
    random.Random(seed).shuffle(users)
    user_sizes = [sizes[user] for user in users]
    first = _first_past(user_sizes, fractions[0])
    second = _first_past(user_sizes, fractions[0] + fractions[1])
    # Clamp the cuts so no side is empty when one user outweighs a whole side.
    first = min(max(first, 1), len(users) - 2)
    second = min(max(second, first + 1), len(users) - 1)
    side_of = {user: 0 if i < first else 1 if i < second else 2 for i, user in enumerate(users)}
    splits = {name: [] for name in SPLIT_NAMES}
    for example in examples:
        splits[SPLIT_NAMES[side_of[example.user_id]]].append(example)
    return splits


def make_splits(examples, protocol, seed):
    """The splits of a protocol ("folds" or "split"), checked subject-exclusive."""
    if protocol == "folds":
        splits = by_fold(examples)
    elif protocol == "split":
        splits = by_subject(examples, seed)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    check_subject_exclusive(splits)
    return splits


def check_subject_exclusive(splits):
    """Raises ValueError naming a user_id or a photo found in two splits.

    A photo is matched by its file name alone (Flickr names are unique), so the check also
    catches one photo filed under two user ids.
    """
    user_side, photo_side = {}, {}
    for name, examples in splits.items():
        for example in examples:
            image = example.original_image
            other, other_user = photo_side.setdefault(image, (name, example.user_id))
            if other != name:
                raise ValueError(
                    f"photo {image!r} is in '{other}' (user_id {other_user}) and in '{name}' "
                    f"(user_id {example.user_id}, {example.source}): splits share a photo")
            other = user_side.setdefault(example.user_id, name)
            if other != name:
                raise ValueError(f"user_id {example.user_id} is in '{other}' and in '{name}' "
                                 f"({example.source}): splits share a subject")
