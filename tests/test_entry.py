"""The one error path (launch/entry.py) as users meet it in the trainer's entry points: a
mistake is one `error:` line and exit 2 before any work; damaged data and full or read-only
disks are one line naming the path, and nothing half-written is left."""

import contextlib
import errno
import json
import os
import shutil
import subprocess

import pytest
import tensorflow as tf

from conftest import TINY_CROP_SIZE, assert_error_line, run
from launch import entry
from trainer import checkpoint as checkpoint_lib

TINY = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16"]
SYNTHETIC = TINY + ["--data=synthetic", "--steps=2"]


def trainer(python, *flags, module="trainer.main"):
    return [python, "-m", module, *flags]


@pytest.mark.parametrize("module, flags, needle", [
    ("trainer.main", ["--records=x"], "--model_dir"),
    ("trainer.main", ["--model_dir=MODEL_DIR"], "--records"),
    ("trainer.evaluate", [], "--model_dir"),
    ("trainer.cross_validate", ["--model_dir=MODEL_DIR"], "--records"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--batch_size=0"], "--batch_size"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--batch_size=-1"], "--batch_size"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--strategy=mirrored",
                      "--logical_cpus=3"], "--batch_size=16: a global batch over 3 replicas must "
     "be a multiple of 3"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--strategy=mirrored",
                      "--logical_cpus=32"], "under 1 example per replica"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--model=alexnet"], "--model"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--no_such_flag=1"],
     "no_such_flag"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, ":4,", "host2:4"],
     "unexpected argument(s): :4, host2:4"),
    ("trainer.cross_validate", ["--model_dir=MODEL_DIR", "--records=x", "--folds=0,7"],
     "--folds"),
    ("trainer.distcheck", ["--strategy=one_device", "extra"], "unexpected argument(s): extra"),
    ("trainer.main", ["--model_dir=MODEL_DIR", *SYNTHETIC, "--model=mobilenet_v2",
                      "--backbone_weights=/nonexistent.h5"], "--backbone_weights"),
])
def test_a_user_mistake_is_one_error_line_and_exit_2(python, tmp_path, module, flags, needle):
    model_dir = tmp_path / "job"
    flags = [flag.replace("MODEL_DIR", str(model_dir)) for flag in flags]
    assert_error_line(run(trainer(python, *flags, module=module)), needle)
    assert not model_dir.exists()  # found before any work


def _copy(records, tmp_path):
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    return copy


