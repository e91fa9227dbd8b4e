"""The synthetic Adience tree has the real one's format and structure, and learnable age cues."""

import collections
import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_FOLDS, json_lines, run
from input import adience
from input import faces
from input import synthetic

OFF_GRID = {"(27, 32)", "(38, 42)", "(38, 48)", "(8, 23)"}
FEATURE_SIDE, GRADIENT_CELLS, GRADIENT_BINS, RIDGE = 16, 8, 6, 1000.0


def _read_folds(out_dir):
    """{fold: [12-field rows]} as a reader of the real files would see them; checks the bytes."""
    folds = {}
    for fold in range(adience.FOLDS):
        data = (pathlib.Path(out_dir) / f"fold_{fold}_data.txt").read_bytes()
        assert b"\r" not in data and not data.endswith(b"\n")  # as the real files
        header, *lines = data.decode("ascii").split("\n")
        assert header == "\t".join(adience.COLUMNS)
        folds[fold] = [line.split("\t") for line in lines]
        assert all(len(fields) == len(adience.COLUMNS) for fields in folds[fold])
    return folds


@pytest.fixture(scope="module")
def fold_files(tmp_path_factory):
    """Enough albums for the label and gender mix, fold files only."""
    out = tmp_path_factory.mktemp("folds")
    synthetic.generate(out, subjects=200, seed=0, images=False)
    return _read_folds(out)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    summary = synthetic.generate(out, subjects=10, seed=1, image_size=64, faces_layout=True,
                                 workers=2)
    return out, summary


def test_header_is_the_real_one():
    real_header = (REAL_FOLDS / "fold_0_data.txt").read_text().split("\n")[0]
    assert "\t".join(adience.COLUMNS) == real_header


def test_albums_people_and_photos_have_the_real_structure(fold_files):
    rows = [(fold, r) for fold, lines in fold_files.items() for r in lines]
    assert all(lines for lines in fold_files.values())
    folds_of_album, albums_of_face, ages_of_face = (collections.defaultdict(set)
                                                    for _ in range(3))
    for fold, (user_id, _, face_id, age, *_) in rows:
        folds_of_album[user_id].add(fold)
        albums_of_face[face_id].add(user_id)
        ages_of_face[face_id].add(age)
    assert all(len(folds) == 1 for folds in folds_of_album.values())
    assert all(len(albums) == 1 for albums in albums_of_face.values())
    assert all(len(ages) == 1 for ages in ages_of_face.values())
    people_on_photo = collections.Counter((r[0], r[1]) for _, r in rows)
    multi = sum(count > 1 for count in people_on_photo.values()) / len(people_on_photo)
    assert 0.15 < multi < 0.4  # real: 28% of photos show 2+ people
    sizes = [len(lines) for lines in fold_files.values()]
    assert max(sizes) < 1.3 * min(sizes)
    for _, r in rows:
        assert r[0].split("@")[1].startswith("N0") and r[1].endswith("_o.jpg")
        x, y, dx, dy, tilt, yaw, score = map(int, r[5:])
        assert x >= 0 and y >= 0 and 80 <= dx <= 3264 and abs(dx - dy) <= 1
        assert -45 <= yaw <= 45 and 5 <= score <= 221 and tilt % 5 == 0


def test_labels_and_genders_mix_like_the_real_files(fold_files):
    rows = [r for lines in fold_files.values() for r in lines]
    ages = collections.Counter(r[3] for r in rows)
    assert set(adience.AGE_GROUPS) <= set(ages)
    assert 0.8 < sum(ages[label] for label in adience.AGE_GROUPS) / len(rows) < 0.95
    assert ages["None"] and OFF_GRID & set(ages)
    assert any(label.isdigit() for label in ages)
    assert set(ages) <= set(synthetic.AGE_LABEL_ROWS)
    genders = collections.Counter(r[4] for r in rows)
    assert set(genders) == {"f", "m", "u", ""}
    assert 0.4 < genders["f"] / len(rows) < 0.56 and 0.34 < genders["m"] / len(rows) < 0.5


def test_every_fold_gets_an_album_down_to_five():
    rows = synthetic.plan(5, seed=0)
    assert sorted(collections.Counter(r.fold for r in {r.user_id: r for r in rows}.values())
                  .values()) == [1] * adience.FOLDS
    with pytest.raises(ValueError, match="at least 5"):
        synthetic.plan(4, seed=0)


def test_every_row_has_its_images(small_tree):
    out, summary = small_tree
    rows = [r for lines in _read_folds(out).values() for r in lines]
    assert summary["rows"] == len(rows) and summary["images"] == 2 * len(rows)
    for user_id, original_image, face_id, *_ in rows:
        for layout, name in (("aligned", "landmark_aligned_face"),
                             ("faces", "coarse_tilt_aligned_face")):
            with Image.open(out / layout / user_id / f"{name}.{face_id}.{original_image}") as im:
                im.load()
                assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


