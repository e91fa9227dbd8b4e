"""input.build writes complete, subject-exclusive shards that match their manifest, and loses
nothing: bad images are counted, a killed build resumes to the same bytes as a clean one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_RECORD_SIZE, run
from input import adience
from input import build
from input import schema
from input import shards
from input import verify


def _manifest(records_dir):
    with open(os.path.join(records_dir, schema.MANIFEST)) as f:
        return json.load(f)


def _read_all(path):
    import tensorflow as tf

    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def _feature(example, key):
    value = example.features.feature[key]
    return value.bytes_list.value[0] if value.bytes_list.value else value.int64_list.value[0]


def _shard_digests(records_dir):
    return {name: shards.file_sha256(os.path.join(records_dir, name))
            for name in sorted(os.listdir(records_dir)) if name.endswith(".tfrecord")}


def test_records_match_the_manifest_and_the_fold_files(synthetic_tree, records):
    manifest = _manifest(records)
    examples, _ = adience.read_examples(str(synthetic_tree))
    assert sorted(manifest["splits"]) == [f"fold{i}" for i in range(5)]
    assert sum(s["examples"] for s in manifest["splits"].values()) == len(examples)
    users_by_split = {}
    for split, entry in manifest["splits"].items():
        records_of_split = [r for s in entry["shards"] for r in _read_all(records / s["file"])]
        assert len(records_of_split) == entry["examples"]
        assert {_feature(r, "fold") for r in records_of_split} == {int(split[-1])}
        users_by_split[split] = {_feature(r, "subject/user_id") for r in records_of_split}
        labels = [_feature(r, "image/class/label") for r in records_of_split]
        assert np.bincount(labels, minlength=8).tolist() == entry["class_counts"]
    for a in users_by_split:
        for b in users_by_split:
            assert a == b or not users_by_split[a] & users_by_split[b]
    assert verify.verify(str(records)) == []


def test_split_protocol_keeps_users_and_photos_on_one_side(synthetic_tree, tmp_path):
    manifest = build.build(str(synthetic_tree), str(tmp_path), protocol="split", seed=3,
                           shards_per_split=1, workers=1, image_size=32)
    assert sorted(manifest["splits"]) == ["test", "train", "validation"]
    photos = {}
    for split, entry in manifest["splits"].items():
        for r in _read_all(tmp_path / entry["shards"][0]["file"]):
            user, name = _feature(r, "subject/user_id"), _feature(r, "image/filename")
            photos.setdefault(user, set()).add(split)
            photos.setdefault(name.split(b".", 2)[-1], set()).add(split)
    assert all(len(sides) == 1 for sides in photos.values())


def test_bad_images_are_counted_and_skipped_and_fatal_with_strict(synthetic_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_tree, tree)
    examples, _ = adience.read_examples(str(tree))
    corrupt, missing = examples[3], examples[7]
    with open(corrupt.path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
    os.remove(missing.path)
    manifest = build.build(str(tree), str(tmp_path / "records"), shards_per_split=1, workers=1,
                           image_size=32)
    assert sum(s["examples"] for s in manifest["splits"].values()) == len(examples) - 2
    problems, bad = manifest["report"]["problems"], manifest["report"]["bad_images"]
    assert any(p.startswith(missing.source) and "not found" in p for p in problems)
    assert len(bad) == 1 and bad[0].startswith(f"{corrupt.source}: unreadable or corrupt image")

    result = run([sys.executable, "-m", "input.build", f"--adience_dir={tree}",
                  f"--out_dir={tmp_path / 'strict'}", "--strict", "--workers=1",
                  "--image_size=32"])
    assert result.returncode == 1
    assert "input.build: error:" in result.stderr and "fold_" in result.stderr


def test_other_settings_and_missing_fold_file_are_clear_errors(synthetic_tree, records, tmp_path):
    with pytest.raises(build.BuildError, match="image_size"):
        build.build(str(synthetic_tree), str(records), shards_per_split=2, workers=1,
                    image_size=TINY_RECORD_SIZE * 2)
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(synthetic_tree / "fold_0_data.txt", tree)
    with pytest.raises(FileNotFoundError, match="fold_1_data.txt"):
        build.build(str(tree), str(tmp_path / "records"), workers=1)
    for fold in range(1, adience.FOLDS):
        shutil.copy(synthetic_tree / adience.FOLD_FILE.format(fold), tree)
    with pytest.raises(build.BuildError, match="no usable example"):  # no image in this tree
        build.build(str(tree), str(tmp_path / "records"), workers=1)


def test_killed_build_resumes_to_the_clean_build(synthetic_tree, tmp_path):
    flags = [f"--adience_dir={synthetic_tree}", "--shards=6", "--workers=1", "--image_size=96"]
    clean = run([sys.executable, "-m", "input.build", f"--out_dir={tmp_path / 'clean'}", *flags])
    assert clean.returncode == 0, clean.stderr[-2000:]

    resumed = tmp_path / "resumed"
    parts = resumed / shards.PARTS
    process = subprocess.Popen([sys.executable, "-m", "input.build", f"--out_dir={resumed}",
                                *flags], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a shard is complete and the next one is partial
        complete = list(resumed.glob("*.tfrecord")) if resumed.exists() else []
        partial = list(parts.glob("*.partial-*")) if parts.exists() else []
        if complete and partial:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the whole build: main process and workers
    process.wait()
    assert complete and partial, "the build ended before it could be killed mid-shard"

    rerun = run([sys.executable, "-m", "input.build", f"--out_dir={resumed}", *flags])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    skipped = int(rerun.stdout.split("skipped ")[1].split()[0])
    assert skipped >= 1
    assert _shard_digests(resumed) == _shard_digests(tmp_path / "clean")
    assert _manifest(resumed) == _manifest(tmp_path / "clean")
    assert not list(parts.glob("*.partial-*"))


def test_verify_names_each_file_that_differs(records, tmp_path):
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    names = sorted(p.name for p in copy.glob("*.tfrecord"))
    damaged, removed = copy / names[0], copy / names[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    removed.unlink()
    result = run([sys.executable, "-m", "input.verify", str(copy)])
    assert result.returncode == 1
    assert f"{names[0]}: checksum differs" in result.stdout
    assert f"{names[0]}: corrupt record" in result.stdout
    assert f"{names[1]}: missing" in result.stdout
    assert run([sys.executable, "-m", "input.verify", str(records)]).returncode == 0
