"""--data=resident (trainer.resident): each replica holds its share of the records on its device
and draws from it the batches the records would give: over an epoch the same examples, crops
inside the image that flip both ways, other examples on each replica, the same batch for the
same step after a restart; evaluation sees every held-out example once; the training loop runs
on it under every strategy (with --xla), and a resumed job ends bitwise where a job never
stopped does; data too large for the memory is refused before any reading."""

import hashlib
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_CROP_SIZE, TINY_RECORD_SIZE, json_lines, multi_worker_environments
from conftest import run, start
from input import images
from input import records as records_lib
from launch import entry
from trainer import data
from trainer import resident
from trainer import strategy

PER_REPLICA = 8
SEED = 3
RESUMED_STEP = 5

# One process of a job: its replicas' batches through the feeds, as the training loop calls them.
FEEDS = """
import hashlib, json, math, sys
import numpy as np
import tensorflow as tf
from trainer import data, loop, recipes, resident, strategy

name, records_dir, model_dir = sys.argv[1:]
backend = strategy.create(name, logical_cpus=2 if name == "mirrored" else 0)
info = data.describe("resident", records_dir, "age", 0, %(crop)d)
size, global_batch = info.records.image_size, %(per_replica)d * backend.num_replicas

def digest(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()

def local(value):  # this process's replicas' values
    return getattr(value, "values", (value,))

def run(feed, steps, first=0):
    @tf.function
    def call(state, step):
        return backend.run(feed.batch, (feed.inputs(state, step),))
    state, out = feed.start(), []
    for step in range(first, first + steps):
        batch = call(state, tf.constant(step, tf.int64))
        out.append([{key: local(value)[i].numpy() for key, value in batch.items()}
                    for i in range(len(local(batch["label"])))])
    return out

whole = resident.train_feed(backend, info, global_batch, %(seed)d, size)  # crops of all the image
held = whole.start()
examples = [int(n) for n in local(held["examples"])]
steps = math.ceil(max(examples) / %(per_replica)d)
full = run(whole, steps)
cropped = run(resident.train_feed(backend, info, global_batch, %(seed)d, %(crop)d), steps)
resumed = run(resident.train_feed(backend, info, global_batch, %(seed)d, %(crop)d), 1,
              first=%(resumed)d)
report = {"replicas": [int(r) for r in local(held["replica"])],
          "devices": [t.device for t in local(held["images"])], "examples": examples,
          "epochs": [], "first": [], "crops_match": True, "offsets": [], "flips": [],
          "resumed_equal": all(np.array_equal(resumed[0][i][k], cropped[%(resumed)d][i][k])
                               for i in range(len(examples)) for k in resumed[0][i])}
for i, count in enumerate(examples):
    epoch = []
    for step in range(steps):
        whole_batch, crop_batch = full[step][i], cropped[step][i]
        for k, label in enumerate(whole_batch["label"]):
            image, flip = whole_batch["image"][k], bool(crop_batch["flip"][k])
            unflipped = image[:, ::-1] if whole_batch["flip"][k] else image
            epoch.append([int(label), digest(unflipped)])
            y, x = crop_batch["crop_offset"][k]
            window = unflipped[y:y + %(crop)d, x:x + %(crop)d]
            expected = window[:, ::-1] if flip else window
            report["crops_match"] &= bool(np.array_equal(crop_batch["image"][k], expected))
            report["crops_match"] &= bool(label == crop_batch["label"][k])
            report["offsets"] += [int(y), int(x)]
            report["flips"].append(flip)
    report["epochs"].append(epoch[:count])
    report["first"].append(digest(full[0][i]["image"]))
for crops in (1, 10):
    feed, eval_steps = resident.eval_feed(backend, info, global_batch, crops, %(crop)d)
    seen = [[int(b["label"][k]), digest(b["image"][k]), b["crop_offset"][k].tolist(),
             b["flip"][k].tolist()]
            for step in run(feed, eval_steps) for b in step for k in np.flatnonzero(b["mask"])]
    report[f"eval{crops}"] = {"steps": eval_steps, "seen": seen}
# Then the training loop on the same backend, under XLA: one call of 2 steps, a 10-crop
# evaluation.
config = loop.TrainConfig(model_dir, records_dir, recipes.resolve("paper", learning_rate=0.05),
                          model="tiny", data="resident", crop_size=%(crop)d, steps=2,
                          eval_crops=10, global_batch_size=global_batch, steps_per_call=2,
                          xla=True)
summary = loop.train(config, backend, info)
report["trained"] = {"step": summary["step"], "eval_examples": summary["eval"]["examples"]}
print(json.dumps(report))
""" % {"crop": TINY_CROP_SIZE, "per_replica": PER_REPLICA, "seed": SEED,
       "resumed": RESUMED_STEP}


