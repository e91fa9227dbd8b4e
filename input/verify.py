"""Checks a records folder against its manifest: every shard read, every record's CRC checked.

  python -m input.verify ~/data/records

Reports each file that differs from the manifest by name (missing, extra, checksum, record
count, class counts, a corrupt record) and exits 1 if any does, 0 if all agree.
"""

import glob
import json
import os

from absl import app

from input import schema
from input import shards
from launch import host


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m input.verify RECORDS_DIR")
    host.configure_threads()
    differences = verify(argv[1])
    for difference in differences:
        print(difference)
    print(f"{len(differences)} difference(s)" if differences else "all shards agree")
    return 1 if differences else 0


def verify(records_dir):
    """A list of human-readable differences between the folder and its manifest (empty: ok)."""
    manifest_path = os.path.join(records_dir, schema.MANIFEST)
    if not os.path.exists(manifest_path):
        return [f"{manifest_path}: missing (not a records folder, or its build did not finish)"]
    with open(manifest_path) as f:
        manifest = json.load(f)
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
    return differences


def _check_shard(path, shard, num_classes):
    import tensorflow as tf

    name = os.path.basename(path)
    found = []
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


if __name__ == "__main__":
    app.run(main)