def _first_shard(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder / manifest["splits"]["fold1"]["shards"][0]["file"]


def test_records_whose_manifest_is_not_json_are_refused_naming_it(python, records, tmp_path):
    folder = _copy(records, tmp_path)
    (folder / "manifest.json").write_text('{"splits": ')
    result = run(trainer(python, f"--model_dir={tmp_path / 'job'}", f"--records={folder}",
                         *TINY, "--steps=2"))
    assert_error_line(result, f"{folder / 'manifest.json'}: not JSON (line 1")


def test_a_truncated_shard_is_refused_before_any_work(python, records, tmp_path):
    folder = _copy(records, tmp_path)
    shard = _first_shard(folder)
    os.truncate(shard, shard.stat().st_size // 2)
    result = run(trainer(python, f"--model_dir={tmp_path / 'job'}", f"--records={folder}",
                         *TINY, "--steps=2"))
    assert_error_line(result, str(shard), "the manifest says", "python -m input.verify")
    assert not (tmp_path / "job").exists()


def test_records_damaged_during_training_end_the_job_naming_them(python, records, tmp_path):
    folder = _copy(records, tmp_path)
    shards = json.loads((folder / "manifest.json").read_text())["splits"]
    for split in ("fold1", "fold2", "fold3", "fold4"):  # same size, broken CRCs: passes the
        for shard in shards[split]["shards"]:          # start's size check, fails on reading
            path = folder / shard["file"]
            data = bytearray(path.read_bytes())
            data[100:-100] = bytes(len(data) - 200)
            path.write_bytes(bytes(data))
    job = tmp_path / "job"
    result = run(trainer(python, f"--model_dir={job}", f"--records={folder}", *TINY,
                         "--steps=4"))
    assert_error_line(result, f"{folder}: damaged records", f"python -m input.verify {folder}",
                      exit_code=1)


def test_a_model_dir_that_is_a_file_is_refused(python, tmp_path):
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("mine")
    result = run(trainer(python, f"--model_dir={not_a_folder / 'job'}", *SYNTHETIC))
    assert_error_line(result, "--model_dir", "not a directory")
    assert not_a_folder.read_text() == "mine"


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A tmpfs at `path` (root only: skips otherwise), unmounted on exit."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                            str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (the injected-error tests cover the handling)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_read_only_model_dir_is_refused(python, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as read_only:
        result = run(trainer(python, f"--model_dir={read_only / 'job'}", *SYNTHETIC))
    assert_error_line(result, "--model_dir", "read-only file system")


def test_a_full_disk_ends_the_job_with_one_line_and_no_half_checkpoint(python, tmp_path):
    with mounted_tmpfs(tmp_path / "small", "size=64k") as small:
        job = small / "job"
        result = run(trainer(python, f"--model_dir={job}", *SYNTHETIC, "--steps=3",
                             "--checkpoint_every=1"))
        line = assert_error_line(result, "no space left on device", exit_code=1)
        assert str(small) in line
        leftovers = [name for name in os.listdir(job / "checkpoints")
                     if name.endswith("_temp")] if (job / "checkpoints").exists() else []
    assert not leftovers


def _checkpoints(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    directory = checkpoint_lib.checkpoint_dir(str(tmp_path))
    return checkpoint_lib.Checkpoints(tf.train.Checkpoint(step=step), str(tmp_path),
                                      directory), step, directory


def test_a_failed_save_removes_what_it_wrote_and_keeps_the_last_checkpoint(tmp_path,
                                                                           monkeypatch):
    checkpoints, step, directory = _checkpoints(tmp_path)
    step.assign(1)
    good = checkpoints.save(1)

    def full_disk(checkpoint_number):
        os.makedirs(os.path.join(directory, f"ckpt-{checkpoint_number}_temp"))
        open(os.path.join(directory, f"ckpt-{checkpoint_number}.index"), "w").close()
        raise OSError(errno.ENOSPC, "No space left on device", directory)

    monkeypatch.setattr(checkpoints._manager, "save", full_disk)
    with pytest.raises(entry.Failure, match="no space left on device.*ckpt-1, is kept"):
        checkpoints.save(2)
    assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                             "ckpt-1.index"]
    assert checkpoints.latest() == good


def test_a_killed_save_is_cleaned_up_by_the_next_run(tmp_path):
    checkpoints, step, directory = _checkpoints(tmp_path)
    checkpoints.save(1)
    # What a save killed midway leaves: TensorFlow's temporary folder, a step not indexed.
    os.makedirs(os.path.join(directory, "ckpt-2_temp"))
    open(os.path.join(directory, "ckpt-2.index"), "w").close()
    open(os.path.join(directory, "notes-ckpt-2_temp.txt"), "w").close()  # the user's
    _checkpoints(tmp_path)
    assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                             "ckpt-1.index", "notes-ckpt-2_temp.txt"]


def test_a_damaged_mean_image_is_refused_before_any_work(python, records, tmp_path):
    folder = _copy(records, tmp_path)
    sums = folder / "pixel_sums.npz"
    sums.write_bytes(sums.read_bytes()[:1000])
    result = run(trainer(python, f"--model_dir={tmp_path / 'job'}", f"--records={folder}",
                         *TINY, "--steps=2"))
    assert_error_line(result, str(sums), "python -m input.verify")
    assert not (tmp_path / "job").exists()
