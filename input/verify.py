"""Checks a records folder against its manifest: every shard read, every record's CRC checked.

  python -m input.verify ~/data/records

Reports each file that differs from the manifest by name (missing, extra, size, checksum,
record count, class counts, a corrupt record; pixel_sums.npz missing, changed or unreadable)
and exits 1 if any does, 0 if all agree. A manifest written before shard sizes and the pixel
sums' checksum were recorded (version 1) is checked by the shards' SHA-256 and by reading
pixel_sums.npz, and says so in one line. Exit 2: RECORDS_DIR is not a folder, or its
manifest.json is not a manifest (not JSON, say).
"""

import glob
import os
import zipfile
import zlib

import numpy as np

from input import records
from input import schema
from input import shards
from launch import entry
from launch import host


def main(argv):
    records_dir = argv[1]
    if not os.path.isdir(records_dir):
        raise entry.UserError(f"{records_dir}: no such folder")
    host.configure_threads()
    manifest = records.read_manifest(records_dir)
    if manifest is not None and "pixel_sums_sha256" not in manifest:
        print(f"{os.path.join(records_dir, schema.MANIFEST)}: version {manifest.get('version')}, "
              f"written before shard sizes and the pixel sums' checksum were recorded: checked "
              f"by the shards' checksums and by reading {schema.PIXEL_SUMS}")
    differences = check(records_dir, manifest)
    for difference in differences:
        print(difference)
    print(f"{len(differences)} difference(s)" if differences else "all shards agree")
    return 1 if differences else 0


def verify(records_dir):
    """A list of human-readable differences between the folder and its manifest (empty: ok).

    Raises:
      entry.UserError: manifest.json is not a manifest.
    """
    return check(records_dir, records.read_manifest(records_dir))


def check(records_dir, manifest):
    """The differences between the folder and `manifest` (None: it has no manifest)."""
    if manifest is None:
        return [f"{os.path.join(records_dir, schema.MANIFEST)}: missing (not a records folder, "
                f"or its build did not finish)"]
    expected = {shard["file"]: shard for split in manifest["splits"].values()
                for shard in split["shards"]}
    present = {os.path.basename(p) for p in glob.glob(os.path.join(records_dir, "*.tfrecord"))}
    differences = [f"{name}: not in the manifest" for name in sorted(present - set(expected))]
    for name, shard in sorted(expected.items()):
        if name not in present:
            differences.append(f"{name}: missing")
            continue
        differences += _check_shard(os.path.join(records_dir, name), shard,
                                    len(manifest["class_names"]))
    return differences + _check_pixel_sums(records_dir, manifest)


def _check_shard(path, shard, num_classes):
    import tensorflow as tf

    name = os.path.basename(path)
    found = []
    size = os.path.getsize(path)
    if "bytes" in shard and size != shard["bytes"]:
        found.append(f"{name}: {size} bytes, the manifest says {shard['bytes']}")
    if shards.file_sha256(path) != shard["sha256"]:
        found.append(f"{name}: checksum differs from the manifest")
    class_counts = [0] * num_classes
    try:
        for serialized in tf.data.TFRecordDataset(path):  # raises on a bad CRC
            label = int(schema.parse_label(serialized))
            if not 0 <= label < num_classes:
                found.append(f"{name}: a record has label {label}, outside 0..{num_classes - 1}")
                continue
            class_counts[label] += 1
    except tf.errors.DataLossError as error:
        return found + [f"{name}: corrupt record after {sum(class_counts)} records: "
                        f"{error.message.splitlines()[0]}"]
    if sum(class_counts) != shard["examples"]:
        found.append(f"{name}: {sum(class_counts)} records, the manifest says {shard['examples']}")
    elif class_counts != shard["class_counts"]:
        found.append(f"{name}: class counts {class_counts}, the manifest says "
                     f"{shard['class_counts']}")
    return found


def _check_pixel_sums(records_dir, manifest):
    """pixel_sums.npz (the mean image's source) present, unchanged, and one readable
    H x W x 3 sum per split."""
    name = manifest.get("pixel_sums", schema.PIXEL_SUMS)
    path = os.path.join(records_dir, name)
    if not os.path.isfile(path):
        return [f"{name}: missing"]
    if "pixel_sums_sha256" in manifest and (shards.file_sha256(path) !=
                                            manifest["pixel_sums_sha256"]):
        return [f"{name}: checksum differs from the manifest"]
    size = manifest.get("settings", {}).get("image_size")
    try:
        with np.load(path) as sums:
            shapes = {split: sums[split].shape for split in sums.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # damaged
        return [f"{name}: unreadable ({type(error).__name__}: {error})"]
    found = [f"{name}: no sum of split {split}" for split in sorted(manifest["splits"])
             if split not in shapes]
    found += [f"{name}: the sum of {split} is {list(shape)}, not {[size, size, 3]}"
              for split, shape in sorted(shapes.items())
              if size is not None and shape != (size, size, 3)]
    return found


if __name__ == "__main__":
    entry.run(main, positional="RECORDS_DIR")
