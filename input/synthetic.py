"""Synthetic Adience: drawn faces in the real download's exact on-disk format.

The real images cannot be downloaded everywhere, so every test, demo and benchmark runs on this
generator's output, and every command accepts it exactly as it accepts the real download:

  python -m input.synthetic --out /tmp/adience_synth --subjects 100 --workers 2

writes fold_0_data.txt .. fold_4_data.txt (the real header, tab-separated, LF line ends and, as
in the real files, no newline after the last row) and one JPEG per row at
aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image> (--faces_layout adds
faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>, a looser crop).

The fold files copy the real structure: albums (user ids), each in one fold, holding several
people; photos showing one or more of them; the real mix of age strings (irregular ones
included) and genders. A face's look depends on its true age through several cues (head
proportions, wrinkles, grey hair, baldness, beard, skin marks), on an identity fixed per person,
and on per-photo nuisance (pose, light, background, blur, noise), so that a CNN learns the age
group well above chance but not perfectly. Every random draw derives from the seed and what is
drawn (a person, a photo, a row), never from the order of work, so the bytes written do not
depend on --workers.
"""

import collections
import functools
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time

import numpy as np
from absl import flags
from PIL import Image

from input import adience
from input import faces
from launch import entry

DEFAULT_SUBJECTS = 100
DEFAULT_IMAGE_SIZE = 816  # the real aligned images' size
MIN_IMAGE_SIZE, JPEG_QUALITY, PROGRESS_SECONDS = 16, 90, 2.0

# Rows per age string in the real fold files (tests/data/adience): people are labelled with these
# shares, so that rows come out in the real proportions.
AGE_LABEL_ROWS = {
    "(25, 32)": 5004, "(0, 2)": 2488, "(38, 43)": 2293, "(4, 6)": 2140, "(8, 12)": 2124,
    "(15, 20)": 1642, "(60, 100)": 872, "(48, 53)": 830, "None": 748, "35": 293, "13": 168,
    "22": 149, "34": 105, "23": 96, "45": 88, "55": 76, "36": 56, "57": 24, "3": 18, "29": 11,
    "58": 5, "2": 3, "32": 3, "56": 2, "42": 1, "46": 1, "(27, 32)": 77, "(38, 42)": 46,
    "(38, 48)": 6, "(8, 23)": 1}
OLDEST_AGE = 90  # "(60, 100)" people are drawn at 60 to 90
# Genders depend on the label in the real files: infants are often "u", and rows without an
# age mostly have no gender. These shares give f 48%, m 42%, u 6%, empty 4% overall.
GENDER_SHARES = {"(0, 2)": {"f": 0.27, "m": 0.29, "u": 0.44}, "None": {"f": 0.05, "": 0.95}}
OTHER_GENDER_SHARES = {"f": 0.53, "m": 0.465, "": 0.005}

# Albums are smaller than the real ones (median 63 rows, mean 115) so that the default makes a
# few thousand images: a log-normal number of rows, median 30 (mean about 35).
ALBUM_ROWS_MEDIAN, ALBUM_ROWS_SIGMA, ALBUM_ROWS_RANGE, ROWS_PER_PERSON = 30, 0.6, (6, 150), 4
PEOPLE_PER_PHOTO = {1: 0.72, 2: 0.186, 3: 0.053, 4: 0.022, 5: 0.01, 6: 0.009}  # real: 28% 2+
# The face box in the original photo and the fiducial fields, in the real files' ranges.
BOX_MEDIAN, BOX_SIGMA, BOX_RANGE, PHOTO_SIZE, BOX_OVERHANG = 517, 0.75, (80, 3264), 2400, 200
TILT_MODES, TILT_STEP = {0: 0.6, -90: 0.27, 180: 0.1, 90: 0.03}, 5
YAW_SHARES = {0: 13560, 30: 2319, 15: 1208, -15: 762, -30: 597, 45: 487, -45: 437}
SCORE_GAMMA, SCORE_RANGE = (2.2, 34), (5, 221)

# One random stream per kind of thing drawn: a person's look must not depend on which photos
# exist, nor an image on which worker draws it.
PLAN_STREAM = 0  # the fold files; input.faces has the streams of what is drawn
# PIL frees each image's memory at once by default; keeping a few blocks for reuse spares the
# page faults of fresh memory, a third of the time per image.
PIL_CACHED_BLOCKS = 8

# A fold-file line (adience.COLUMNS), then: its fold; its index over all folds, fold 0 first
# (seeds the image); the photo's index (seeds what its people share: background, light); and
# what is drawn: the person's true age and sex.
Row = collections.namedtuple("Row", adience.COLUMNS + ("fold", "index", "photo", "true_age",
                                                      "is_male"))


def _true_age(rng, label):
    """An age in years that the label means; "None" hides a real age of any group."""
    if label == "None":
        label = faces.pick(rng, {k: AGE_LABEL_ROWS[k] for k in adience.AGE_GROUPS})
    numbers = [int(n) for n in label.strip("()").split(",")]
    return rng.uniform(numbers[0], min(numbers[-1] + 1, OLDEST_AGE))


