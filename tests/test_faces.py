"""trainer.predict --detect_faces and trainer/serving/faces.py, on real photographs that ship
inside scikit-image's wheel (astronaut: one face; camera: one face, grey; coffee: none): faces
found in whole photos, placed in the photo's own pixels, aligned as Adience's aligned faces
are, and predicted one by one; photos that hold no face or cannot be read are error lines."""

import importlib.resources
import io
import math
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from conftest import json_lines, run
from trainer.serving import faces
from trainer.serving import predict as serving

PHOTOS = importlib.resources.files("skimage") / "data"
ASTRONAUT, CAMERA, COFFEE = (PHOTOS / name for name in ("astronaut.png", "camera.png",
                                                        "coffee.png"))
# The astronaut's face as two detectors box it (MTCNN 182,64 83x107; YuNet 178,63 89x112).
ASTRONAUT_FACE = (180, 63, 86, 110)


@pytest.fixture(scope="module")
def detector():
    return faces.Detector()


@pytest.fixture(scope="module")
def astronaut():
    return np.asarray(Image.open(ASTRONAUT))


@pytest.fixture(scope="module")
def exported(tiny_export):
    return tiny_export


def overlap(a, b):
    """Intersection over union of two (x, y, width, height) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def eye_tilt(face):
    """Degrees from the photo's left eye to its right eye; 0 when they are level."""
    (left_x, left_y), (right_x, right_y) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    return math.degrees(math.atan2(right_y - left_y, right_x - left_x))


def test_one_face_in_the_astronaut_photo_and_none_in_the_coffee_photo(detector):
    found = detector.find(ASTRONAUT.read_bytes())
    assert len(found) == 1
    face = found[0]
    assert overlap(face.box, ASTRONAUT_FACE) > 0.8, face
    x, y, width, height = face.box
    for name, (px, py) in face.landmarks.items():
        assert x < px < x + width and y < py < y + height, name
    assert face.crop.dtype == np.uint8
    assert face.crop.shape == (round(faces.ALIGNED_MARGIN * height),) * 2 + (3,)
    assert detector.find(COFFEE.read_bytes()) == []


def test_a_tilted_face_is_aligned_with_its_eyes_level(detector, astronaut):
    tilted = Image.fromarray(astronaut).rotate(25, resample=Image.BILINEAR)
    (face,) = detector.find(np.asarray(tilted))
    assert abs(eye_tilt(face) + 25) < 6  # PIL turns it counter-clockwise: -25 degrees here
    (again,) = detector.find(face.crop)  # the aligned square, searched anew
    assert abs(eye_tilt(again)) < 4
    # The square is centred on the face and ALIGNED_MARGIN faces wide, however it was tilted.
    side = face.crop.shape[0]
    assert abs(again.box[0] + again.box[2] / 2 - side / 2) < 0.06 * side
    assert abs(again.box[3] * faces.ALIGNED_MARGIN / side - 1) < 0.15


def test_boxes_and_landmarks_are_in_the_photos_own_pixels(detector, astronaut):
    # Twice as large and off-centre on a canvas larger than the detector's DETECTION_SIDE.
    canvas = Image.new("RGB", (1600, 1200), (40, 40, 40))
    canvas.paste(Image.fromarray(astronaut).resize((1024, 1024), Image.BILINEAR), (300, 150))
    (small,), (large,) = detector.find(astronaut), detector.find(np.asarray(canvas))
    tolerance = 0.05 * large.box[3]
    for name, (x, y) in small.landmarks.items():
        assert np.hypot(large.landmarks[name][0] - (2 * x + 300),
                        large.landmarks[name][1] - (2 * y + 150)) < tolerance, name
    expected = (2 * small.box[0] + 300, 2 * small.box[1] + 150, 2 * small.box[2],
                2 * small.box[3])
    assert overlap(large.box, expected) > 0.8
    assert large.crop.shape[0] == round(faces.ALIGNED_MARGIN * large.box[3])


