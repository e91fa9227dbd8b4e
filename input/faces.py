"""Drawn faces for the synthetic Adience tree: how a person looks at an age, in one photo.

A face's look depends on its true age through several cues (head proportions, wrinkles, grey
hair, baldness, beard, skin marks), on an identity fixed per person, and on per-photo nuisance
(pose, light, background, blur, noise), so that a CNN learns the age group well above chance but
not perfectly. Every random draw derives from the seed and what is drawn (a person, a photo, a
row), never from the order of work. PIL and numpy only.
"""

import functools
import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# One random stream per kind of thing drawn: a person's look must not depend on which photos
# exist, nor an image on which worker draws it. (Stream 0 plans the fold files: input.synthetic.)
PHOTO_STREAM, ROW_STREAM, PERSON_STREAM, NOISE_STREAM = 1, 2, 3, 4


def pick(rng, table):
    """A key of a {key: weight} table, drawn in proportion to the weights."""
    weights = np.array(list(table.values()), dtype=float)
    return list(table)[rng.choice(len(table), p=weights / weights.sum())]


# A person's identity, drawn from (seed, face_id): the same on all their photos.
SKIN_TONES = ((255, 224, 196), (241, 194, 158), (224, 172, 130), (198, 134, 92), (141, 85, 54),
              (94, 58, 38))
HAIR_COLOURS = {(25, 20, 18): 3, (60, 40, 28): 3, (100, 68, 42): 2, (150, 108, 66): 1,
                (205, 172, 112): 1, (150, 70, 35): 0.5}
EYE_COLOURS = ((70, 45, 25), (40, 28, 20), (80, 120, 170), (90, 130, 80), (115, 120, 125))
HAIR_STYLES = {True: {"short": 0.75, "curly": 0.15, "long": 0.1},  # by is_male
               False: {"long": 0.65, "short": 0.2, "curly": 0.15}}
BEARD_SHARE = 0.4  # of men, who grow it once adult
GREY_HAIR, BLOND, PINK, SALLOW = (215, 215, 212), (215, 180, 120), (250, 190, 180), (175, 160, 130)
EYE_WHITE, PUPIL, WRINKLE, LIPS = (240, 238, 232), (15, 12, 12), (70, 40, 30), (185, 75, 80)
SPOT, ACNE = (125, 85, 55), (205, 70, 60)

# Age cues, each a smooth function of the true age so that neighbouring groups look alike.
# Sizes are image fractions; the drawing's own proportions stay inline in the drawing code.
CHILD_YEARS = 6.0  # infant proportions fade as exp(-age / CHILD_YEARS)
HEAD_HALF_WIDTH, HEAD_Y, ADULT_HEAD_ASPECT = 0.22, -0.05, 1.3
INFANT_HEAD_GAIN, INFANT_ASPECT_DROP = 0.15, 0.28  # infants: bigger, rounder heads,
INFANT_EYE_DROP, INFANT_EYE_GAIN = 0.3, 0.6  # eyes low (a big forehead) and large,
INFANT_FEATURE_SHRINK = 0.4  # nose and mouth close together (a small lower face)
NOSE_LENGTH, MOUTH_DROP, MOUTH_WIDTH, IRIS, EYE_SPACING = 0.36, 0.2, 0.34, 0.085, 0.4
JAW_TAPER = {True: 0.14, False: 0.22}  # adult chins narrow, men's less
BABY_BLOND, BABY_PINK, FULL_HAIR_AGE, BABY_HAIR = 0.35, 0.15, 2.5, 0.15
WRINKLE_ONSET, WRINKLE_SPAN, WRINKLE_CONTRAST, SALLOW_MAX = 27.0, 45.0, 0.6, 0.15
GREY_AGE, GREY_WIDTH, GREY_ONSET_STD = 50.0, 7.0, 6.0
BALD_AGE, BALD_WIDTH, BEARD_AGE, BEARD_RAMP = 42.0, 8.0, 16.0, 8.0
ACNE_AGE, ACNE_WIDTH, ACNE_MAX, SPOTS_AGE, SPOTS_SPAN, SPOTS_MAX = 16.5, 3.0, 8, 50.0, 30.0, 10
HAIRLINE, RECEDE, BABY_RECEDE, FRINGE_DIP, HAIR_PUFF = 0.5, 0.45, 0.35, 0.12, 1.07
FOREHEAD_LINES, CROWS_FEET, EYE_SAG, BLUSH = 4, 3, 0.3, 0.3
LINE, YAW_SHIFT = 0.005, 0.12  # stroke width; feature shift at 45 degrees, in half-widths
ELLIPSE_POINTS, ARC_POINTS = 40, 9