def _person(rng):
    """(age string, gender string, true age, drawn as male) of a new person."""
    label = faces.pick(rng, AGE_LABEL_ROWS)
    gender = faces.pick(rng, GENDER_SHARES.get(label, OTHER_GENDER_SHARES))
    is_male = gender == "m" or (gender not in ("f", "m") and rng.random() < 0.5)
    return label, gender, _true_age(rng, label), is_male


def _unique(taken, make):
    name = make()
    while name in taken:
        name = make()
    taken.add(name)
    return name


def _user_id(rng):
    return f"{rng.integers(10**6, 2 * 10**8)}@N0{rng.integers(9)}"  # Flickr's form


def _photo_name(rng):
    secret = "".join(f"{digit:x}" for digit in rng.integers(0, 16, 10))
    return f"{rng.integers(10**9, 12 * 10**9)}_{secret}_o.jpg"


def _box(rng):
    """x, y, dx, dy, tilt_ang, fiducial_yaw_angle, fiducial_score of one face."""
    dx = int(np.clip(rng.lognormal(math.log(BOX_MEDIAN), BOX_SIGMA), *BOX_RANGE))
    x, y = np.maximum(0, rng.integers(-BOX_OVERHANG, max(1, PHOTO_SIZE - dx), 2)).tolist()
    tilt = faces.pick(rng, TILT_MODES) + TILT_STEP * round(rng.normal(0, 2))
    score = int(np.clip(rng.gamma(*SCORE_GAMMA), *SCORE_RANGE))
    return x, y, dx, dx + int(rng.integers(-1, 2)), tilt, faces.pick(rng, YAW_SHARES), score


def _album(rng, taken, first_face_id, first_photo):
    """The rows of one album: people, and photos each showing one or several of them."""
    user_id = _unique(taken, lambda: _user_id(rng))
    size = int(np.clip(rng.lognormal(math.log(ALBUM_ROWS_MEDIAN), ALBUM_ROWS_SIGMA),
                       *ALBUM_ROWS_RANGE))
    people = [_person(rng) for _ in range(max(1, round(size / ROWS_PER_PERSON *
                                                       rng.uniform(0.6, 1.4))))]
    # A few people fill most photos, as in real family albums.
    weights = 1.0 / np.arange(1, len(people) + 1)
    rng.shuffle(weights)
    face_ids, rows, photo = {}, [], first_photo
    while len(rows) < size:
        count = min(faces.pick(rng, PEOPLE_PER_PHOTO), len(people), size - len(rows))
        name = _unique(taken, lambda: _photo_name(rng))
        for who in rng.choice(len(people), size=count, replace=False, p=weights / weights.sum()):
            label, gender, true_age, is_male = people[who]
            face_id = face_ids.setdefault(who, first_face_id + len(face_ids))
            rows.append(Row(user_id, name, face_id, label, gender, *_box(rng), fold=-1,
                            index=-1, photo=photo, true_age=true_age, is_male=is_male))
        photo += 1
    return rows


def _balanced_folds(sizes):
    """Album indices per fold: largest album first, into the fold with fewest rows."""
    folds, rows = [[] for _ in range(adience.FOLDS)], [0] * adience.FOLDS
    for album in sorted(range(len(sizes)), key=lambda a: -sizes[a]):
        lightest = rows.index(min(rows))
        folds[lightest].append(album)
        rows[lightest] += sizes[album]
    return [sorted(fold) for fold in folds]


def plan(subjects, seed):
    """All rows of a synthetic dataset, no images: `subjects` albums spread over the folds."""
    if subjects < adience.FOLDS:
        raise ValueError(f"subjects must be at least {adience.FOLDS} (an album per fold), got "
                         f"{subjects}")
    rng = np.random.default_rng([seed, PLAN_STREAM])
    albums, taken, face_id, photo = [], set(), 1, 0
    for _ in range(subjects):
        albums.append(_album(rng, taken, face_id, photo))
        face_id, photo = max(r.face_id for r in albums[-1]) + 1, albums[-1][-1].photo + 1
    rows = []
    for fold, members in enumerate(_balanced_folds([len(a) for a in albums])):
        for album in members:
            rows += [r._replace(fold=fold, index=len(rows) + i) for i, r in
                     enumerate(albums[album])]
    return rows


def write_fold_files(rows, out_dir):
    """Writes fold_{0..4}_data.txt byte for byte in the real files' format."""
    for fold in range(adience.FOLDS):
        width = len(adience.COLUMNS)
        lines = ["\t".join(adience.COLUMNS)] + ["\t".join(str(v) for v in r[:width])
                                       for r in rows if r.fold == fold]
        with open(pathlib.Path(out_dir) / adience.FOLD_FILE.format(fold), "w", newline="\n") as f:
            f.write("\n".join(lines))


