"""trainer.bench.scaling: the ring all-reduce model against hand-computed figures, and the
all-reduce measured by trainer.bench.allreduce set beside it."""

import json
import math

import pytest

from conftest import json_lines, run
from launch import entry
from trainer.bench import scaling

LEVI_HASSNER = 11_415_048


def test_ring_allreduce_of_levi_hassners_gradients():
    gradient_bytes = LEVI_HASSNER * 4
    assert math.isclose(gradient_bytes / 1e6, 45.66, rel_tol=1e-3)
    seconds = scaling.allreduce_seconds(gradient_bytes, tensors=12, workers=8,
                                        bandwidth_gbit=100, latency=0.0)
    assert math.isclose(seconds, 2 * 7 / 8 * gradient_bytes / 12.5e9)  # 6.4 ms
    assert scaling.allreduce_seconds(gradient_bytes, 12, 1, 100) == 0.0


def test_fp16_halves_the_transfer_and_fusion_cuts_messages():
    gradient_bytes = LEVI_HASSNER * 4
    full = scaling.allreduce_seconds(gradient_bytes, 12, 64, 25, latency=0.0)
    half = scaling.allreduce_seconds(gradient_bytes, 12, 64, 25, fp16=True, latency=0.0)
    assert math.isclose(half, full / 2)
    fused = scaling.allreduce_seconds(1_000, 500, 64, 25, fusion=True)
    unfused = scaling.allreduce_seconds(1_000, 500, 64, 25, fusion=False)
    assert math.isclose(unfused - fused, 2 * 63 * 499 * scaling.LINK_LATENCY_SECONDS)


def test_efficiency_falls_with_more_gpus_and_the_table_shows_each_count():
    text = scaling.table(step_seconds=0.05, parameters=LEVI_HASSNER, tensors=12,
                         bandwidth_gbit=25)
    rows = text.splitlines()[2:]
    assert [int(row.split()[0]) for row in rows] == [8, 16, 64, 256]
    efficiencies = [float(row.split()[2].rstrip("%")) for row in rows]
    assert efficiencies == sorted(efficiencies, reverse=True) and efficiencies[0] < 100
    assert math.isclose(scaling.efficiency(0.05, 0.05), 0.5)


def test_ring_bandwidth_inverts_the_model():
    gradient_bytes = LEVI_HASSNER * 4
    for fp16 in (False, True):
        seconds = scaling.allreduce_seconds(gradient_bytes, 12, 8, 25, fp16=fp16, latency=0.0)
        assert math.isclose(scaling.ring_gbit(gradient_bytes, 8, seconds, fp16=fp16), 25)


# trainer.bench.allreduce's JSON line, as measured here (2 ranks over Gloo, one run).
MEASURED = {"model": "levi_hassner", "ranks": 2, "collectives": "Gloo", "tensors": 12,
            "gradient_bytes": LEVI_HASSNER * 4, "repeats": 10,
            "median_ms": {"none": 100.0, "fp16": 400.0}}


def test_the_table_sets_the_measured_all_reduce_of_both_compressions_beside_the_model(tmp_path):
    path = tmp_path / "allreduce.jsonl"
    path.write_text(json.dumps({**MEASURED, "median_ms": {"none": 1.0, "fp16": 1.0}}) + "\n"
                    + json.dumps(MEASURED) + "\n")
    measured = scaling.load_measured(path)  # the last line: the latest run
    assert measured == MEASURED
    text = scaling.table(step_seconds=0.3, parameters=LEVI_HASSNER, tensors=12,
                         bandwidth_gbit=25, measured=measured)
    model_rows, measured_rows = text.splitlines()[:6], text.splitlines()[6:]
    assert model_rows == scaling.table(0.3, LEVI_HASSNER, 12, 25).splitlines()
    assert measured_rows[0].startswith("measured here: 2 ranks over Gloo, levi_hassner's 12 "
                                       "tensors (45.7 MB): float32 100.0 ms")
    # 2 ranks: each sends the 45.7 MB once in 100 ms, 3.65 Gbit/s; fp16 half of it in 400 ms.
    assert "(a ring at 3.65 Gbit/s), fp16 400.0 ms (0.46 Gbit/s): fp16 4.00x" in measured_rows[0]
    assert measured_rows[1].endswith("efficiency 75% in float32, 43% in fp16")


@pytest.mark.parametrize("content", [None, "", "{\"model\": \"tiny\"}\n", "not json\n"])
def test_a_file_without_a_measurement_is_a_users_mistake(tmp_path, content):
    path = tmp_path / "allreduce.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(entry.UserError, match=str(path)):
        scaling.load_measured(path)


def test_the_measurement_times_both_compressions_on_every_rank_and_feeds_the_table(
        horovodrun, python, tmp_path):
    result = run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, "-m",
                  "trainer.bench.allreduce", "--model=tiny", "--crop_size=56", "--repeats=3",
                  f"--out_dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = json_lines(result.stdout)
    assert len(printed) == 1  # rank 0's
    measured = scaling.load_measured(tmp_path / "allreduce.jsonl")
    assert measured == printed[0]
    assert measured["ranks"] == 2 and measured["collectives"] == "Gloo"
    assert measured["tensors"] == 6 and measured["gradient_bytes"] == 1_912 * 4  # tiny's
    for compression in ("none", "fp16"):
        assert len(measured["ms"][compression]) == 3
        assert measured["median_ms"][compression] > 0
    assert "over 2 Horovod ranks (Gloo), median of 3 calls each" in result.stdout
    assert "measured here: 2 ranks over Gloo, tiny's 6 tensors" in scaling.table(
        0.05, 1_912, 6, 25, measured=measured)