# Per-photo nuisance.
POSE_DEGREES, POSE_LOG_SCALE, POSE_SHIFT, SMILE_STD = 8.0, 0.08, 0.04, 0.5
COARSE_SCALE, COARSE_DEGREES = 0.8, 8.0  # the faces/ layout: looser crop, rougher alignment
BACKGROUND_SHAPES, BACKGROUND_SPREAD, CLOTHES_SPREAD = 6, 40.0, 50.0
CONTRAST_RANGE, BRIGHTNESS_STD, COLOUR_CAST, LIGHT_GRADIENT = (0.65, 1.25), 18.0, 0.1, 22
# Blurry photos are drawn small and scaled up, by more than the pipeline's 816 -> 256 resize
# (or the blur would vanish there); the noise's grain (1/300 of the side) survives it too.
LOW_RES_SHARE, LOW_RES_FACTORS = 0.2, (4, 6)
NOISE_STDS, NOISE_CLIP, NOISE_MARGIN, NOISE_GRAIN = (2.0, 4.0, 6.0), 16, 0.25, 1 / 300
# Shapes are drawn this far from black and white: light and noise are then added with uint8
# wrap-around (ten times faster than a clipping add) without wrapping, and the photo's tone
# curve stretches the range back.
HEADROOM = NOISE_CLIP + math.ceil(math.sqrt(2) * LIGHT_GRADIENT)


def _ramp(x):
    return min(1.0, max(0.0, x))


def _mix(a, b, t):
    return np.asarray(a, float) + (np.asarray(b, float) - a) * _ramp(t)


def _rgb(colour):
    """A colour squeezed into HEADROOM .. 255 - HEADROOM."""
    return tuple(int(HEADROOM + (255 - 2 * HEADROOM) / 255 * v) for v in np.clip(colour, 0, 255))


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

    def _xy(self, points):
        return (np.asarray(points, float) @ self.matrix.T + self.offset).ravel().tolist()

    def shape(self, points, colour):
        self.draw.polygon(self._xy(points), _rgb(colour))

    def line(self, points, colour, width=LINE):
        self.draw.line(self._xy(points), _rgb(colour), width=max(1, round(width * self.unit)))


def _look(seed, face_id, is_male):
    """A person's fixed identity: colours, hair style, face shape, how they age."""
    rng = np.random.default_rng([seed, PERSON_STREAM, face_id])
    return dict(
        is_male=is_male, skin=np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) *
        rng.uniform(0.93, 1.05), hair=np.array(pick(rng, HAIR_COLOURS)),
        eyes=EYE_COLOURS[rng.integers(len(EYE_COLOURS))], style=pick(rng, HAIR_STYLES[is_male]),
        width=rng.normal(1, 0.05), aspect=rng.normal(0, 0.05), spacing=rng.normal(1, 0.06),
        grey_onset=rng.normal(0, GREY_ONSET_STD), grey_rate=rng.uniform(0.6, 1.0),
        baldness=is_male * rng.uniform() ** 0.7, wrinkle_rate=rng.uniform(0.7, 1.3),
        beard=is_male * (rng.random() < BEARD_SHARE) * rng.uniform(0.4, 0.9),
        acne=rng.uniform(), spots=rng.uniform(), detail_seed=int(rng.integers(2**32)))