def _tree_bytes(out_dir):
    return {p.relative_to(out_dir): p.read_bytes() for p in sorted(out_dir.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(small_tree, tmp_path):
    out, _ = small_tree
    synthetic.generate(tmp_path / "one", subjects=10, seed=1, image_size=64, faces_layout=True,
                       workers=1)
    assert _tree_bytes(tmp_path / "one") == _tree_bytes(out)
    synthetic.generate(tmp_path / "other", subjects=10, seed=2, image_size=64, workers=2)
    other = _tree_bytes(tmp_path / "other")
    assert other[pathlib.Path("fold_0_data.txt")] != _tree_bytes(out)[
        pathlib.Path("fold_0_data.txt")]


def test_same_row_index_and_seed_draw_the_same_face():
    row = synthetic.plan(5, seed=3)[7]
    first = np.asarray(faces.draw_image(row, 3, 48))
    assert np.array_equal(first, np.asarray(faces.draw_image(row, 3, 48)))
    assert not np.array_equal(first, np.asarray(faces.draw_image(row, 4, 48)))


def test_cli_writes_the_tree_and_a_summary(python, tmp_path):
    result = run([python, "-m", "input.synthetic", "--out", tmp_path, "--subjects", "5",
                  "--image_size", "32", "--workers", "2", "--seed", "7"])
    assert result.returncode == 0, result.stderr
    assert "images written in" in result.stdout
    summary = json_lines(result.stdout)[-1]
    rows = sum(len(lines) for lines in _read_folds(tmp_path).values())
    assert summary["rows"] == summary["images"] == rows and summary["albums"] == 5
    assert len(list((tmp_path / "aligned").rglob("*.jpg"))) == rows


def test_cli_refuses_fewer_subjects_than_folds(python, tmp_path):
    result = run([python, "-m", "input.synthetic", "--out", tmp_path, "--subjects", "4"])
    assert result.returncode != 0 and "subjects" in result.stderr


def _features(path):
    """16x16 colours and greys, and where the edges run (8x8 cells x 6 orientations)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    small = np.asarray(rgb.resize((FEATURE_SIDE,) * 2, Image.BILINEAR), np.float32) / 255
    grey = np.asarray(rgb.convert("L"), np.float32)
    gy, gx = np.gradient((grey - grey.mean()) / (grey.std() + 1))
    bins = np.minimum((np.arctan2(gy, gx) % np.pi / np.pi * GRADIENT_BINS).astype(int),
                      GRADIENT_BINS - 1)
    cell = grey.shape[0] // GRADIENT_CELLS
    edges = [(np.hypot(gx, gy) * (bins == b)).reshape(GRADIENT_CELLS, cell, GRADIENT_CELLS, cell)
             .sum((1, 3)) for b in range(GRADIENT_BINS)]
    return np.concatenate([small.ravel(), small.mean(2).ravel(), np.sqrt(edges).ravel()])


def test_age_cues_are_learnable_but_not_trivially(tmp_path):
    # Observed (seed 0, 50 albums, 1,606 rows with a paper label, 64x64): exact 0.38, balanced
    # 0.31, 1-off 0.69 for this linear model (seeds 1-3: exact 0.36-0.43), against 1/8 by
    # chance and 0.29 for always guessing the commonest group. A small 4-layer CNN on 64x64
    # images of 150 albums (train folds 0-3, test fold 4) reached 0.66 exact and 0.90 1-off
    # after 30 epochs, its errors mostly in neighbouring groups.
    synthetic.generate(tmp_path, subjects=50, seed=0, image_size=64, workers=2)
    rows = [r for r in synthetic.plan(50, seed=0) if r.age in adience.AGE_GROUPS]
    x = np.stack([_features(adience.image_path(str(tmp_path), "aligned", r.user_id, r.face_id,
                                               r.original_image))
                  for r in rows])
    group = np.array([adience.AGE_GROUPS.index(r.age) for r in rows])
    fold = np.array([r.fold for r in rows])
    guess = np.zeros_like(group)
    # Each fold is predicted by ridge regression on the other four: fold 4 alone has only ten
    # albums, too few for a stable figure.
    for held_out in range(adience.FOLDS):
        train, test = fold != held_out, fold == held_out
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        a = np.c_[(x - mean) / std, np.ones(len(x))]
        w = np.linalg.solve(a[train].T @ a[train] + RIDGE * np.eye(a.shape[1]),
                            a[train].T @ np.eye(len(adience.AGE_GROUPS))[group[train]])
        guess[test] = (a[test] @ w).argmax(1)
    exact = np.mean(guess == group)
    balanced = np.mean([np.mean(guess[group == g] == g) for g in np.unique(group)])
    one_off = np.mean(np.abs(guess - group) <= 1)
    assert 0.25 < exact < 0.95 and balanced > 0.2 and one_off > exact + 0.2
