"""input.verify names every file of a records folder that differs from its manifest (shards,
their sizes and records, pixel_sums.npz), still checks manifests written before sizes and the
pixel sums' checksum were recorded, and refuses a manifest that is not one with one line."""

import json
import shutil
import sys

import pytest

from conftest import assert_error_line, run
from input import schema


def _verify(records_dir):
    return run([sys.executable, "-m", "input.verify", records_dir])


@pytest.fixture
def copy(records, tmp_path):
    """A copy of the session's records to damage."""
    folder = tmp_path / "records"
    shutil.copytree(records, folder)
    return folder


def _edit_manifest(folder, edit):
    path = folder / schema.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_intact_records_agree(records):
    result = _verify(records)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.splitlines() == ["all shards agree"]


def test_each_shard_that_differs_is_named(copy):
    names = sorted(p.name for p in copy.glob("*.tfrecord"))
    damaged, truncated, removed = (copy / name for name in names[:3])
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    size = truncated.stat().st_size
    truncated.write_bytes(truncated.read_bytes()[:size // 2])
    removed.unlink()
    result = _verify(copy)
    assert result.returncode == 1
    assert f"{names[0]}: checksum differs" in result.stdout
    assert f"{names[0]}: corrupt record" in result.stdout
    assert f"{names[1]}: {size // 2} bytes, the manifest says {size}" in result.stdout
    assert f"{names[2]}: missing" in result.stdout


@pytest.mark.parametrize("damage, found", [
    (lambda path: path.write_bytes(path.read_bytes()[:-100]), "checksum differs"),
    (lambda path: path.unlink(), "missing"),
], ids=["truncated", "missing"])
def test_a_damaged_or_missing_pixel_sums_file_fails(copy, damage, found):
    damage(copy / schema.PIXEL_SUMS)
    result = _verify(copy)
    assert result.returncode == 1, result.stdout
    assert f"{schema.PIXEL_SUMS}: {found}" in result.stdout


def test_a_manifest_written_before_sizes_and_checksum_is_still_verified_and_says_so(copy):
    def version_1(manifest):
        manifest["version"] = 1
        del manifest["pixel_sums_sha256"]
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                del shard["bytes"]

    _edit_manifest(copy, version_1)
    intact = _verify(copy)
    assert intact.returncode == 0, intact.stdout + intact.stderr[-3000:]
    notes = [line for line in intact.stdout.splitlines() if "version 1" in line]
    assert len(notes) == 1 and "checksums" in notes[0]

    pixel_sums = copy / schema.PIXEL_SUMS
    pixel_sums.write_bytes(pixel_sums.read_bytes()[:-100])  # no checksum: caught by reading it
    damaged = _verify(copy)
    assert damaged.returncode == 1
    assert f"{schema.PIXEL_SUMS}: unreadable" in damaged.stdout


def test_a_manifest_that_is_not_json_is_one_error_line(copy):
    manifest = copy / schema.MANIFEST
    manifest.write_text('{\n "version": 2,\n "splits": {,\n}')
    assert_error_line(_verify(copy), str(manifest), "not JSON", "line 3", exit_code=2)


def test_a_wrong_argument_is_one_error_line(tmp_path):
    assert_error_line(run([sys.executable, "-m", "input.verify"]), "RECORDS_DIR", exit_code=2)
    assert_error_line(_verify(tmp_path / "nowhere"), "nowhere", exit_code=2)
    missing = _verify(tmp_path)  # a folder, but no build finished in it
    assert missing.returncode == 1 and f"{schema.MANIFEST}: missing" in missing.stdout