def _write_images(row, seed, image_size, out_dir, faces_layout):
    """Draws and saves one row's image(s); returns how many files were written."""
    layouts = [("aligned", False)] + [("faces", True)] * faces_layout
    for layout, coarse in layouts:
        path = pathlib.Path(adience.image_path(out_dir, layout, row.user_id, row.face_id,
                                               row.original_image))
        path.parent.mkdir(parents=True, exist_ok=True)
        faces.draw_image(row, seed, image_size, coarse).save(path, "JPEG", quality=JPEG_QUALITY)
    return len(layouts)


def _results(work, rows, workers):
    """work(row) for every row, in any order, in `workers` processes (1: this one)."""
    if workers == 1 or not rows:  # PIL's cache in this process: a setting with no downside
        Image.core.set_blocks_max(max(Image.core.get_blocks_max(), PIL_CACHED_BLOCKS))
        yield from map(work, rows)
        return
    # spawn: clean children even if the caller has imported TensorFlow or runs threads.
    with multiprocessing.get_context("spawn").Pool(
            workers, Image.core.set_blocks_max, (PIL_CACHED_BLOCKS,)) as pool:
        yield from pool.imap_unordered(work, rows, chunksize=max(1, min(
            64, len(rows) // (workers * 8))))


def generate(out_dir, subjects=DEFAULT_SUBJECTS, seed=0, image_size=DEFAULT_IMAGE_SIZE,
             faces_layout=False, workers=None, images=True):
    """Writes a synthetic Adience tree (run it under `if __name__ == "__main__":`: it spawns).

    Args:
      out_dir: where the fold files and image folders go (created if missing).
      subjects: albums (user ids), at least one per fold; about 35 rows each.
      seed: the whole tree is a function of it, whatever `workers` is.
      image_size: side of the square JPEGs.
      faces_layout: also write the faces/ layout.
      workers: processes drawing images; None means one per available core.
      images: False writes only the fold files.

    Returns:
      A summary: rows, albums, people, photos, images, seconds, images_per_sec, out_dir.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    started = last_report = time.perf_counter()
    rows = plan(subjects, seed)
    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_fold_files(rows, out_dir)
    work = functools.partial(_write_images, seed=seed, image_size=image_size, out_dir=out_dir,
                             faces_layout=faces_layout)
    todo = rows if images else []
    written, total = 0, len(todo) * (1 + faces_layout)
    for count in _results(work, todo, workers or len(os.sched_getaffinity(0))):
        written += count
        if time.perf_counter() - last_report >= PROGRESS_SECONDS:
            last_report = time.perf_counter()
            rate = written / (last_report - started)
            print(f"synthetic: {written}/{total} images, {rate:.0f} images/s, ETA "
                  f"{(total - written) / rate:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    return {"rows": len(rows), "albums": len({r.user_id for r in rows}),
            "people": len({r.face_id for r in rows}), "photos": len({r.photo for r in rows}),
            "images": written, "seconds": round(seconds, 2),
            "images_per_sec": round(written / seconds, 1), "out_dir": str(out_dir)}


def _define_flags():
    # Defined only when run as a program: other entry points import generate() and may define
    # flags of the same names (--seed, --workers).
    flags.DEFINE_string("out", None, "Directory of the synthetic Adience tree.", required=True)
    flags.DEFINE_integer("subjects", DEFAULT_SUBJECTS, "Albums (user ids), at least 5, about "
                         "35 rows each: the default writes 3,478 rows and images (seed 0).",
                         lower_bound=adience.FOLDS)
    flags.DEFINE_integer("seed", 0, "Seed of everything written.")
    flags.DEFINE_integer("image_size", DEFAULT_IMAGE_SIZE, "Side of the square JPEGs.",
                         lower_bound=MIN_IMAGE_SIZE)
    flags.DEFINE_bool("faces_layout", False, "Also write faces/.../coarse_tilt_aligned_face.*")
    flags.DEFINE_integer("workers", None, "Drawing processes (default: one per core).",
                         lower_bound=1)
    flags.DEFINE_bool("images", True, "Write images; --noimages writes only the fold files.")


def main(argv):
    del argv
    flag = flags.FLAGS
    if os.path.exists(flag.out) and not os.path.isdir(flag.out):
        raise entry.UserError(f"--out={flag.out}: not a directory")
    summary = generate(flag.out, subjects=flag.subjects, seed=flag.seed,
                       image_size=flag.image_size, faces_layout=flag.faces_layout,
                       workers=flag.workers, images=flag.images)
    print(f"synthetic: {summary['rows']} rows, {summary['albums']} albums, {summary['people']} "
          f"people, {summary['photos']} photos; {summary['images']} images written in "
          f"{summary['seconds']} s ({summary['images_per_sec']} images/s) to {flag.out}",
          flush=True)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    _define_flags()
    entry.run(main)
