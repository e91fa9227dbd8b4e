"""Faces in a whole photo: found, and each aligned as Adience's aligned/ faces are.

    detector = faces.Detector()
    for face in detector.find(photo):  # encoded bytes, or uint8 pixels [H, W, 3] RGB
        face.box, face.landmarks, face.confidence, face.crop

The age model was trained on Adience's aligned faces: one face, its eyes level, in a square with
much of the head and background around it. A whole photo is not that, so each face is found
(MTCNN: its weights ship inside the `mtcnn` wheel, nothing is downloaded; why not yuface is in
BUILD_NOTES.md), then cut out the way the aligned images were: the photo rotated about the face
box's centre so that the eyes are level, and a square of ALIGNED_MARGIN times the box's height
centred on it. Boxes and landmarks are in the photo's own pixels, as displayed (EXIF orientation
applied), `left_eye` being the eye on the photo's left.
"""

import dataclasses
import io
import math
import warnings

import numpy as np
from mtcnn import MTCNN
from PIL import Image, ImageOps

# MTCNN's five landmarks, in the order of its output columns (x's, then y's).
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# On the photos inside scikit-image's wheel (also rotated up to 45 degrees, scaled and tiled),
# every false detection scored 0.89 or less and every face 0.977 or more. MTCNN's default is 0.8.
MIN_CONFIDENCE = 0.95
# Faces are searched in the photo shrunk to at most this side: MTCNN's image pyramid on a 12 MP
# photo takes many seconds. Faces under MTCNN's 20 pixels at this scale (about 80 pixels in a
# 4000-pixel photo) are missed; such small faces hold little of an age anyway.
DETECTION_SIDE = 1024
# The aligned square's side over the face box's height. MTCNN's box on the aligned images that
# input.synthetic draws as Adience's (its head sizes, eye height and pose jitter) is 0.45 of the
# image's side high (median of 189 faces found in 406 images; 10th-90th percentile 0.40-0.52),
# and centred within 0.5% of the image's centre: the square is 1 / 0.45 = 2.2 box heights,
# centred on the box.
ALIGNED_MARGIN = 2.2
ALIGNED_SIDE = 816  # Adience's aligned images are 816 x 816; larger squares are shrunk to it
# The photos people take are under 50 megapixels; a header that claims more is refused before
# its pixels are decoded (a decompression bomb: a few KB of PNG that unpack to gigabytes).
MAX_PHOTO_PIXELS = 100_000_000


class PhotoError(ValueError):
    """Bytes that are not a photo this module can read; the message says why."""


@dataclasses.dataclass(frozen=True)
class Face:
    """One face found in a photo, and its aligned square (uint8 [side, side, 3] RGB)."""

    box: tuple  # x, y, width, height in the photo's pixels
    landmarks: dict  # LANDMARKS name -> (x, y) in the photo's pixels
    confidence: float
    crop: np.ndarray = dataclasses.field(repr=False, compare=False)

    def description(self):
        """The face's place as plain JSON values, in pixels rounded to 0.1."""
        return {"box": [round(v, 1) for v in self.box],
                "landmarks": {name: [round(v, 1) for v in xy]
                              for name, xy in self.landmarks.items()},
                "confidence": round(self.confidence, 4)}


