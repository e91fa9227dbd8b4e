"""input.build writes complete, subject-exclusive shards that match their manifest, and loses
nothing: bad images are counted, a killed build resumes to the same bytes as a clean one, no
file of the user's is ever deleted, and a full or read-only disk is one line naming the path,
with nothing half-written left behind."""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_RECORD_SIZE, assert_error_line, run
from input import adience
from input import build
from input import schema
from input import shards
from input import verify
from launch import entry

# The flags of the session's `records` fixture: a re-run with them finds a build of its settings.
FIXTURE_FLAGS = ["--shards=2", f"--image_size={TINY_RECORD_SIZE}", "--workers=1"]


def _build(tree, out_dir, *flags):
    return run([sys.executable, "-m", "input.build", f"--adience_dir={tree}",
                f"--out_dir={out_dir}", *flags])


@contextlib.contextmanager
def _mounted(folder, options):
    """A tmpfs at `folder` for the block (root only: tests here run as root, where chmod does
    not stop a write); skips the test where mounting is not allowed."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _leftovers(records_dir):
    return [p.name for p in records_dir.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]


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
    for split, summary in manifest["splits"].items():
        records_of_split = [r for s in summary["shards"] for r in _read_all(records / s["file"])]
        assert len(records_of_split) == summary["examples"]
        assert {_feature(r, "fold") for r in records_of_split} == {int(split[-1])}
        users_by_split[split] = {_feature(r, "subject/user_id") for r in records_of_split}
        labels = [_feature(r, "image/class/label") for r in records_of_split]
        assert np.bincount(labels, minlength=8).tolist() == summary["class_counts"]
    for a in users_by_split:
        for b in users_by_split:
            assert a == b or not users_by_split[a] & users_by_split[b]
    assert verify.verify(str(records)) == []


def _sources(records_dir, shard):
    return [_feature(r, "source").decode() for r in _read_all(records_dir / shard["file"])]


def test_each_split_is_written_in_an_order_drawn_from_the_seed(synthetic_tree, records,
                                                              tmp_path):
    manifest = _manifest(records)
    assert manifest["settings"]["seed"] == 0
    assert manifest["settings"]["example_order"] == build.EXAMPLE_ORDER
    other = build.build(str(synthetic_tree), str(tmp_path), seed=1, shards_per_split=2,
                        workers=1, image_size=8, image_format="raw")
    for split, summary in manifest["splits"].items():
        mine = [_sources(records, shard) for shard in summary["shards"]]
        for lines in mine:  # not in the fold file's order, which lists albums one by one
            assert lines != sorted(lines, key=lambda source: int(source.split(":")[1]))
        theirs = [_sources(tmp_path, shard) for shard in other["splits"][split]["shards"]]
        assert sorted(sum(theirs, [])) == sorted(sum(mine, []))  # the same examples
        assert theirs != mine  # dealt in another order


def test_the_manifest_records_each_shards_size_and_the_pixel_sums_checksum(records):
    manifest = _manifest(records)
    assert manifest["version"] == build.MANIFEST_VERSION == 2
    for entry_ in manifest["splits"].values():
        for shard in entry_["shards"]:
            assert shard["bytes"] == (records / shard["file"]).stat().st_size
    pixel_sums = (records / schema.PIXEL_SUMS).read_bytes()
    assert manifest["pixel_sums_sha256"] == hashlib.sha256(pixel_sums).hexdigest()


def test_split_protocol_keeps_users_and_photos_on_one_side(synthetic_tree, tmp_path):
    manifest = build.build(str(synthetic_tree), str(tmp_path), protocol="split", seed=3,
                           shards_per_split=1, workers=1, image_size=32)
    assert sorted(manifest["splits"]) == ["test", "train", "validation"]
    photos = {}
    for split, summary in manifest["splits"].items():
        for r in _read_all(tmp_path / summary["shards"][0]["file"]):
            user, name = _feature(r, "subject/user_id"), _feature(r, "image/filename")
            photos.setdefault(user, set()).add(split)
            photos.setdefault(name.split(b".", 2)[-1], set()).add(split)
    assert all(len(sides) == 1 for sides in photos.values())


def test_bad_images_are_counted_and_skipped_and_fatal_with_strict(synthetic_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_tree, tree)
    examples, _ = adience.read_examples(str(tree))
    truncated, not_an_image, missing = examples[3], examples[5], examples[7]
    with open(truncated.path, "rb") as f:
        head = f.read(300)
    with open(truncated.path, "wb") as f:
        f.write(head)
    with open(not_an_image.path, "wb") as f:
        f.write(b"<html>a login page saved under the photo's name</html>")
    os.remove(missing.path)
    manifest = build.build(str(tree), str(tmp_path / "records"), shards_per_split=1, workers=1,
                           image_size=32)
    assert sum(s["examples"] for s in manifest["splits"].values()) == len(examples) - 3
    problems, bad = manifest["report"]["problems"], manifest["report"]["bad_images"]
    assert any(p.startswith(missing.source) and "not found" in p for p in problems)
    assert len(bad) == 2 and all(": unreadable or corrupt image " in p for p in bad)
    reasons = {p.split(": ")[0]: p.rsplit(": ", 1)[-1] for p in bad}
    assert reasons[truncated.source].startswith("truncated JPEG (300 bytes")
    assert reasons[not_an_image.source].startswith("not a JPEG/PNG/BMP/GIF image")
    assert not any("Graph execution" in p for p in bad)

    shutil.copy(synthetic_tree / os.path.relpath(missing.path, tree), missing.path)
    strict = tmp_path / "strict"  # the rows are good now: the first bad image is fatal
    error = assert_error_line(_build(tree, strict, "--strict", "--workers=1", "--image_size=32"),
                        "unreadable or corrupt image", exit_code=2)
    assert truncated.source in error or not_an_image.source in error
    assert not _leftovers(strict)


def test_user_mistakes_are_one_error_line_and_exit_2(synthetic_tree, records, tmp_path):
    before = sorted(p.name for p in records.iterdir())
    assert_error_line(_build(synthetic_tree, records, "--shards=2", "--image_size=128"),
                str(records), "other settings", "image_size", exit_code=2)
    assert sorted(p.name for p in records.iterdir()) == before
    assert_error_line(_build(tmp_path / "nowhere", tmp_path / "out"), "--adience_dir", "nowhere",
                exit_code=2)
    assert_error_line(_build(synthetic_tree, tmp_path / "out", "--workers=0"), "--workers",
                exit_code=2)
    assert_error_line(run([sys.executable, "-m", "input.build", f"--out_dir={tmp_path}"]),
                "--adience_dir", exit_code=2)


def test_a_missing_fold_file_and_a_tree_without_images_are_named(synthetic_tree, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(synthetic_tree / "fold_0_data.txt", tree)
    with pytest.raises(build.BuildError, match="fold_1_data.txt"):
        build.build(str(tree), str(tmp_path / "records"), workers=1)
    for fold in range(1, adience.FOLDS):
        shutil.copy(synthetic_tree / adience.FOLD_FILE.format(fold), tree)
    with pytest.raises(build.BuildError, match="no usable example"):  # no image in this tree
        build.build(str(tree), str(tmp_path / "records"), workers=1)


def test_strict_refuses_an_unknown_age_string_naming_its_line(synthetic_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_tree, tree)
    lines = (tree / "fold_2_data.txt").read_text().split("\n")
    fields = lines[3].split("\t")
    fields[adience.COLUMNS.index("age")] = "(1, 99)"  # well-formed, but no Adience age string
    lines[3] = "\t".join(fields)
    (tree / "fold_2_data.txt").write_text("\n".join(lines))
    assert_error_line(_build(tree, tmp_path / "strict", "--strict"),
                "fold_2_data.txt:4: unknown age string '(1, 99)'", exit_code=2)
    assert not (tmp_path / "strict").exists()  # refused before any work


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


def test_a_rerun_removes_only_the_builds_own_leftovers(synthetic_tree, records, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(records, out)
    shard = sorted(p.name for p in out.glob("*.tfrecord"))[0]
    users = [out / "notes.tmp-1", out / "data.partial-1.csv", out / f"{shard}.partial-99x",
             out / "other-00000-of-00002.tfrecord.partial-7", out / shards.PARTS / "mine.tmp-3"]
    ours = [out / shards.PARTS / f"{shard}.partial-999", out / f"{schema.MANIFEST}.tmp-12",
            out / shards.PARTS / f"{shard}.pixels.npy.tmp-4"]
    for path in users + ours:
        path.write_text("kept?")
    result = _build(synthetic_tree, out, *FIXTURE_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(path.read_text() == "kept?" for path in users)
    assert not any(path.exists() for path in ours)


def test_an_out_dir_holding_others_files_is_refused_and_left_alone(synthetic_tree, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    for name in ("holiday.jpg", "notes.txt", "fold0-00000-of-00002.tfrecord.partial-3"):
        (out / name).write_text("mine")
    assert_error_line(_build(synthetic_tree, out, *FIXTURE_FLAGS), str(out), "holiday.jpg",
                "notes.txt", exit_code=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "fold0-00000-of-00002.tfrecord.partial-3", "holiday.jpg", "notes.txt"]


def test_an_out_dir_that_is_a_file_or_under_one_is_refused(synthetic_tree, tmp_path):
    a_file = tmp_path / "records"
    a_file.write_text("not a folder")
    assert_error_line(_build(synthetic_tree, a_file, *FIXTURE_FLAGS), f"{a_file}: not a directory",
                exit_code=2)
    assert_error_line(_build(synthetic_tree, a_file / "sub", *FIXTURE_FLAGS), "not a directory",
                str(a_file), exit_code=2)
    assert a_file.read_text() == "not a folder"


def test_a_read_only_out_dir_is_refused_before_any_work(synthetic_tree, tmp_path):
    with _mounted(tmp_path / "ro", "ro,size=1m") as folder:
        assert_error_line(_build(synthetic_tree, folder, *FIXTURE_FLAGS),
                    f"{folder}: read-only file system", exit_code=2)
        assert_error_line(_build(synthetic_tree, folder / "records", *FIXTURE_FLAGS),
                    "read-only file system", exit_code=2)


def test_a_disk_that_fills_during_the_build_is_one_line_and_leaves_nothing_half_written(
        synthetic_tree, tmp_path):
    # 200 KB: the first shard and its pixel sum fit, the next ones do not.
    with _mounted(tmp_path / "small", "size=200k") as folder:
        out = folder / "records"
        result = _build(synthetic_tree, out, "--shards=2", "--image_size=64", "--workers=2")
        assert_error_line(result, str(out), "no space left on device", exit_code=1)
        assert not _leftovers(out), _leftovers(out)
        assert not (out / schema.MANIFEST).exists()


def test_a_write_that_fails_removes_its_temporary_and_names_the_file(tmp_path):
    target = tmp_path / "pixel_sums.npz"

    def fill_the_disk(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk: no file name

    with pytest.raises(OSError) as raised:
        shards.replace_atomically(str(target), fill_the_disk, binary=True)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert entry.path_error(raised.value) == f"{target}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_worker_stops_the_build_with_the_path_and_cleans_up(
        synthetic_tree, records, tmp_path, monkeypatch):
    """What the parent does with a worker's ENOSPC (injected: the same on any machine)."""
    out = tmp_path / "records"
    shutil.copytree(records, out)
    shard = sorted(p.name for p in out.glob("*.tfrecord"))[-1]
    (out / shard).unlink()  # so the build has work to do
    partial = out / shards.PARTS / f"{shard}.partial-4242"  # a worker stopped mid-shard

    def full_disk(jobs, workers):
        partial.write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / shard))

    monkeypatch.setattr(build, "_run", full_disk)
    with pytest.raises(entry.Failure) as raised:
        build.build(str(synthetic_tree), str(out), shards_per_split=2,
                    image_size=TINY_RECORD_SIZE)
    assert raised.value.exit_code == entry.FAULT_EXIT_CODE
    assert str(raised.value).startswith(f"{out / shard}: no space left on device")
    assert not partial.exists()


