"""The paper's 5-fold protocol: train on four folds, test on the fifth, five times, and print
exact and 1-off accuracy (center crop and 10-crop over-sampling) as mean +- std beside the
published figures.

  python -m trainer.cross_validate --records=runs/adience/records --model_dir=runs/cv \\
      --recipe=paper
  horovodrun -np 4 python -m trainer.cross_validate --records=... --model_dir=... --folds=0,1
  python -m trainer.cross_validate ... --time_steps=20   # first: the expected time, measured
  python -m trainer.cross_validate ... --bundle=improved # the fastest recipe the races found

Fold k trains in MODEL_DIR/fold<k>; a rerun resumes an unfinished fold and re-evaluates the
finished ones. A stop signal ends the whole run after saving the current fold (exit 0); one
that arrives while a finished fold is evaluated lets the evaluation end, then stops the run at
the next fold's first step (under one process and Horovod; `multi_worker` may not see it).
"""

import json
import os

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from input import adience
from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer import cli
from trainer import evaluation
from trainer import loop
from trainer import strategy
from trainer.bench import estimate

cli.define_job_flags()
cli.define_training_flags()
flags.DEFINE_list("folds", [str(fold) for fold in range(adience.FOLDS)],
                  "The held-out folds to run.")


def _check_folds(folds):
    for fold in folds or ["(none)"]:
        if not (fold.isdigit() and int(fold) < adience.FOLDS):
            raise flags.ValidationError(
                f"--folds={','.join(folds)}: held-out fold {fold} does not exist (Adience's "
                f"folds are 0..{adience.FOLDS - 1}, separated by commas)")
    return True


flags.register_validator("folds", _check_folds)
flags.DEFINE_integer("time_steps", 0, "Before the first fold, time this many of its training "
                     "steps (the first 2 untimed) and print the expected time of the folds on "
                     "this machine; 0: no estimate.", lower_bound=0)
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS
RESULTS_FILE = "cross_validation.json"
CROPS = (1, 10)
# Levi & Hassner (2015), Tables 3 and 4: (mean, std) in percent; the 1-off of gender is n/a.
PUBLISHED = {
    "age": {1: {"accuracy": (49.5, 4.4), "accuracy_1off": (84.6, 1.7)},
            10: {"accuracy": (50.7, 5.1), "accuracy_1off": (84.7, 2.2)}},
    "gender": {1: {"accuracy": (85.9, 1.4)}, 10: {"accuracy": (86.8, 1.4)}},
}


def main(argv):
    del argv
    threads = cli.start_process()
    folds = [int(fold) for fold in FLAGS.folds]
    configs = [cli.train_config(input_threads=threads["intra_op"], held_out_fold=fold,
                                model_dir=os.path.join(FLAGS.model_dir, f"fold{fold}"))
               for fold in folds]
    # Every fold's data checked before the first one trains.
    infos = [loop.describe_data(config) for config in configs]
    backend = strategy.create(FLAGS.strategy, logical_cpus=FLAGS.logical_cpus,
                              gradient_compression=FLAGS.gradient_compression)
    if FLAGS.time_steps:
        estimate.cross_validation(configs, infos, backend, FLAGS.time_steps, CROPS)
    results = []
    for config, info in zip(configs, infos):
        keras.backend.clear_session()  # the previous fold's model (or the timed one) is gone
        outcome = loop.train(config, backend, info)
        if outcome["stopped_by"]:
            return 0  # rerun to resume
        results.append(_fold_result(backend, config, threads["intra_op"]))
    if backend.is_chief:
        with open(os.path.join(FLAGS.model_dir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
        print(table(results, configs[0].task, FLAGS.bundle), flush=True)
    return 0


def _fold_result(backend, config, threads):
    """The fold's final checkpoint evaluated with the center crop and with 10 crops."""
    run_info = checkpoint_lib.read_run(config.model_dir)
    info = evaluation.held_out(run_info, config.records)
    path = tf.train.latest_checkpoint(checkpoint_lib.checkpoint_dir(config.model_dir))
    result = {"fold": config.held_out_fold, "examples": info.eval_examples, "checkpoint": path}
    # The fold's per-replica batch: it fit in memory with gradients.
    batch = run_info["per_replica_batch_size"] * backend.num_replicas
    for crops in CROPS:
        summary = evaluation.evaluate_checkpoint(backend, run_info, info, path, batch, crops,
                                                 threads)
        result[crops] = {key: summary[key] for key in ("accuracy", "accuracy_1off")}
    return result


def load_results(path):
    """The folds' results as written to RESULTS_FILE, crop counts back to numbers."""
    with open(path) as results:
        return [{int(key) if key.isdigit() else key: value for key, value in fold.items()}
                for fold in json.load(results)]


def table(results, task, bundle=None):
    """The paper's table: per fold, then mean +- std (sample std over folds) beside the paper;
    `bundle`: the name of the bundle the folds trained with, if one."""
    lines = [f"{'fold':>6} {'examples':>9} {'exact':>8} {'1-off':>8} {'exact-10':>9} "
             f"{'1-off-10':>9}"]
    for r in results:
        lines.append(f"{r['fold']:>6} {r['examples']:>9} {_pct(r[1]['accuracy']):>8} "
                     f"{_pct(r[1]['accuracy_1off']):>8} {_pct(r[10]['accuracy']):>9} "
                     f"{_pct(r[10]['accuracy_1off']):>9}")
    lines.append("")
    ours = f"ours, the {bundle} bundle" if bundle else "ours"
    lines.append(f"{task}, {len(results)} folds: {ours} (mean +- std)  vs  Levi & Hassner 2015")
    for crops, name in ((1, "single crop"), (10, "over-sample")):
        for metric, label in (("accuracy", "exact"), ("accuracy_1off", "1-off")):
            values = [100 * r[crops][metric] for r in results]
            published = PUBLISHED[task][crops].get(metric)
            paper = f"{published[0]:.1f} +- {published[1]:.1f}" if published else "n/a"
            lines.append(f"  {name:<12} {label:<6} {_mean_std(values):>15}   {paper:>13}")
    return "\n".join(lines)


def _mean_std(values):
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} +- {std:.1f}"


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.1f}"


if __name__ == "__main__":
    flags.mark_flags_as_required(["model_dir", "records"])
    entry.run(main)
