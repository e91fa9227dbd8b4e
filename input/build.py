"""Builds sharded TFRecords and a manifest from an Adience tree (the real download or ours).

  python -m input.build --adience_dir ~/data/adience --out_dir ~/data/records
  python -m input.build --adience_dir /tmp/synthetic --out_dir /tmp/records --protocol=split \
      --format=raw --workers=2

Reads the fold files (`input.adience`), splits by subject (`input.splits`), puts each split's
examples in an order drawn from --seed (as TensorFlow's own ImageNet build script does: the
fold files list faces album by album, and a training shuffle buffer far smaller than a split
could not undo that), and writes `--shards` files per split with `--workers` processes
(`input.shards`). The same settings and seed give the same bytes. A re-run with the same
settings skips the shards already complete, so an interrupted build is resumed, not restarted.

--out_dir is a new or empty folder, or an earlier build of the same settings; the build deletes
nothing in it but its own temporaries (one of its output names plus `.tmp-<digits>` or
`.partial-<digits>`, left by a killed run).

Exit codes: 0 built; 2 a user's mistake, found before any work (a flag, a missing fold file, an
--out_dir that holds other settings or others' files, is read-only or not a folder; with
--strict, any bad row or image); 1 a fault during the work, such as a full disk: one line names
the file and the cause, what was half-written is removed, complete shards are kept for a re-run.
"""

import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
import threading
import time

from absl import flags

from input import adience
from input import images
from input import schema
from input import shards
from input import splits
from launch import entry
from launch import host

MANIFEST_VERSION = 2  # 2: each shard's "bytes" and the manifest's "pixel_sums_sha256"
# settings["example_order"]: each split's examples shuffled with settings["seed"]. Builds
# that kept the fold files' order have no such key, so a re-run of one is refused, not mixed.
EXAMPLE_ORDER = "shuffled by seed"
SHARDS_PER_SPLIT = 8  # enough files for 8 input pipelines reading one held-out fold
JPEG_QUALITY = 95
PROGRESS_SECONDS = 2.0
PROBLEMS_SHOWN = 10
SETTINGS = "settings.json"  # in the parts folder: what a resumed build must match
FOREIGN_SHOWN = 5  # files named when --out_dir holds files the build did not write
# A temporary of this build: an output name, then ".tmp-" or ".partial-" and a process id.
_LEFTOVER = re.compile(r"(?P<name>.+)\.(?:tmp|partial)-[0-9]+")


def _define_flags():
    # Defined only when run as a program: other entry points (the benchmark, the trainer's
    # tests) import build() and may define flags of the same names.
    flags.DEFINE_string("adience_dir", None, "Folder of fold_N_data.txt and aligned/ or faces/.")
    flags.DEFINE_string("out_dir", None, "Where the shards and manifest.json are written: a new "
                        "or empty folder, or an earlier build of the same settings.")
    flags.DEFINE_enum("task", "age", adience.TASKS, "Which label the records carry.")
    flags.DEFINE_enum("age_labels", "paper", adience.AGE_RULES,
                      "paper: the eight exact age strings only; nearest: also map other ages.")
    flags.DEFINE_enum("layout", "aligned", adience.LAYOUTS, "Which image layout to read.")
    flags.DEFINE_enum("protocol", "folds", splits.PROTOCOLS,
                      "folds: the paper's 5 folds; split: 60/20/20 by user_id, seeded.")
    flags.DEFINE_integer("seed", 0, "Seed of the examples' order in each split's files (both "
                         "protocols) and of the 60/20/20 split; kept in the manifest's "
                         "settings.")
    flags.DEFINE_integer("shards", SHARDS_PER_SPLIT, "Shard files per split.", lower_bound=1)
    flags.DEFINE_integer("workers", host.available_cores(), "Writer processes.", lower_bound=1)
    flags.DEFINE_enum("format", "jpeg", schema.FORMATS, "jpeg, or raw decoded pixels (no decode).")
    flags.DEFINE_integer("image_size", images.RECORD_SIZE, "Side of the stored square images.",
                         lower_bound=1)
    flags.DEFINE_integer("jpeg_quality", JPEG_QUALITY, "JPEG quality of the stored images.",
                         lower_bound=1, upper_bound=100)
    flags.DEFINE_bool("strict", False, "Fail on the first bad line, label or image.")
    flags.mark_flags_as_required(["adience_dir", "out_dir"])