def open_photo(encoded):
    """The PIL image of encoded bytes, only its header read: PhotoError for what is not an image
    or claims more than MAX_PHOTO_PIXELS, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit
            image = Image.open(io.BytesIO(encoded))  # reads the header only
    except Image.DecompressionBombError:  # PIL's own limit, twice its warning's
        raise PhotoError(f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, over the limit of "
                         f"{MAX_PHOTO_PIXELS:,} pixels") from None
    except OSError:
        raise PhotoError("not a readable image (unknown image format)") from None
    if image.width * image.height > MAX_PHOTO_PIXELS:
        raise PhotoError(f"{image.width} x {image.height} pixels is over the limit of "
                         f"{MAX_PHOTO_PIXELS:,} pixels")
    return image


def decode_photo(encoded):
    """uint8 pixels [H, W, 3] RGB of encoded image bytes, EXIF orientation applied (phones store
    portraits sideways and say so there). PhotoError for what is not an image or is too large."""
    image = open_photo(encoded)
    try:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged past the header
        raise PhotoError(f"not a readable image ({error})") from None


class Detector:
    """MTCNN, loaded once (about a second), and the alignment of what it finds."""

    def __init__(self, min_confidence=MIN_CONFIDENCE):
        self._mtcnn = MTCNN()
        self._min_confidence = min_confidence

    def find(self, photo, side=None):
        """The faces of a photo (encoded bytes, or uint8 [H, W, 3] RGB), left to right.

        Args:
          photo: encoded bytes (decode_photo()'s PhotoError if unreadable) or pixels.
          side: the aligned squares' side in pixels; None keeps the photo's resolution, at most
            ALIGNED_SIDE.
        """
        pixels = decode_photo(photo) if isinstance(photo, bytes) else _rgb(photo)
        found = [Face(box, landmarks, confidence, align(pixels, box, landmarks, side))
                 for box, landmarks, confidence in self._places(pixels)]
        return sorted(found, key=lambda face: face.box[0])

    def _places(self, pixels):
        """(box, landmarks, confidence) of each face, in the photo's pixels."""
        height, width = pixels.shape[:2]
        shrink = min(1.0, DETECTION_SIDE / max(height, width))
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        searched = pixels if shrink == 1 else np.asarray(
            Image.fromarray(pixels).resize(size, Image.BILINEAR))
        scale_x, scale_y = width / size[0], height / size[1]  # back to the photo's pixels
        rows = self._mtcnn.detect_faces(searched, box_format="xyxy", output_type="numpy",
                                        threshold_onet=self._min_confidence)
        for row in rows.reshape(-1, rows.shape[-1]) if rows.size else ():
            x1, x2 = (row[[1, 3]] * scale_x).tolist()
            y1, y2 = (row[[2, 4]] * scale_y).tolist()
            xs, ys = row[6:11] * scale_x, row[11:16] * scale_y
            yield ((x1, y1, x2 - x1, y2 - y1),
                   {name: (float(x), float(y)) for name, x, y in zip(LANDMARKS, xs, ys)},
                   float(row[5]))


def _rgb(pixels):
    """uint8 [H, W, 3] of grey [H, W] or [H, W, 1], RGB or RGBA pixels."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.ascontiguousarray(np.broadcast_to(pixels, pixels.shape[:2] + (3,))
                                if pixels.shape[-1] == 1 else pixels[..., :3])


def align(pixels, box, landmarks, side=None):
    """The aligned square of one face: uint8 [side, side, 3], eyes level, ALIGNED_MARGIN box
    heights wide, centred on the box; what lies outside the photo is black.

    Args:
      pixels: the photo, uint8 [H, W, 3] RGB.
      box: (x, y, width, height) of the face in the photo's pixels.
      landmarks: at least left_eye and right_eye, (x, y) in the photo's pixels.
      side: the square's side; None keeps the photo's resolution, at most ALIGNED_SIDE.
    """
    (left_x, left_y), (right_x, right_y) = landmarks["left_eye"], landmarks["right_eye"]
    tilt = math.atan2(right_y - left_y, right_x - left_x)
    centre_x, centre_y = box[0] + box[2] / 2, box[1] + box[3] / 2
    extent = ALIGNED_MARGIN * box[3]  # the square's side in the photo's pixels
    image = Image.fromarray(pixels)
    # The square is cut at the photo's resolution and shrunk after (no aliasing); around a face
    # larger than ALIGNED_SIDE, the photo is first shrunk by a whole factor (a box filter) to
    # keep the cut under twice that.
    factor = max(1, int(extent // (2 * ALIGNED_SIDE)))
    if factor > 1:
        image = image.reduce(factor)
        centre_x, centre_y, extent = centre_x / factor, centre_y / factor, extent / factor
    cut = max(1, round(extent))
    step = extent / cut
    cos, sin = math.cos(tilt) * step, math.sin(tilt) * step
    # PIL's affine maps each point (u, v) of the output to the photo's (x, y), both in
    # continuous coordinates (a pixel's centre at i + 0.5): the output's rows run along the
    # eyes' line, so the eyes come out level.
    half = cut / 2
    matrix = (cos, -sin, centre_x - cos * half + sin * half,
              sin, cos, centre_y - sin * half - cos * half)
    square = image.transform((cut, cut), Image.AFFINE, matrix, resample=Image.BILINEAR)
    wanted = side or min(cut, ALIGNED_SIDE)
    if wanted != cut:
        square = square.resize((wanted, wanted), Image.BILINEAR)  # antialiased when shrinking
    return np.asarray(square)


def encode(crop):
    """PNG bytes of an aligned square (lossless) for the SavedModel's bytes signature."""
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