def test_a_face_larger_than_the_aligned_square_is_shrunk_into_it():
    # A disc of diameter 600 in a 4000-pixel photo, boxed 1600 high: a square of 3520 pixels
    # of the photo, shrunk to ALIGNED_SIDE; what lies beyond the photo's edge is black.
    photo = Image.new("RGB", (4000, 4000), (90, 90, 90))
    ImageDraw.Draw(photo).ellipse((3000, 1700, 3600, 2300), fill=(255, 255, 255))
    eyes = {"left_eye": (3100, 1900), "right_eye": (3500, 1900)}
    square = faces.align(np.asarray(photo), (2500, 1200, 1600, 1600), eyes)
    side = faces.ALIGNED_SIDE
    assert square.shape == (side, side, 3)
    white_row = (square[side // 2, :, 0] > 200).sum()
    assert abs(white_row - 600 / (faces.ALIGNED_MARGIN * 1600) * side) < 3
    assert (square[:, -1] == 0).all() and (square[side // 2, side // 2] == 255).all()


def test_a_sideways_photo_is_turned_upright_by_its_exif_orientation(astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(astronaut).rotate(90, expand=True).save(buffer, "PNG", exif=exif)
    np.testing.assert_array_equal(faces.decode_photo(buffer.getvalue()), astronaut)


def png_claiming(width, height):
    """A valid 1x1 PNG whose header says width x height: a decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_unreadable_and_oversized_photos_are_refused_before_decoding():
    with pytest.raises(faces.PhotoError, match="12000 x 10000 pixels is over the limit of "
                                               "100,000,000 pixels"):
        faces.decode_photo(png_claiming(12_000, 10_000))
    with pytest.raises(faces.PhotoError, match="over the limit of 100,000,000 pixels"):
        faces.decode_photo(png_claiming(30_000, 30_000))
    truncated = ASTRONAUT.read_bytes()[:20_000]
    with pytest.raises(faces.PhotoError, match="not a readable image"):
        faces.decode_photo(truncated)
    with pytest.raises(faces.PhotoError, match="not a readable image"):
        faces.decode_photo(b"a text file")


def test_the_margin_gives_back_the_square_of_adiences_aligned_faces(synthetic_tree):
    """ALIGNED_MARGIN's source: input.synthetic's aligned images, drawn as Adience's, come out
    of the alignment at about their own size and centre (MTCNN finds half of the drawn faces,
    with less confidence than real ones)."""
    detector = faces.Detector(min_confidence=0.5)
    sizes, offsets = [], []
    for path in sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:16]:
        pixels = np.asarray(Image.open(path))
        for face in detector.find(pixels)[:1]:
            side = pixels.shape[0]
            sizes.append(face.crop.shape[0] / side)
            offsets.append(np.hypot(face.box[0] + face.box[2] / 2 - side / 2,
                                    face.box[1] + face.box[3] / 2 - side / 2) / side)
    assert len(sizes) >= 4
    assert 0.8 < np.median(sizes) < 1.25, sizes
    assert np.median(offsets) < 0.08, offsets


def test_predict_detect_faces_predicts_each_face_and_names_photos_without_one(
        python, exported, detector, tmp_path):
    bomb, notes = tmp_path / "bomb.png", tmp_path / "notes.txt"
    bomb.write_bytes(png_claiming(30_000, 30_000))
    notes.write_text("not a photo")
    photos = [ASTRONAUT, COFFEE, bomb, CAMERA, notes]
    result = run([python, "-m", "trainer.predict", f"--saved_model={exported}",
                  "--detect_faces", "--json", *photos])
    assert result.returncode == 1, result.stderr[-3000:]
    lines = json_lines(result.stdout)
    assert [line["file"] for line in lines] == [str(photo) for photo in photos]
    astronaut, coffee, too_large, camera, text = lines
    assert coffee["error"] == serving.NO_FACE
    assert "over the limit" in too_large["error"]
    assert "not a readable image" in text["error"]
    assert "3 file(s) could not be read or held no face" in result.stderr
    # The astronaut's face: its place in the photo, and the model's answer on its aligned square.
    (face,) = detector.find(ASTRONAUT.read_bytes())
    assert astronaut["face"] == astronaut["faces"] == 1
    np.testing.assert_allclose(astronaut["box"], face.box, atol=0.2)
    for name, place in face.landmarks.items():
        np.testing.assert_allclose(astronaut["landmarks"][name], place, atol=0.2)
    serve, class_names = serving.load(str(exported))
    probabilities = serve(image_bytes=tf.constant([faces.encode(face.crop)]))[
        "probabilities"].numpy()[0]
    assert astronaut["label"] == class_names[probabilities.argmax()]
    np.testing.assert_allclose(astronaut["probability"], probabilities.max(), atol=1e-5)
    assert [name for name, _ in astronaut["top"]] == [
        class_names[i] for i in probabilities.argsort()[::-1][:serving.TOP]]
    assert camera["face"] == camera["faces"] == 1 and camera["label"] in class_names
    x, y, width, height = (f"{v:.0f}" for v in astronaut["box"])
    assert serving.describe(astronaut).startswith(
        f"{ASTRONAUT}: face 1 of 1 (box {x},{y} {width}x{height}; left_eye ")
    assert f": {astronaut['label']} ({astronaut['probability']:.2f}); top 3: " in \
        serving.describe(astronaut)