class BuildError(entry.UserError):
    """Bad input or a records folder that cannot be used: the message says which."""


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    build(adience_dir=FLAGS.adience_dir, out_dir=FLAGS.out_dir, task=FLAGS.task,
          age_rule=FLAGS.age_labels, layout=FLAGS.layout, protocol=FLAGS.protocol,
          seed=FLAGS.seed, shards_per_split=FLAGS.shards, workers=FLAGS.workers,
          image_format=FLAGS.format, image_size=FLAGS.image_size,
          jpeg_quality=FLAGS.jpeg_quality, strict=FLAGS.strict)
    return 0


def build(adience_dir, out_dir, task="age", age_rule="paper", layout="aligned",
          protocol="folds", seed=0, shards_per_split=SHARDS_PER_SPLIT, workers=1,
          image_format="jpeg", image_size=images.RECORD_SIZE, jpeg_quality=JPEG_QUALITY,
          strict=False):
    """Builds (or completes) the records folder; returns the manifest.

    Raises:
      entry.UserError (BuildError): a user's mistake, before any work (see the module's exit
        codes).
      entry.Failure: a fault during the work, e.g. a full disk, after removing what it
        half-wrote.
    """
    split_examples, report = _read_splits(adience_dir, task, age_rule, layout, strict,
                                          protocol, seed)
    settings = {"task": task, "age_labels": age_rule, "layout": layout, "protocol": protocol,
                "seed": seed, "example_order": EXAMPLE_ORDER,
                "shards_per_split": shards_per_split, "format": image_format,
                "image_size": image_size, "jpeg_quality": jpeg_quality,
                "source": os.path.abspath(adience_dir), "source_sha256": _fold_files_sha256(
                    adience_dir)}
    class_names = adience.AGE_GROUP_NAMES if task == "age" else adience.GENDER_NAMES
    jobs = shards.plan(split_examples, shards_per_split, out_dir=out_dir,
                       adience_dir=adience_dir, task=task, num_classes=len(class_names),
                       image_format=image_format, image_size=image_size,
                       jpeg_quality=jpeg_quality, strict=strict)
    names = _output_names(jobs)
    _prepare(out_dir, settings, names)
    started = time.time()
    try:
        results = _run(jobs, workers)
        pixel_sums_sha256 = _write_pixel_sums(out_dir, results)
        manifest = _manifest(settings, class_names, results, report, pixel_sums_sha256)
        _write_json(os.path.join(out_dir, schema.MANIFEST), manifest)
    except shards.BadImage as error:
        raise BuildError(f"{error} (--strict)") from None
    except OSError as error:
        raise entry.Failure(entry.path_error(error, "the build stopped; complete shards are "
                                                    "kept and a re-run resumes")) from None
    finally:  # after a failure, what the workers stopped mid-shard left (none after success)
        with contextlib.suppress(OSError):  # never hide the error that stopped the build
            _remove_leftovers(out_dir, names)
    _print_summary(manifest, results, report, time.time() - started)
    return manifest


def _read_splits(adience_dir, task, age_rule, layout, strict, protocol, seed):
    """(examples by split, report) of the fold files; a BuildError naming what is wrong."""
    if not os.path.isdir(adience_dir):
        raise BuildError(f"--adience_dir={adience_dir}: no such folder")
    try:
        examples, report = adience.read_examples(adience_dir, task=task, age_rule=age_rule,
                                                 layout=layout, strict=strict)
        if not examples:
            first = f"; first problem: {report.problems[0]}" if report.problems else ""
            raise BuildError(f"no usable example in {adience_dir} (task {task}, {age_rule} age "
                             f"labels, {layout} layout): {report.summary_lines()[0]}{first}")
        return _shuffled(splits.make_splits(examples, protocol, seed), seed), report
    except (FileNotFoundError, ValueError) as error:  # a fold file, a subject in two splits;
        raise BuildError(str(error)) from None  # with --strict, the first bad row


