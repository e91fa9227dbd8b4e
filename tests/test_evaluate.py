"""trainer.evaluate on a trained checkpoint: the training's own evaluation, any split, any
strategy, each example once; clear errors for a folder or split that is not there."""

import json

import pytest

from conftest import TINY_CROP_SIZE, TINY_RECORD_SIZE, assert_error_line, json_lines, run, train

TRAIN = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
         "--learning_rate=0.05", "--steps=20", "--deterministic"]


@pytest.fixture(scope="module")
def trained(python, records, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("trained")
    result = train(python, model_dir, records, *TRAIN)
    final_eval = [r for r in json_lines(result.stdout) if "eval/accuracy" in r][-1]
    return model_dir, final_eval


def evaluate(python, model_dir, *flags):
    return run([python, "-m", "trainer.evaluate", f"--model_dir={model_dir}", *flags])


def test_evaluate_reproduces_the_training_evaluation(python, trained):
    model_dir, final_eval = trained
    result = evaluate(python, model_dir)  # records and split from run.json
    assert result.returncode == 0, result.stderr[-3000:]
    report = json_lines(result.stdout)[-1]
    assert report["splits"] == ["fold0"] and report["checkpoint"].endswith("ckpt-20")
    assert report["confusion"] == final_eval["eval/confusion"]
    assert report["accuracy"] == final_eval["eval/accuracy"]
    assert "truth \\ predicted" in result.stdout


@pytest.mark.parametrize("crops", ["1", "10"])
def test_two_replicas_sharing_a_pipeline_count_each_example_once(python, records, trained,
                                                                 crops):
    model_dir, _ = trained
    reports = []
    for strategy in (["--strategy=one_device"], ["--strategy=mirrored", "--logical_cpus=2"]):
        result = evaluate(python, model_dir, f"--records={records}", "--split=fold2",
                          f"--eval_crops={crops}", "--batch_size=6", *strategy)
        assert result.returncode == 0, result.stderr[-3000:]
        reports.append(json_lines(result.stdout)[-1])
    manifest = json.loads((records / "manifest.json").read_text())
    assert reports[0]["examples"] == manifest["splits"]["fold2"]["examples"]
    assert reports[0]["confusion"] == reports[1]["confusion"]


@pytest.fixture(scope="module")
def eight_shards_per_fold(synthetic_tree, tmp_path_factory):
    """The session's records with the build's default 8 shards per fold."""
    from input import build

    out = tmp_path_factory.mktemp("eight_shards")
    build.build(str(synthetic_tree), str(out), workers=2, image_size=TINY_RECORD_SIZE)
    return out


def test_more_horovod_ranks_than_files_count_each_example_once(python, horovodrun, trained,
                                                               eight_shards_per_fold):
    model_dir, final_eval = trained
    manifest = json.loads((eight_shards_per_fold / "manifest.json").read_text())
    assert len(manifest["splits"]["fold0"]["shards"]) == 8
    # 12 ranks on 2 cores: each takes one thread (launch.host sizes them by HOROVOD_LOCAL_SIZE).
    result = run([horovodrun, "--gloo", "-np", "12", "-H", "localhost:12", python, "-m",
                  "trainer.evaluate", f"--model_dir={model_dir}",
                  f"--records={eight_shards_per_fold}", "--batch_size=24"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json_lines(result.stdout)[-1]
    assert report["examples"] == manifest["splits"]["fold0"]["examples"]
    assert report["confusion"] == final_eval["eval/confusion"]  # the same examples, once each
    assert result.stderr.count("8 files of fold0 for 12 input pipelines") == 1


def test_a_folder_without_a_job_is_a_clear_error(python, tmp_path):
    result = evaluate(python, tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path} is not a folder written by trainer.main" in result.stderr


def test_an_unknown_split_is_a_clear_error(python, trained):
    result = evaluate(python, trained[0], "--split=test")
    assert_error_line(result, "split(s) test not in ", "it holds fold0, fold1")