def test_a_tensorflow_write_error_becomes_an_os_error_naming_the_shard():
    import tensorflow as tf

    error = tf.errors.ResourceExhaustedError(None, None, "/x/.parts/a.partial-1; No space left "
                                                         "on device")
    converted = shards._write_error(error, "/x/a.tfrecord")
    assert (converted.errno, converted.filename) == (errno.ENOSPC, "/x/a.tfrecord")


def test_input_benchmark_names_its_batch_per_pipeline_and_points_from_the_old_flag(tmp_path):
    missing = tmp_path / "nowhere"
    old = run([sys.executable, "-m", "input.benchmark", f"--adience_dir={missing}",
               "--batch_size=8"])
    assert "--batch_size is now --pipeline_batch_size" in old.stderr
    assert_error_line(old, "--adience_dir", exit_code=2)  # it read the old flag, then the folder
    assert_error_line(run([sys.executable, "-m", "input.benchmark", f"--adience_dir={missing}",
                     "--batch_size=8", "--pipeline_batch_size=8"]), "--pipeline_batch_size",
                exit_code=2)
    helped = run([sys.executable, "-m", "input.benchmark", "--help"])
    shown = helped.stdout + helped.stderr
    assert "--pipeline_batch_size" in shown and "--batch_size" not in shown
