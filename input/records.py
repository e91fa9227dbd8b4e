"""A records folder written by input.build, read and checked once: `records.load(path)`.

The trainer opens the folder at start and hands the object down (data description, input
pipelines, evaluation): the manifest is parsed once, and every shard is there with the size the
manifest gives before any work starts, so a truncated or missing shard is refused up front,
named, instead of failing a job at its first step. Content (checksums, every record's CRC) is
`python -m input.verify`'s job: it reads every byte, which a training start should not.
"""

import dataclasses
import functools
import json
import os
import zipfile

import numpy as np

from input import schema
from input import shards
from launch import entry

VERIFY = "python -m input.verify"


@dataclasses.dataclass(frozen=True)
class PipelineShare:
    """One input pipeline's part of some splits: every `stride`-th record, from the
    `offset`-th, of the joint stream of `shards` (manifest entries, read in this order);
    stride 1 keeps them all. `examples` is how many records that is."""
    shards: tuple
    stride: int
    offset: int
    examples: int

    @property
    def by_example(self):
        """Whether the pipeline shares its files with the others and keeps only its records."""
        return self.stride > 1


@dataclasses.dataclass(frozen=True)
class Records:
    path: str
    manifest: dict

    @property
    def settings(self):
        return self.manifest["settings"]

    @property
    def class_names(self):
        return tuple(self.manifest["class_names"])

    @property
    def image_size(self):
        return self.settings["image_size"]

    @property
    def split_names(self):
        return sorted(self.manifest["splits"])

    def shards(self, split_names):
        """The manifest's shard entries of these splits, sorted by file name."""
        unknown = sorted(set(split_names) - set(self.manifest["splits"]))
        if unknown:
            raise entry.UserError(f"split(s) {', '.join(unknown)} not in {self.path}; it holds "
                                  f"{', '.join(self.split_names)}")
        return sorted((shard for name in split_names
                       for shard in self.manifest["splits"][name]["shards"]),
                      key=lambda shard: shard["file"])

    def files(self, shards):
        return [os.path.join(self.path, shard["file"]) for shard in shards]

    def examples(self, split_names):
        return sum(shard["examples"] for shard in self.shards(split_names))

    def pipeline_share(self, split_names, num_pipelines, pipeline_index):
        """What one of `num_pipelines` input pipelines reads of these splits (a PipelineShare).

        With at least as many files as pipelines, every num_pipelines-th file of the sorted
        list, before any shuffle, so that pipelines never read the same file. With fewer files,
        every pipeline reads them all and keeps every num_pipelines-th record of their joint
        stream (each record is read num_pipelines times). Either way the shares are disjoint,
        cover every record, and their sizes are known from the manifest before any reading.
        """
        all_shards = self.shards(split_names)
        if len(all_shards) >= num_pipelines:
            mine = all_shards[pipeline_index::num_pipelines]
            return PipelineShare(tuple(mine), 1, 0, sum(s["examples"] for s in mine))
        total = sum(s["examples"] for s in all_shards)
        kept = len(range(pipeline_index, total, num_pipelines))
        return PipelineShare(tuple(all_shards), num_pipelines, pipeline_index, kept)

    def protocol_splits(self, held_out_fold=0):
        """(training splits, evaluation splits).

        The folds protocol trains on four folds and evaluates on the held-out one (the paper's
        5-fold cross-validation); the 60/20/20 split trains on "train" and evaluates on
        "validation" ("test" is kept for the final report).
        """
        if self.settings["protocol"] == "split":
            return ["train"], ["validation"]
        held_out = f"fold{held_out_fold}"
        if held_out not in self.split_names:
            raise entry.UserError(f"--held_out_fold={held_out_fold}: {self.path} holds "
                                  f"{', '.join(self.split_names)}")
        return [name for name in self.split_names if name != held_out], [held_out]

    def mean_image(self, split_names):
        """The per-pixel mean (H x W x 3 float32) of these splits' images, from the build's
        sums."""
        self.shards(split_names)  # names them if unknown
        path = os.path.join(self.path, self.manifest["pixel_sums"])
        try:
            with np.load(path) as sums:
                total = sum(sums[name] for name in split_names)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise entry.UserError(f"{path}: unreadable ({error}); run {VERIFY} "
                                  f"{self.path}") from error
        return (total / self.examples(split_names)).astype(np.float32)

    @functools.cached_property
    def parse(self):
        """The record parser for this folder's image format and size."""
        return functools.partial(schema.parse, image_format=self.settings["format"],
                                 size=self.image_size)


def load(path):
    """The records folder at `path`, its manifest parsed and its shards' sizes checked; a
    clear UserError naming the file otherwise."""
    manifest = read_manifest(path)
    if manifest is None:
        raise entry.UserError(f"{os.path.join(path, schema.MANIFEST)} not found: {path} is not "
                              f"a records folder built by input.build (or its build did not "
                              f"finish)")
    records = Records(path, manifest)
    _check_files(records)
    return records


def read_manifest(records_dir):
    """The folder's manifest, None if it has none; a UserError naming it if it is not one."""
    path = os.path.join(records_dir, schema.MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as error:
        raise entry.UserError(f"{path}: not JSON (line {error.lineno}, column {error.colno}: "
                              f"{error.msg})") from None
    except UnicodeDecodeError:
        raise entry.UserError(f"{path}: not JSON (not text)") from None
    if not isinstance(manifest, dict) or not {"splits", "class_names"} <= manifest.keys():
        raise entry.UserError(f"{path}: not a manifest of input.build (no splits or "
                              f"class_names)")
    return manifest


def _check_files(records):
    """Every shard of the manifest present with its recorded size, and the mean image's sums
    with their checksum. Manifests written before these were recorded (version 1) have
    neither: their shards are checked for presence only."""
    for shard in records.shards(records.split_names):
        path = os.path.join(records.path, shard["file"])
        if not os.path.isfile(path):
            raise entry.UserError(f"{path}: missing (the manifest lists it); run {VERIFY} "
                                  f"{records.path}")
        size = os.path.getsize(path)
        if "bytes" in shard and size != shard["bytes"]:
            raise entry.UserError(f"{path}: {size} bytes, the manifest says {shard['bytes']} "
                                  f"(truncated or changed); run {VERIFY} {records.path}")
    sums = os.path.join(records.path, records.manifest["pixel_sums"])
    expected = records.manifest.get("pixel_sums_sha256")
    if expected and (not os.path.isfile(sums) or shards.file_sha256(sums) != expected):
        raise entry.UserError(f"{sums}: missing or damaged (its checksum differs from the "
                              f"manifest); run {VERIFY} {records.path}")