def _features(look, age, yaw):
    """Sizes, places and colours of a person's features at a true age."""
    child = math.exp(-age / CHILD_YEARS)  # 1 at birth, 0.2 at 10, ~0 for adults
    old = _ramp((age - WRINKLE_ONSET) / WRINKLE_SPAN) * look["wrinkle_rate"]
    grey = look["grey_rate"] / (1 + math.exp((GREY_AGE + look["grey_onset"] - age) / GREY_WIDTH))
    bald = look["baldness"] / (1 + math.exp((BALD_AGE - age) / BALD_WIDTH))
    hair_cover = max(BABY_HAIR, _ramp(age / FULL_HAIR_AGE))  # babies have little hair
    rx = HEAD_HALF_WIDTH * look["width"] * (1 + INFANT_HEAD_GAIN * child)
    ry = rx * (ADULT_HEAD_ASPECT + look["aspect"] - INFANT_ASPECT_DROP * child)
    grown = 1 - INFANT_FEATURE_SHRINK * child
    eye_y = HEAD_Y + ry * INFANT_EYE_DROP * child
    nose_y = eye_y + ry * NOSE_LENGTH * grown
    skin = _mix(_mix(look["skin"], PINK, BABY_PINK * child), SALLOW, SALLOW_MAX * old)
    hair = _mix(_mix(look["hair"], BLOND, BABY_BLOND * child), GREY_HAIR, grey)
    return dict(
        look, child=child, old=old, bald=bald, rx=rx, ry=ry, eye_y=eye_y, nose_y=nose_y,
        mouth_y=nose_y + ry * MOUTH_DROP * grown, mouth_w=rx * MOUTH_WIDTH * grown,
        iris=rx * IRIS * (1 + INFANT_EYE_GAIN * child), eye_x=rx * EYE_SPACING * look["spacing"],
        yaw=yaw / 45 * YAW_SHIFT * rx, jaw=JAW_TAPER[look["is_male"]] * (1 - child), skin=skin,
        hair=hair, scalp=_mix(skin, hair, hair_cover),
        hairline=HEAD_Y - ry * (HAIRLINE + RECEDE * bald + BABY_RECEDE * (1 - hair_cover)),
        beard=look["beard"] * _ramp((age - BEARD_AGE) / BEARD_RAMP),
        acne=round(ACNE_MAX * look["acne"] * math.exp(-((age - ACNE_AGE) / ACNE_WIDTH) ** 2)),
        spots=round(SPOTS_MAX * look["spots"] * _ramp((age - SPOTS_AGE) / SPOTS_SPAN)))


def _head_outline(f):
    t = np.linspace(0, 2 * math.pi, ELLIPSE_POINTS, endpoint=False)
    x = np.cos(t) * (1 - f["jaw"] * np.clip(np.sin(t), 0, None) ** 2)  # narrower to the chin
    return np.stack([f["rx"] * x, HEAD_Y + f["ry"] * np.sin(t)], 1)


def _body_and_head(pen, f, clothes):
    rx, ry = f["rx"], f["ry"]
    if f["style"] == "long":
        pen.shape(_ellipse(0, HEAD_Y + 0.35 * ry, 1.28 * rx, 1.05 * ry), f["scalp"] * 0.85)
    neck = np.array([[-0.45, 0.5], [0.45, 0.5], [0.45, 1.6], [-0.45, 1.6]]) * [rx, ry]
    pen.shape(neck + [0, HEAD_Y], f["skin"] * 0.85)
    pen.shape(_ellipse(0, HEAD_Y + ry * 1.75, rx * (2.6 - f["child"]), ry * 0.9), clothes)
    for side in (-1, 1):
        pen.shape(_ellipse(side * rx * 0.97, f["eye_y"], rx * 0.14, ry * 0.2), f["skin"] * 0.9)
    pen.shape(_head_outline(f), f["skin"])
    blush = BLUSH * max(f["child"], 0.5 * (not f["is_male"]))  # children; women's make-up
    for side in (-1, 1):
        pen.shape(_ellipse(side * rx * 0.5 + f["yaw"], f["nose_y"], rx * 0.17, rx * 0.12),
                  _mix(f["skin"], PINK, blush))