def _shuffled(split_examples, seed):
    """Each split's examples in an order drawn from (seed, split name): neither albums nor
    labels follow each other in the files, and a split's order does not depend on the others."""
    return {name: random.Random(f"{seed}/{name}").sample(examples, len(examples))
            for name, examples in split_examples.items()}


def _output_names(jobs):
    """Every name this build writes, in --out_dir (shards, manifest, pixel sums) or in its
    parts folder (settings, each shard's stats and pixel sum)."""
    names = {schema.MANIFEST, schema.PIXEL_SUMS, SETTINGS}
    for job in jobs:
        names.add(job.name)
        names.update(shards.part_names(job.name))
    return names


def _prepare(out_dir, settings, names):
    """Checks --out_dir before any work, then removes what a killed build of it left.

    Refuses (a UserError) a folder that is a file or under one, cannot be written, was built
    with other settings, or holds files this build would not write and no build of the same
    settings.
    """
    entry.check_writable_dir(out_dir, "--out_dir")
    parts = os.path.join(out_dir, shards.PARTS)
    settings_file = os.path.join(parts, SETTINGS)
    try:
        if os.path.exists(settings_file):
            _check_same_settings(out_dir, settings_file, settings)
        else:
            _refuse_others_files(out_dir, names)
        os.makedirs(parts, exist_ok=True)
        _write_json(settings_file, settings)
        _remove_leftovers(out_dir, names)
    except OSError as error:
        raise BuildError(entry.path_error(error, "--out_dir")) from None


def _check_same_settings(out_dir, settings_file, settings):
    with open(settings_file) as f:
        previous = json.load(f)
    changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in
                            changed.items())
        raise BuildError(f"{out_dir} holds records built with other settings ({details}); "
                         f"use another --out_dir or delete it")


def _refuse_others_files(out_dir, names):
    """Refuses an --out_dir holding files that are neither this build's nor its leftovers."""
    if not os.path.isdir(out_dir):
        return
    others = sorted(name for name in os.listdir(out_dir)
                    if name != shards.PARTS and not _is_ours(name, names))
    if others:
        shown = ", ".join(others[:FOREIGN_SHOWN]) + (
            f" and {len(others) - FOREIGN_SHOWN} more" if len(others) > FOREIGN_SHOWN else "")
        raise BuildError(f"--out_dir={out_dir} holds files input.build did not write ({shown}) "
                         f"and no build of these settings: give a new or empty folder")


def _is_ours(name, names):
    leftover = _LEFTOVER.fullmatch(name)
    return name in names or bool(leftover and leftover["name"] in names)


def _remove_leftovers(out_dir, names):
    """Removes this build's temporaries in --out_dir and its parts folder, whatever process
    left them (a killed run, a worker stopped mid-shard); nothing else, ever."""
    for folder in (out_dir, os.path.join(out_dir, shards.PARTS)):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name not in names and _is_ours(name, names):
                os.remove(os.path.join(folder, name))


def _run(jobs, workers):
    """Writes the shards with `workers` processes, showing progress; returns their stats."""
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive a fork
    progress = context.Value("l", 0)
    todo = sum(len(job.examples) for job in jobs
               if not os.path.exists(os.path.join(job.out_dir, job.name)))
    done = threading.Event()
    reporter = threading.Thread(target=_report_progress, args=(progress, todo, done), daemon=True)
    reporter.start()
    try:
        with context.Pool(max(1, min(workers, len(jobs))), initializer=_init_worker,
                          initargs=(progress,)) as pool:
            return list(pool.imap_unordered(_write_shard, jobs))
    finally:
        done.set()
        reporter.join()


_worker_progress = None


