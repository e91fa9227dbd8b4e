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
proportions, wrinkles, grey hair, baldness, beard, skin), on a fixed identity per person, and on
per-photo nuisance (pose, lighting, background, blur, noise), so that a CNN learns the age group
well above chance but not perfectly. Every random draw derives from (seed, what is drawn), so
the bytes written do not depend on --workers.
"""

import functools
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw


FOLDS = 5
HEADER = ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
          "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
FOLD_FILE = "fold_{fold}_data.txt"
ALIGNED_PATH = "aligned/{user_id}/landmark_aligned_face.{face_id}.{original_image}"
FACES_PATH = "faces/{user_id}/coarse_tilt_aligned_face.{face_id}.{original_image}"
DEFAULT_SUBJECTS = 100
DEFAULT_IMAGE_SIZE = 816  # the real aligned images' size
MIN_IMAGE_SIZE = 16
JPEG_QUALITY = 90
PROGRESS_SECONDS = 2.0

# Rows per age string in the real fold files (shared/README.md): people are labelled with these
# shares, so the rows come out in the real proportions.
AGE_LABEL_ROWS = {
    "(25, 32)": 5004, "(0, 2)": 2488, "(38, 43)": 2293, "(4, 6)": 2140, "(8, 12)": 2124,
    "(15, 20)": 1642, "(60, 100)": 872, "(48, 53)": 830, "None": 748, "35": 293, "13": 168,
    "22": 149, "34": 105, "23": 96, "45": 88, "55": 76, "36": 56, "57": 24, "3": 18, "29": 11,
    "58": 5, "2": 3, "32": 3, "56": 2, "42": 1, "46": 1, "(27, 32)": 77, "(38, 42)": 46,
    "(38, 48)": 6, "(8, 23)": 1}
PAPER_LABELS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)",
                "(60, 100)")
OLDEST_AGE = 90  # "(60, 100)" people are drawn at 60 to 90
# Genders depend on the label in the real files: infants are often "u", and rows without an
# age mostly have no gender. These shares give f 48%, m 42%, u 6%, empty 4% overall.
GENDER_SHARES = {"(0, 2)": {"f": 0.27, "m": 0.29, "u": 0.44}, "None": {"f": 0.05, "": 0.95}}
OTHER_GENDER_SHARES = {"f": 0.53, "m": 0.465, "": 0.005}

# Albums are smaller than the real ones (median 63 rows, mean 115) so that the default makes a
# few thousand images; the mean here is about 36 rows.
ALBUM_ROWS_MEDIAN = 30
ALBUM_ROWS_SPREAD = 0.6  # sigma of the log
ALBUM_ROWS_RANGE = (6, 150)
ROWS_PER_PERSON = 4
PEOPLE_PER_PHOTO = {1: 0.72, 2: 0.186, 3: 0.053, 4: 0.022, 5: 0.01, 6: 0.009}  # real: 28% 2+

# The face box in the original photo and the fiducial fields, in the real files' ranges.
BOX_MEDIAN, BOX_SPREAD, BOX_RANGE = 517, 0.75, (80, 3264)
PHOTO_WIDTH, PHOTO_HEIGHT, BOX_CLIP_MARGIN = 2400, 1800, 200
TILT_MODES, TILT_MODE_SHARES, TILT_STEP = (0, -90, 180, 90), (0.6, 0.27, 0.1, 0.03), 5
YAW_SHARES = {0: 13560, 30: 2319, 15: 1208, -15: 762, -30: 597, 45: 487, -45: 437}
SCORE_GAMMA_SHAPE, SCORE_GAMMA_SCALE, SCORE_RANGE = 2.2, 34, (5, 221)

# Independent random streams: a person's look must not depend on which photos exist, nor an
# image on which worker draws it.
PLAN_STREAM, PHOTO_STREAM, ROW_STREAM = 0, 1, 2


class Row(NamedTuple):
    """One line of a fold file (the first 12 fields, in HEADER's order) and what drew it."""
    user_id: str
    original_image: str
    face_id: int
    age: str
    gender: str
    x: int
    y: int
    dx: int
    dy: int
    tilt_ang: int
    fiducial_yaw_angle: int
    fiducial_score: int
    fold: int = -1
    index: int = -1  # position over all fold files, fold 0 first: seeds the image
    photo_index: int = -1  # seeds what the people on one photo share (background, light)
    true_age: float = 0.0
    is_male: bool = False


def _shares(table):
    """Keys and probabilities of a {value: weight} table."""
    weights = np.array(list(table.values()), dtype=float)
    return list(table), weights / weights.sum()


def _pick(rng, table):
    keys, probabilities = _shares(table)
    return keys[rng.choice(len(keys), p=probabilities)]


def _true_age(rng, label):
    """An age in years that the label means; "None" hides a real age of any group."""
    if label == "None":
        label = _pick(rng, {k: AGE_LABEL_ROWS[k] for k in PAPER_LABELS})
    numbers = [int(n) for n in label.strip("()").split(",")]
    return rng.uniform(numbers[0], min(numbers[-1] + 1, OLDEST_AGE))


def _person(rng):
    """(age string, gender string, true age, drawn as male) of a new person."""
    label = _pick(rng, AGE_LABEL_ROWS)
    gender = _pick(rng, GENDER_SHARES.get(label, OTHER_GENDER_SHARES))
    is_male = gender == "m" or (gender not in ("f", "m") and rng.random() < 0.5)
    return label, gender, _true_age(rng, label), is_male


def _unique(taken, make):
    name = make()
    while name in taken:
        name = make()
    taken.add(name)
    return name


def _user_id(rng):
    return f"{rng.integers(10**6, 2 * 10**8)}@N0{rng.integers(0, 9)}"


def _photo_name(rng):
    secret = "".join(f"{d:x}" for d in rng.integers(0, 16, 10))
    return f"{rng.integers(10**9, 12 * 10**9)}_{secret}_o.jpg"


def _box(rng):
    """x, y, dx, dy, tilt_ang, fiducial_yaw_angle, fiducial_score of one face."""
    dx = int(np.clip(rng.lognormal(math.log(BOX_MEDIAN), BOX_SPREAD), *BOX_RANGE))
    x = max(0, int(rng.integers(-BOX_CLIP_MARGIN, max(1, PHOTO_WIDTH - dx))))
    y = max(0, int(rng.integers(-BOX_CLIP_MARGIN, max(1, PHOTO_HEIGHT - dx))))
    tilt = _pick(rng, dict(zip(TILT_MODES, TILT_MODE_SHARES))) + TILT_STEP * round(rng.normal(0, 2))
    score = np.clip(rng.gamma(SCORE_GAMMA_SHAPE, SCORE_GAMMA_SCALE), *SCORE_RANGE)
    return x, y, dx, dx + int(rng.integers(-1, 2)), tilt, _pick(rng, YAW_SHARES), int(score)


def _album(rng, taken, first_face_id, first_photo):
    """The rows of one album: people, and photos each showing one or several of them."""
    user_id = _unique(taken, lambda: _user_id(rng))
    size = int(np.clip(rng.lognormal(math.log(ALBUM_ROWS_MEDIAN), ALBUM_ROWS_SPREAD),
                       *ALBUM_ROWS_RANGE))
    people = [_person(rng) for _ in range(max(1, round(size / ROWS_PER_PERSON *
                                                       rng.uniform(0.6, 1.4))))]
    # A few people fill most photos of an album, as in real family albums.
    weights = 1.0 / np.arange(1, len(people) + 1)
    rng.shuffle(weights)
    face_ids, rows, photo = {}, [], first_photo
    while len(rows) < size:
        count = min(_pick(rng, PEOPLE_PER_PHOTO), len(people), size - len(rows))
        name = _unique(taken, lambda: _photo_name(rng))
        for who in rng.choice(len(people), size=count, replace=False, p=weights / weights.sum()):
            face_id = face_ids.setdefault(who, first_face_id + len(face_ids))
            label, gender, true_age, is_male = people[who]
            rows.append(Row(user_id, name, face_id, label, gender, *_box(rng),
                            photo_index=photo, true_age=true_age, is_male=is_male))
        photo += 1
    return rows


def _balanced_folds(sizes):
    """Album indices per fold: largest album first into the fold with fewest rows."""
    folds, rows = [[] for _ in range(FOLDS)], [0] * FOLDS
    for album in sorted(range(len(sizes)), key=lambda a: -sizes[a]):
        lightest = rows.index(min(rows))
        folds[lightest].append(album)
        rows[lightest] += sizes[album]
    return [sorted(fold) for fold in folds]


def plan(subjects, seed):
    """All rows of a synthetic dataset (no images): `subjects` albums spread over the folds."""
    if subjects < FOLDS:
        raise ValueError(f"subjects must be at least {FOLDS} (one album per fold), got "
                         f"{subjects}")
    rng = np.random.default_rng([seed, PLAN_STREAM])
    albums, taken, face_id, photo = [], set(), 1, 0
    for _ in range(subjects):
        albums.append(_album(rng, taken, face_id, photo))
        face_id = max(r.face_id for r in albums[-1]) + 1
        photo = albums[-1][-1].photo_index + 1
    rows = []
    for fold, members in enumerate(_balanced_folds([len(a) for a in albums])):
        for album in members:
            rows += [r._replace(fold=fold, index=len(rows) + i) for i, r in
                     enumerate(albums[album])]
    return rows


def write_fold_files(rows, out_dir):
    """Writes fold_{0..4}_data.txt byte for byte in the real files' format."""
    for fold in range(FOLDS):
        lines = ["\t".join(HEADER)] + ["\t".join(str(v) for v in r[:len(HEADER)])
                                       for r in rows if r.fold == fold]
        with open(pathlib.Path(out_dir) / FOLD_FILE.format(fold=fold), "w",
                  newline="\n") as f:
            f.write("\n".join(lines))


# How a person looks: drawn once per person from (seed, face_id), the same on all their photos.
SKIN_TONES = ((255, 224, 196), (241, 194, 158), (224, 172, 130), (198, 134, 92), (141, 85, 54),
              (94, 58, 38))
HAIR_COLOURS = {(25, 20, 18): 3, (60, 40, 28): 3, (100, 68, 42): 2, (150, 108, 66): 1,
                (205, 172, 112): 1, (150, 70, 35): 0.5}
EYE_COLOURS = ((70, 45, 25), (40, 28, 20), (80, 120, 170), (90, 130, 80), (115, 120, 125))
HAIR_STYLES = {True: {"short": 0.75, "curly": 0.15, "long": 0.1},
               False: {"long": 0.65, "short": 0.2, "curly": 0.15}}  # by is_male
BEARD_SHARE = 0.4  # of men who grow one once adult
GREY_HAIR, BLOND, PINK, SALLOW = (215, 215, 212), (215, 180, 120), (250, 190, 180), (175, 160, 130)
EYE_WHITE, PUPIL, WRINKLE, LIPS = (240, 238, 232), (15, 12, 12), (70, 40, 30), (185, 75, 80)
SPOT, ACNE = (125, 85, 55), (205, 70, 60)

# Age cues. Each is a smooth function of the true age, so that neighbouring groups look alike.
CHILD_AGE_SCALE = 6.0  # years over which infant proportions fade (e-folding)
HEAD_HALF_WIDTH, HEAD_Y, ADULT_HEAD_ASPECT = 0.19, -0.02, 1.3  # image fractions
INFANT_HEAD_GAIN, INFANT_ASPECT_DROP = 0.1, 0.24  # infants: bigger, rounder heads
INFANT_EYE_DROP, INFANT_EYE_GAIN = 0.24, 0.5  # infants: eyes low (big forehead) and large
INFANT_FEATURE_SHRINK = 0.35  # infants: nose and mouth close together (small lower face)
NOSE_LENGTH, MOUTH_DROP, MOUTH_WIDTH, IRIS, EYE_SPACING = 0.36, 0.2, 0.34, 0.085, 0.4
JAW_TAPER = {True: 0.14, False: 0.22}  # adult chins narrow, men's less
BABY_BLOND, BABY_PINK, FULL_HAIR_AGE, BABY_HAIR = 0.35, 0.15, 2.5, 0.15
WRINKLE_ONSET, WRINKLE_SPAN, WRINKLE_CONTRAST, SALLOW_MAX = 27.0, 45.0, 0.6, 0.15
GREY_AGE, GREY_WIDTH, GREY_ONSET_STD = 50.0, 7.0, 6.0
BALD_AGE, BALD_WIDTH, BEARD_AGE, BEARD_RAMP = 42.0, 8.0, 16.0, 8.0
ACNE_AGE, ACNE_WIDTH, ACNE_MAX, SPOTS_AGE, SPOTS_SPAN, SPOTS_MAX = 16.5, 3.0, 8, 50.0, 30.0, 10
HAIRLINE, RECEDE, BABY_RECEDE, FRINGE_DIP, HAIR_PUFF = 0.5, 0.45, 0.35, 0.12, 1.07
FOREHEAD_LINES, CROWS_FEET, EYE_SAG, BLUSH = 4, 3, 0.3, 0.3
LINE = 0.005  # stroke width, image fraction
YAW_SHIFT = 0.12  # features move this share of the head's half-width at 45 degrees of yaw

# Per-photo nuisance.
POSE_DEGREES, POSE_LOG_SCALE, POSE_SHIFT, SMILE_STD = 8.0, 0.08, 0.04, 0.5
COARSE_SCALE, COARSE_DEGREES = 0.8, 8.0  # the faces/ layout: looser crop, rougher alignment
BACKGROUND_SHAPES, BACKGROUND_SPREAD = 6, 40.0
CONTRAST_RANGE, BRIGHTNESS_STD, COLOUR_CAST, LIGHT_GRADIENT = (0.65, 1.25), 18.0, 0.1, 50
LOW_RES_SHARE, LOW_RES_FACTORS = 0.3, (2, 3)  # blurry photos: drawn small, scaled up
NOISE_STDS, NOISE_CLIP, NOISE_MARGIN = (2.0, 5.0, 9.0), 40, 0.25
ELLIPSE_POINTS, ARC_POINTS = 40, 9
PERSON_STREAM, NOISE_STREAM = 3, 4


def _mix(a, b, t):
    return np.asarray(a, float) + (np.asarray(b, float) - a) * float(np.clip(t, 0, 1))


def _rgb(colour):
    return tuple(int(v) for v in np.clip(colour, 0, 255))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _ellipse(cx, cy, rx, ry, start=0.0, end=2 * math.pi, n=ELLIPSE_POINTS):
    t = np.linspace(start, end, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


class _Pen:
    """ImageDraw in face coordinates (image fractions around the centre) under a pose."""

    def __init__(self, image, angle, scale, shift):
        self.draw, size = ImageDraw.Draw(image), image.size[0]
        self.unit = size * scale
        self.matrix = self.unit * np.array([[math.cos(angle), -math.sin(angle)],
                                            [math.sin(angle), math.cos(angle)]])
        self.offset = size * (0.5 + np.asarray(shift))

    def shape(self, points, colour):
        self.draw.polygon((points @ self.matrix.T + self.offset).ravel().tolist(), _rgb(colour))

    def line(self, points, colour, width=LINE):
        xy = (np.asarray(points, float) @ self.matrix.T + self.offset).ravel().tolist()
        self.draw.line(xy, _rgb(colour), width=max(1, round(width * self.unit)))


def _look(seed, face_id, is_male):
    """A person's fixed identity: colours, hair style, face shape, how they age."""
    rng = np.random.default_rng([seed, PERSON_STREAM, face_id])
    return dict(
        is_male=is_male, skin=np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) *
        rng.uniform(0.93, 1.05), hair=np.array(_pick(rng, HAIR_COLOURS)),
        eyes=EYE_COLOURS[rng.integers(len(EYE_COLOURS))], style=_pick(rng, HAIR_STYLES[is_male]),
        width=rng.normal(1, 0.05), aspect=rng.normal(0, 0.05), spacing=rng.normal(1, 0.06),
        grey_onset=rng.normal(0, GREY_ONSET_STD), grey_rate=rng.uniform(0.6, 1.0),
        baldness=is_male * rng.uniform() ** 0.7, wrinkle_rate=rng.uniform(0.7, 1.3),
        beard=is_male * (rng.random() < BEARD_SHARE) * rng.uniform(0.4, 0.9),
        acne=rng.uniform(), spots=rng.uniform(), detail_seed=int(rng.integers(2**32)))


def _features(look, age, yaw):
    """Sizes, places and colours of a person's features at a true age."""
    child = math.exp(-age / CHILD_AGE_SCALE)  # 1 at birth, 0.2 at 10, ~0 adult
    old = min(1.0, max(0.0, (age - WRINKLE_ONSET) / WRINKLE_SPAN)) * look["wrinkle_rate"]
    grey = look["grey_rate"] * _sigmoid((age - GREY_AGE - look["grey_onset"]) / GREY_WIDTH)
    bald = look["baldness"] * _sigmoid((age - BALD_AGE) / BALD_WIDTH)
    hair_amount = min(1.0, max(BABY_HAIR, age / FULL_HAIR_AGE))  # babies have little hair
    rx = HEAD_HALF_WIDTH * look["width"] * (1 + INFANT_HEAD_GAIN * child)
    ry = rx * (ADULT_HEAD_ASPECT + look["aspect"] - INFANT_ASPECT_DROP * child)
    grown = 1 - INFANT_FEATURE_SHRINK * child
    eye_y = HEAD_Y + ry * INFANT_EYE_DROP * child
    nose_y = eye_y + ry * NOSE_LENGTH * grown
    return dict(
        look, child=child, old=old, rx=rx, ry=ry, eye_y=eye_y, nose_y=nose_y,
        mouth_y=nose_y + ry * MOUTH_DROP * grown, mouth_w=rx * MOUTH_WIDTH * grown,
        iris=rx * IRIS * (1 + INFANT_EYE_GAIN * child), eye_x=rx * EYE_SPACING * look["spacing"],
        yaw=yaw / 45 * YAW_SHIFT * rx, jaw=JAW_TAPER[look["is_male"]] * (1 - child), bald=bald,
        skin=_mix(_mix(look["skin"], PINK, BABY_PINK * child), SALLOW, SALLOW_MAX * old),
        hair=_mix(_mix(look["hair"], BLOND, BABY_BLOND * child), GREY_HAIR, grey),
        hair_cover=hair_amount, hairline=HEAD_Y - ry * (
            HAIRLINE + RECEDE * bald + BABY_RECEDE * (1 - hair_amount)),
        beard=look["beard"] * min(1.0, max(0.0, (age - BEARD_AGE) / BEARD_RAMP)),
        acne=round(ACNE_MAX * look["acne"] * math.exp(-((age - ACNE_AGE) / ACNE_WIDTH) ** 2)),
        spots=round(SPOTS_MAX * look["spots"] * min(1.0, max(0.0, (age - SPOTS_AGE) / SPOTS_SPAN))))


def _head_outline(f):
    t = np.linspace(0, 2 * math.pi, ELLIPSE_POINTS, endpoint=False)
    x = np.cos(t) * (1 - f["jaw"] * np.clip(np.sin(t), 0, None) ** 2)  # narrower to the chin
    return np.stack([f["rx"] * x, HEAD_Y + f["ry"] * np.sin(t)], 1)


def _body_and_head(pen, f, clothes):
    rx, ry, hair = f["rx"], f["ry"], f["hair"] * f["hair_cover"] + f["skin"] * (1 - f["hair_cover"])
    if f["style"] == "long":
        pen.shape(_ellipse(0, HEAD_Y + 0.35 * ry, 1.28 * rx, 1.05 * ry), hair * 0.85)
    pen.shape(np.array([[-0.45, 0.5], [0.45, 0.5], [0.45, 1.6], [-0.45, 1.6]]) * [rx, ry] +
              [0, HEAD_Y], f["skin"] * 0.85)
    pen.shape(_ellipse(0, HEAD_Y + ry * 1.75, rx * (2.6 - f["child"]), ry * 0.9), clothes)
    for side in (-1, 1):
        pen.shape(_ellipse(side * rx * 0.97, f["eye_y"], rx * 0.14, ry * 0.2), f["skin"] * 0.9)
    pen.shape(_head_outline(f), f["skin"])
    for side in (-1, 1):  # rosy cheeks: children, and women's make-up
        blush = BLUSH * max(f["child"], 0.5 * (not f["is_male"]))
        pen.shape(_ellipse(side * rx * 0.5 + f["yaw"], f["nose_y"], rx * 0.17, rx * 0.12),
                  _mix(f["skin"], PINK, blush))
    _hair(pen, f, hair)


def _hair(pen, f, colour):
    """The cap of hair down to the hairline; a fringe, curls or a bald crown with sides."""
    rx, ry = f["rx"] * HAIR_PUFF, f["ry"] * HAIR_PUFF
    line = max(f["hairline"], HEAD_Y - 0.92 * ry)
    t0 = math.asin((line - HEAD_Y) / ry)
    arc = _ellipse(0, HEAD_Y, rx, ry, math.pi - t0, 2 * math.pi + t0)
    xs = np.linspace(arc[-1, 0], arc[0, 0], ARC_POINTS)
    dip = FRINGE_DIP * f["ry"] * (1 - 2 * f["bald"])  # a fringe, or receding temples
    pen.shape(np.concatenate([arc, np.stack([xs, line + dip * (1 - (xs / xs[0]) ** 2)], 1)]),
              colour)
    if f["style"] == "curly":
        for x, y in arc[::4]:
            pen.shape(_ellipse(x, y, 0.16 * f["rx"], 0.16 * f["rx"], n=12), colour * 0.92)
    if f["bald"] > 0.5:
        for side in (-1, 1):
            pen.shape(_ellipse(side * rx * 0.88, f["eye_y"] - 0.3 * ry, rx * 0.15, ry * 0.28),
                      colour)


def _beard(pen, f):
    if f["beard"] <= 0:
        return
    outline = _head_outline(f)
    lower = outline[outline[:, 1] >= f["eye_y"] + 0.25 * f["ry"]]
    top = f["nose_y"] + 0.04 * f["ry"]
    moustache = [[-0.3 * f["rx"] + f["yaw"], top], [0.3 * f["rx"] + f["yaw"], top]]
    pen.shape(np.concatenate([lower, moustache]), _mix(f["skin"], f["hair"] * 0.8, f["beard"]))


def _eyes(pen, f):
    openness = 1 - EYE_SAG * min(1.0, f["old"])
    brow = _mix(f["skin"], f["hair"] * 0.7, 0.9 - 0.6 * f["child"])
    for side in (-1, 1):
        cx, cy, r = side * f["eye_x"] + f["yaw"], f["eye_y"], f["iris"]
        w, h = 2 * r, 1.15 * r * openness
        pen.shape(_ellipse(cx, cy, w, h), EYE_WHITE)
        pen.shape(_ellipse(cx, cy, r, min(r, h)), f["eyes"])
        pen.shape(_ellipse(cx, cy, 0.45 * r, min(0.45 * r, h)), PUPIL)
        pen.line(_ellipse(cx, cy, w, h, math.pi, 2 * math.pi, ARC_POINTS), f["skin"] * 0.5)
        pen.line([[cx - 1.1 * w, cy - h - 0.9 * r], [cx, cy - h - 1.5 * r],
                  [cx + 1.1 * w, cy - h - 0.9 * r]], brow, LINE * (2.2 if f["is_male"] else 1.4))


def _nose_and_mouth(pen, f, smile):
    x, nose_w = f["yaw"] * 1.3, 0.12 * f["rx"] * (1 - 0.3 * f["child"])
    pen.line([[x * 0.8, f["eye_y"] + f["iris"]], [x, f["nose_y"]]], f["skin"] * 0.82)
    pen.line(_ellipse(x, f["nose_y"] - nose_w * 0.4, nose_w, nose_w * 0.6, 0.15 * math.pi,
                      0.85 * math.pi, ARC_POINTS), f["skin"] * 0.65)
    lips = _mix(f["skin"], LIPS, 0.6 - 0.3 * min(1.0, f["old"]))
    w, y = f["mouth_w"], f["mouth_y"]
    pen.shape(_ellipse(x, y, w, 0.22 * w), lips)
    xs = np.linspace(-w, w, ARC_POINTS)
    pen.line(np.stack([x + xs, y - smile * 0.15 * w * ((xs / w) ** 2 - 0.5)], 1), lips * 0.55)


def _wrinkles(pen, f, rng):
    """Forehead lines, crow's feet, folds and eye bags; more and darker with age."""
    old, rx, ry = f["old"], f["rx"], f["ry"]
    if old <= 0:
        return
    colour, width = _mix(f["skin"], WRINKLE, WRINKLE_CONTRAST * old), LINE * (0.6 + 0.6 * old)
    xs = np.linspace(-0.45 * rx, 0.45 * rx, ARC_POINTS)
    for k in range(round(FOREHEAD_LINES * old)):
        y = f["eye_y"] - 3.6 * f["iris"] - (k + 0.5) * 0.07 * ry
        wobble = rng.normal(0, 0.01 * rx, ARC_POINTS)
        if y > f["hairline"]:
            pen.line(np.stack([xs + f["yaw"], y + 0.05 * ry * (xs / xs[0]) ** 2 + wobble], 1),
                     colour, width)
    for side in (-1, 1):
        corner = np.array([side * (f["eye_x"] + 2.3 * f["iris"]) + f["yaw"], f["eye_y"]])
        for k in range(round(CROWS_FEET * old)):
            a = (k - 1) * 0.45 + rng.normal(0, 0.1)
            pen.line([corner, corner + 0.09 * rx * np.array([side * math.cos(a), math.sin(a)])],
                     colour, width)
        if old > 0.25:  # nasolabial folds and eye bags
            pen.line([[side * 0.22 * rx + f["yaw"], f["nose_y"] - 0.03 * ry],
                      [side * 0.4 * rx + f["yaw"], f["mouth_y"]],
                      [side * 0.42 * rx + f["yaw"], f["mouth_y"] + 0.06 * ry]], colour, width)
            pen.line(_ellipse(corner[0] - side * 2.3 * f["iris"], f["eye_y"] + 1.6 * f["iris"],
                              1.6 * f["iris"], f["iris"], 0.15 * math.pi, 0.85 * math.pi,
                              ARC_POINTS), colour, width)


def _marks(pen, f, rng):
    """Teenage acne and the brown spots of old skin, at fixed places per person."""
    for count, colour, radius in ((f["acne"], ACNE, 0.025), (f["spots"], SPOT, 0.045)):
        for _ in range(count):
            x, y = rng.uniform(-0.6, 0.6) * f["rx"], HEAD_Y + rng.uniform(-0.7, 0.6) * f["ry"]
            r = rng.uniform(0.5, 1) * radius * f["rx"]
            pen.shape(_ellipse(x + f["yaw"], y, r, r, n=10), _mix(f["skin"], colour, 0.5))


def _background(rng, size):
    base = rng.uniform(30, 225, 3)
    image = Image.new("RGB", (size, size), _rgb(base))
    draw = ImageDraw.Draw(image)
    for _ in range(BACKGROUND_SHAPES):
        box = np.sort(rng.uniform(-0.2, 1.2, (2, 2)) * size, axis=0).ravel().tolist()
        colour = _rgb(base + rng.normal(0, BACKGROUND_SPREAD, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


@functools.lru_cache(maxsize=2 * len(NOISE_STDS))
def _noise_tile(seed, size, level):
    """Sensor noise around 128, precomputed: per-pixel noise drawn per image is too slow."""
    rng = np.random.default_rng([seed, NOISE_STREAM, level])
    side = size + max(1, int(size * NOISE_MARGIN))
    noise = rng.normal(0, NOISE_STDS[level], (side, side, 3))
    return (128 + np.clip(noise, -NOISE_CLIP, NOISE_CLIP)).astype(np.uint8)


def _light_and_noise(image, photo_rng, row_rng, seed):
    """Contrast, brightness, colour cast, a light gradient, then noise."""
    size = image.size[0]
    gain = photo_rng.uniform(*CONTRAST_RANGE) * photo_rng.uniform(
        1 - COLOUR_CAST, 1 + COLOUR_CAST, 3)
    brightness = 128 + photo_rng.normal(0, BRIGHTNESS_STD)
    levels = np.arange(256) - 128
    image = image.point(np.clip(np.outer(gain, levels) + brightness, 0, 255).astype(int)
                        .ravel().tolist())
    direction = photo_rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size) * photo_rng.uniform(0, LIGHT_GRADIENT)
    # uint8 arithmetic wraps, but noise (within NOISE_CLIP of 128) plus light stays in 0..255.
    light = np.add.outer(np.sin(direction) * ramp, np.cos(direction) * ramp).astype(np.int16)
    tile = _noise_tile(seed, size, int(row_rng.integers(len(NOISE_STDS))))
    y, x = row_rng.integers(0, tile.shape[0] - size + 1, 2)
    field = tile[y:y + size, x:x + size] + light.astype(np.uint8)[:, :, None]
    return ImageChops.add(image, Image.fromarray(field), 1.0, -128)


def draw_image(row, seed, image_size, coarse=False):
    """The face of one row as a PIL image; `coarse` gives the faces/ layout's looser crop."""
    photo_rng = np.random.default_rng([seed, PHOTO_STREAM, row.photo_index])
    row_rng = np.random.default_rng([seed, ROW_STREAM, row.index])
    look = _look(seed, row.face_id, row.is_male)
    f = _features(look, row.true_age, row.fiducial_yaw_angle)
    blur = int(row_rng.choice(LOW_RES_FACTORS)) if row_rng.random() < LOW_RES_SHARE else 1
    angle = math.radians(row_rng.normal(0, POSE_DEGREES))
    scale, shift = math.exp(row_rng.normal(0, POSE_LOG_SCALE)), row_rng.normal(0, POSE_SHIFT, 2)
    coarse_angle = math.radians(row_rng.normal(0, COARSE_DEGREES))
    clothes, smile = row_rng.uniform(0, 255, 3), row_rng.normal(0, SMILE_STD)
    if coarse:
        angle, scale = angle + coarse_angle, scale * COARSE_SCALE
    image = _background(photo_rng, image_size // blur)
    pen, details = _Pen(image, angle, scale, shift), np.random.default_rng(look["detail_seed"])
    _body_and_head(pen, f, clothes)
    _beard(pen, f)
    _wrinkles(pen, f, details)
    _eyes(pen, f)
    _nose_and_mouth(pen, f, smile)
    _marks(pen, f, details)
    if blur > 1:
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return _light_and_noise(image, photo_rng, row_rng, seed)


def _write_images(row, seed, image_size, out_dir, faces_layout):
    """Draws and saves one row's image(s); returns how many files were written."""
    layouts = [(ALIGNED_PATH, False)] + [(FACES_PATH, True)] * faces_layout
    for pattern, coarse in layouts:
        path = pathlib.Path(out_dir) / pattern.format(**row._asdict())
        draw_image(row, seed, image_size, coarse).save(path, "JPEG", quality=JPEG_QUALITY)
    return len(layouts)


def _results(work, rows, workers):
    """work(row) for every row, in any order, in `workers` processes (1: this one)."""
    if workers == 1:
        yield from map(work, rows)
        return
    # spawn: a clean child even when the caller has imported TensorFlow or holds threads.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        chunk = max(1, min(64, len(rows) // (workers * 8)))
        yield from pool.imap_unordered(work, rows, chunksize=chunk)


def _progress(done, total, started):
    elapsed = time.perf_counter() - started
    rate = done / max(elapsed, 1e-9)
    print(f"synthetic: {done}/{total} images, {rate:.0f} images/s, "
          f"ETA {(total - done) / max(rate, 1e-9):.0f} s", file=sys.stderr, flush=True)


def generate(out_dir, subjects=DEFAULT_SUBJECTS, seed=0, image_size=DEFAULT_IMAGE_SIZE,
             faces_layout=False, workers=None, images=True):
    """Writes a synthetic Adience tree to `out_dir`.

    Args:
      out_dir: where the fold files and image folders go (created if missing).
      subjects: albums (user ids), at least one per fold.
      seed: the whole tree is a function of it, whatever `workers` is.
      image_size: side of the square JPEGs.
      faces_layout: also write the faces/ layout.
      workers: processes drawing images; None means one per available core.
      images: False writes only the fold files.

    Returns:
      A summary dict: rows, albums, people, photos, images, seconds, images_per_sec, out_dir.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    started = time.perf_counter()
    rows = plan(subjects, seed)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_fold_files(rows, out)
    written = 0
    if images:
        for user_id in sorted({r.user_id for r in rows}):
            for pattern in [ALIGNED_PATH] + [FACES_PATH] * faces_layout:
                (out / pattern.format(user_id=user_id, face_id=0, original_image="")).parent \
                    .mkdir(parents=True, exist_ok=True)
        work = functools.partial(_write_images, seed=seed, image_size=image_size, out_dir=out,
                                 faces_layout=faces_layout)
        total, last_report = len(rows) * (1 + faces_layout), time.perf_counter()
        for count in _results(work, rows, workers or len(os.sched_getaffinity(0))):
            written += count
            if time.perf_counter() - last_report >= PROGRESS_SECONDS:
                _progress(written, total, started)
                last_report = time.perf_counter()
    seconds = time.perf_counter() - started
    return {"rows": len(rows), "albums": len({r.user_id for r in rows}),
            "people": len({r.face_id for r in rows}),
            "photos": len({r.photo_index for r in rows}), "images": written,
            "seconds": round(seconds, 2), "images_per_sec": round(written / seconds, 1),
            "out_dir": str(out)}


def _define_flags(flags):
    # Defined only when run as a program: other entry points import generate() and may define
    # flags of the same names (--seed, --workers).
    flags.DEFINE_string("out", None, "Directory of the synthetic Adience tree.", required=True)
    flags.DEFINE_integer("subjects", DEFAULT_SUBJECTS, "Albums (user ids), at least 5. About "
                         "36 rows each: the default 100 gives about 3,700 rows and images.",
                         lower_bound=FOLDS)
    flags.DEFINE_integer("seed", 0, "Seed of everything written.")
    flags.DEFINE_integer("image_size", DEFAULT_IMAGE_SIZE, "Side of the square JPEGs.",
                         lower_bound=MIN_IMAGE_SIZE)
    flags.DEFINE_bool("faces_layout", False, "Also write faces/.../coarse_tilt_aligned_face.*")
    flags.DEFINE_integer("workers", None, "Drawing processes (default: one per core).",
                         lower_bound=1)
    flags.DEFINE_bool("images", True, "Write images; --noimages writes only the fold files.")


def main(argv):
    from absl import flags
    del argv
    flag = flags.FLAGS
    summary = generate(flag.out, subjects=flag.subjects, seed=flag.seed,
                       image_size=flag.image_size, faces_layout=flag.faces_layout,
                       workers=flag.workers, images=flag.images)
    print(f"synthetic: {summary['rows']} rows, {summary['albums']} albums, "
          f"{summary['people']} people, {summary['photos']} photos; {summary['images']} "
          f"images written in {summary['seconds']} s ({summary['images_per_sec']} images/s) "
          f"to {summary['out_dir']}", flush=True)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    from absl import app, flags
    _define_flags(flags)
    app.run(main)