def _hair(pen, f):
    """The cap of hair down to the hairline: a fringe, curls, or a bald crown with sides."""
    rx, ry, colour = f["rx"] * HAIR_PUFF, f["ry"] * HAIR_PUFF, f["scalp"]
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
            pen.shape(_ellipse(side * rx * 0.9, f["eye_y"] - 0.15 * ry, rx * 0.12, ry * 0.22),
                      colour)


def _beard(pen, f):
    if f["beard"] > 0:
        outline = _head_outline(f)
        top = f["nose_y"] + 0.04 * f["ry"]
        moustache = [[-0.3 * f["rx"] + f["yaw"], top], [0.3 * f["rx"] + f["yaw"], top]]
        pen.shape(np.concatenate([outline[outline[:, 1] >= f["eye_y"] + 0.25 * f["ry"]],
                                  moustache]), _mix(f["skin"], f["hair"] * 0.8, f["beard"]))


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
    """Forehead lines, crow's feet, folds and eye bags: more and darker with age."""
    old, rx, ry, iris, yaw = f["old"], f["rx"], f["ry"], f["iris"], f["yaw"]
    if old <= 0:
        return
    colour, width = _mix(f["skin"], WRINKLE, WRINKLE_CONTRAST * old), LINE * (0.6 + 0.6 * old)
    xs = np.linspace(-0.45 * rx, 0.45 * rx, ARC_POINTS)
    for k in range(round(FOREHEAD_LINES * old)):
        y = f["eye_y"] - 3.6 * iris - (k + 0.5) * 0.07 * ry
        wobble = rng.normal(0, 0.01 * rx, ARC_POINTS)
        if y > f["hairline"]:
            pen.line(np.stack([xs + yaw, y + 0.05 * ry * (xs / xs[0]) ** 2 + wobble], 1),
                     colour, width)
    for side in (-1, 1):
        corner = np.array([side * (f["eye_x"] + 2.3 * iris) + yaw, f["eye_y"]])
        for k in range(round(CROWS_FEET * old)):
            a = (k - 1) * 0.45 + rng.normal(0, 0.1)
            pen.line([corner, corner + 0.09 * rx * np.array([side * math.cos(a), math.sin(a)])],
                     colour, width)
        if old > 0.25:  # nasolabial folds and eye bags
            pen.line([[side * 0.22 * rx + yaw, f["nose_y"] - 0.03 * ry],
                      [side * 0.4 * rx + yaw, f["mouth_y"]],
                      [side * 0.42 * rx + yaw, f["mouth_y"] + 0.06 * ry]], colour, width)
            pen.line(_ellipse(corner[0] - side * 2.3 * iris, f["eye_y"] + 1.6 * iris, 1.6 * iris,
                              iris, 0.15 * math.pi, 0.85 * math.pi, ARC_POINTS), colour, width)


def _marks(pen, f, rng):
    """Teenage acne and the brown spots of old skin, at the same places on every photo."""
    for count, colour, radius in ((f["acne"], ACNE, 0.025), (f["spots"], SPOT, 0.045)):
        for _ in range(count):
            x, y = rng.uniform(-0.6, 0.6) * f["rx"], HEAD_Y + rng.uniform(-0.7, 0.6) * f["ry"]
            r = rng.uniform(0.5, 1) * radius * f["rx"]
            pen.shape(_ellipse(x + f["yaw"], y, r, r, n=10), _mix(f["skin"], colour, 0.5))