def _init_worker(progress):
    global _worker_progress
    _worker_progress = progress
    # One thread per worker: --workers is the number of cores the build uses, and processes
    # scale better than threads here (JPEG decoding is single-threaded anyway).
    host.configure_threads(processes=host.available_cores())


def _write_shard(job):
    return shards.write(job, _worker_progress)


def _report_progress(progress, todo, done):
    started = time.time()
    while not done.wait(PROGRESS_SECONDS):
        count, elapsed = progress.value, time.time() - started
        rate = count / elapsed if elapsed else 0.0
        eta = (todo - count) / rate if rate else float("nan")
        print(f"[build] {count}/{todo} images, {rate:.0f}/s, ETA {eta:.0f} s", file=sys.stderr,
              flush=True)


def _manifest(settings, class_names, results, report, pixel_sums_sha256):
    manifest_splits = {}
    for result in sorted(results, key=lambda r: r["file"]):
        summary = manifest_splits.setdefault(result["split"], {
            "examples": 0, "class_counts": [0] * len(class_names), "users": 0, "shards": []})
        summary["examples"] += result["examples"]
        summary["class_counts"] = [a + b for a, b in zip(summary["class_counts"],
                                                       result["class_counts"])]
        summary["shards"].append({k: result[k] for k in ("file", "examples", "class_counts",
                                                       "sha256", "bytes")})
    for split, summary in manifest_splits.items():
        summary["users"] = len({u for r in results if r["split"] == split for u in r["users"]})
    bad_images = [p for r in sorted(results, key=lambda r: r["file"]) for p in r["bad_images"]]
    return {
        "version": MANIFEST_VERSION, "settings": settings, "class_names": list(class_names),
        "splits": manifest_splits, "pixel_sums": schema.PIXEL_SUMS,
        "pixel_sums_sha256": pixel_sums_sha256,
        "report": {"rows": report.rows, "kept": report.kept, "duplicates": report.duplicates,
                   "dropped": {f"{what} {string!r}": count
                               for (what, string), count in sorted(report.dropped.items())},
                   "problems": report.problems, "bad_images": bad_images},
    }


def _write_pixel_sums(out_dir, results):
    """Writes each split's pixel sum; returns the file's SHA-256 for the manifest."""
    import numpy as np

    sums = {}
    for result in results:
        pixels = np.load(shards.pixel_sum_path(out_dir, result["file"]))
        sums[result["split"]] = sums.get(result["split"], 0) + pixels
    data = shards.npz_bytes(sums)
    shards.replace_atomically(os.path.join(out_dir, schema.PIXEL_SUMS), lambda f: f.write(data),
                              binary=True)
    return hashlib.sha256(data).hexdigest()


def _write_json(path, value):
    shards.replace_atomically(path, lambda f: json.dump(value, f, indent=1))


def _fold_files_sha256(adience_dir):
    digest = hashlib.sha256()
    for fold in range(adience.FOLDS):
        with open(os.path.join(adience_dir, adience.FOLD_FILE.format(fold)), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _print_summary(manifest, results, report, seconds):
    names = manifest["class_names"]
    written = [r for r in results if not r["skipped"]]
    print(f"{'split':8} {'shards':>6} {'examples':>8} {'users':>5} " +
          " ".join(f"{n:>6}" for n in names))
    for split, summary in sorted(manifest["splits"].items()):
        print(f"{split:8} {len(summary['shards']):6d} {summary['examples']:8d} "
              f"{summary['users']:5d} " + " ".join(f"{c:6d}" for c in summary["class_counts"]))
    images = sum(r["examples"] for r in written)
    print(f"wrote {len(written)} shards ({images} images, {images / max(seconds, 1e-9):.0f}/s), "
          f"skipped {len(results) - len(written)} complete shards, in {seconds:.1f} s")
    for line in report.summary_lines():
        print(line)
    bad = manifest["report"]["bad_images"]
    if bad:
        print(f"{len(bad)} unreadable or corrupt images skipped:")
        for problem in bad[:PROBLEMS_SHOWN]:
            print(f"  {problem}")


if __name__ == "__main__":
    _define_flags()
    entry.run(main)