def digest(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def expected_examples(records_dir):
    """(training multiset, 1-crop multiset, 10-crop multiset) read from the records directly."""
    records = records_lib.load(str(records_dir))
    train_splits, eval_splits = records.protocol_splits(0)

    def parsed(splits):
        dataset = tf.data.TFRecordDataset(records.files(records.shards(splits)))
        return [records.parse(serialized) for serialized in dataset]

    train = sorted([int(e["label"]), digest(e["image"].numpy())] for e in parsed(train_splits))
    center, ten = [], []
    for example in parsed(eval_splits):
        image, label = example["image"], int(example["label"])
        offset = images.center_offset(image, TINY_CROP_SIZE)
        window = images.crop(image, offset, TINY_CROP_SIZE).numpy()
        center.append([label, digest(window), offset.numpy().tolist(), False])
        windows, offsets, flips = images.ten_crops(image, TINY_CROP_SIZE)
        ten.append([label, digest(windows.numpy()), offsets.numpy().tolist(),
                    flips.numpy().tolist()])
    return train, sorted(center), sorted(ten)


def reports_of(output):
    """The script's report of each process (the loop's own JSON lines left out)."""
    return [line for line in json_lines(output) if "epochs" in line]


def check_job(reports, records_dir, devices):
    """What every strategy must give: see the module's text."""
    train, center, ten = expected_examples(records_dir)
    assert sorted(r for report in reports for r in report["replicas"]) == [0, 1]
    assert [d for report in reports for d in report["devices"]] == devices
    epochs = [e for report in reports for e in report["epochs"]]
    assert sorted(example for epoch in epochs for example in epoch) == train
    assert all(len({digest_ for _, digest_ in epoch}) == len(epoch) for epoch in epochs)
    firsts = [f for report in reports for f in report["first"]]
    assert len(set(firsts)) == len(firsts)  # each replica its own examples
    for report in reports:
        assert report["crops_match"] and report["resumed_equal"]
        assert min(report["offsets"]) == 0
        assert max(report["offsets"]) == TINY_RECORD_SIZE - TINY_CROP_SIZE
        assert 0.25 < np.mean(report["flips"]) < 0.75
    records = records_lib.load(str(records_dir))
    largest = max(records.pipeline_share(records.protocol_splits(0)[1], 2, r).examples
                  for r in (0, 1))
    for crops, expected in (("eval1", center), ("eval10", ten)):
        assert sorted(s for report in reports for s in report[crops]["seen"]) == expected
        assert {report[crops]["steps"] for report in reports} == {
            math.ceil(largest / PER_REPLICA)}
    assert [report["trained"] for report in reports] == [
        {"step": 2, "eval_examples": len(center)}] * len(reports)


def test_mirrored_replicas_hold_their_shares_on_their_devices_and_draw_records_batches(
        python, records, tmp_path):
    result = run([python, "-c", FEEDS, "mirrored", records, tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    check_job(reports_of(result.stdout), records,
              [f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in (0, 1)])


def test_horovod_ranks_hold_their_shares_of_raw_records_one_file_shared_record_by_record(
        python, horovodrun, raw_records, tmp_path):
    result = run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, "-c", FEEDS,
                  "horovod", raw_records, tmp_path])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = sorted(reports_of(result.stdout), key=lambda r: r["replicas"])
    check_job(reports, raw_records, ["/job:localhost/replica:0/task:0/device:CPU:0"] * 2)


def test_multi_worker_processes_hold_their_shares(python, records, tmp_path):
    workers = [start([python, "-c", FEEDS, "multi_worker", records, tmp_path], env)
               for env in multi_worker_environments(2)]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    assert all(w.returncode == 0 for w in workers), [err[-3000:] for _, err in outputs]
    reports = [report for out, _ in outputs for report in reports_of(out)]
    check_job(reports, records, [f"/job:worker/replica:0/task:{i}/device:CPU:0" for i in (0, 1)])


RESUMABLE = ["--data=resident", "--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
             "--learning_rate=0.05", "--strategy=mirrored", "--logical_cpus=2", "--steps=8",
             "--checkpoint_every=4", "--log_every=1", "--steps_per_call=2", "--eval_crops=10",
             "--deterministic", "--dropout=0.3", "--seed=5"]


def checkpoint_values(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_a_resumed_job_ends_with_the_weights_of_a_job_never_stopped(python, records, tmp_path):
    command = [python, "-m", "trainer.main", f"--model_dir={tmp_path}", f"--records={records}",
               *RESUMABLE]
    whole = run(command)
    assert whole.returncode == 0, whole.stderr[-3000:]
    never_stopped = checkpoint_values(tmp_path)
    # What a job killed after its checkpoint of step 4 leaves: the index names that one.
    (tmp_path / "checkpoints/checkpoint").write_text(
        'model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = json_lines(resumed.stdout)
    assert [r["step"] for r in lines if r.get("event") == "restored"] == [4]
    assert [r["step"] for r in lines if "train/loss" in r] == [5, 6, 7, 8]
    resumed_values = checkpoint_values(tmp_path)
    assert never_stopped.keys() == resumed_values.keys()
    for name, value in never_stopped.items():
        assert np.array_equal(value, resumed_values[name]), name
    evaluations = [{key: value for key, value in line.items() if key.startswith("eval/")}
                   for job in (whole, resumed)
                   for line in json_lines(job.stdout) if "eval/examples" in line]
    assert len(evaluations) == 2 and evaluations[0] == evaluations[1]
    info = data.describe("resident", str(records), "age", 0, TINY_CROP_SIZE)
    assert evaluations[0]["eval/examples"] == info.eval_examples


@pytest.fixture
def one_device():
    return strategy.create("one_device")


def test_data_too_large_for_the_memory_is_refused_before_any_reading(records, one_device,
                                                                     monkeypatch):
    info = data.describe("records", str(records), "age", 0, TINY_CROP_SIZE)
    monkeypatch.setattr(resident, "_host_available_bytes", lambda: 10**6)
    monkeypatch.setattr(resident, "_decode", lambda *args: pytest.fail("read the records"))
    with pytest.raises(entry.UserError) as refused:
        resident.train_feed(one_device, info, 16, SEED, TINY_CROP_SIZE)
    # One replica on the CPU: every image once, and one share twice while it is batched.
    examples = info.train_examples + info.eval_examples
    needed = 2 * examples * (TINY_RECORD_SIZE ** 2 * 3 + resident.LABEL_BYTES)
    message = str(refused.value)
    for needle in (str(records), f"needs {needed / 1e9:.2f} GB of host memory",
                   "0.00 GB is free", f"{examples} images of 64x64", "--cache",
                   "--data=records", "--image_size", "input.build"):
        assert needle in message, message
    resident.check_fits(one_device, info, info.eval_splits, available_bytes=needed)  # fits


def test_a_containers_memory_limit_is_the_memory_available(tmp_path):
    (tmp_path / "memory.max").write_text("3000000\n")
    (tmp_path / "memory.current").write_text("1000000\n")
    assert resident._host_available_bytes(str(tmp_path)) == 2_000_000
    (tmp_path / "memory.max").write_text("max\n")
    assert resident._host_available_bytes(str(tmp_path)) > 2_000_000  # the host's MemAvailable