def _background(rng, size):
    base = rng.uniform(30, 225) + rng.normal(0, BACKGROUND_SPREAD, 3)  # muted, as in photos
    image = Image.new("RGB", (size, size), _rgb(base))
    draw = ImageDraw.Draw(image)
    for _ in range(BACKGROUND_SHAPES):
        box = np.sort(rng.uniform(-0.2, 1.2, (2, 2)) * size, axis=0).ravel().tolist()
        colour = _rgb(base + rng.normal(0, BACKGROUND_SPREAD, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


@functools.lru_cache(maxsize=2 * len(NOISE_STDS))
def _noise_tile(seed, size, level):
    """Grey noise as uint8 offsets (-3 is 253), precomputed: drawn per image, it is too slow."""
    rng = np.random.default_rng([seed, NOISE_STREAM, level])
    side, grain = size + max(1, int(size * NOISE_MARGIN)), max(1, round(size * NOISE_GRAIN))
    noise = np.clip(rng.normal(0, NOISE_STDS[level], (side // grain + 1,) * 2), -NOISE_CLIP,
                    NOISE_CLIP)
    tile = Image.fromarray((noise + 128).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    return np.asarray(tile) - np.uint8(128)


def _light_noise_and_tone(image, photo_rng, row_rng, seed):
    """A light gradient, sensor noise, then the photo's contrast, brightness and colour cast."""
    size = image.size[0]
    ramp = np.linspace(-1, 1, size) * photo_rng.uniform(0, LIGHT_GRADIENT)
    direction = photo_rng.uniform(0, 2 * math.pi)
    light = np.add.outer(np.rint(math.sin(direction) * ramp).astype(np.int16),
                         np.rint(math.cos(direction) * ramp).astype(np.int16)).astype(np.uint8)
    tile = _noise_tile(seed, size, int(row_rng.integers(len(NOISE_STDS))))
    y, x = row_rng.integers(0, tile.shape[0] - size + 1, 2)
    field = Image.fromarray(tile[y:y + size, x:x + size] + light)
    image = ImageChops.add_modulo(image, Image.merge("RGB", [field] * 3))
    gain = photo_rng.uniform(*CONTRAST_RANGE) * photo_rng.uniform(1 - COLOUR_CAST,
                                                                  1 + COLOUR_CAST, 3)
    stretched = (np.arange(256) - HEADROOM) * 255 / (255 - 2 * HEADROOM) - 128
    curve = np.outer(gain, stretched) + 128 + photo_rng.normal(0, BRIGHTNESS_STD)
    return image.point(np.clip(curve, 0, 255).astype(int).ravel().tolist())


def draw_image(row, seed, image_size, coarse=False):
    """The face of one row as a PIL image; `coarse` gives the faces/ layout's looser crop."""
    photo_rng = np.random.default_rng([seed, PHOTO_STREAM, row.photo])
    row_rng = np.random.default_rng([seed, ROW_STREAM, row.index])
    look = _look(seed, row.face_id, row.is_male)
    f = _features(look, row.true_age, row.fiducial_yaw_angle)
    blur = int(row_rng.choice(LOW_RES_FACTORS)) if row_rng.random() < LOW_RES_SHARE else 1
    angle = math.radians(row_rng.normal(0, POSE_DEGREES))
    scale, shift = math.exp(row_rng.normal(0, POSE_LOG_SCALE)), row_rng.normal(0, POSE_SHIFT, 2)
    coarse_angle = math.radians(row_rng.normal(0, COARSE_DEGREES))  # drawn for both layouts,
    if coarse:  # so that what follows is the same in both
        angle, scale = angle + coarse_angle, scale * COARSE_SCALE
    clothes = row_rng.uniform(20, 235) + row_rng.normal(0, CLOTHES_SPREAD, 3)
    image = _background(photo_rng, image_size // blur)
    pen, details = _Pen(image, angle, scale, shift), np.random.default_rng(look["detail_seed"])
    _body_and_head(pen, f, clothes)
    _hair(pen, f)
    _beard(pen, f)
    _wrinkles(pen, f, details)
    _eyes(pen, f)
    _nose_and_mouth(pen, f, smile=row_rng.normal(0, SMILE_STD))
    _marks(pen, f, details)
    if blur > 1:
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return _light_noise_and_tone(image, photo_rng, row_rng, seed)
