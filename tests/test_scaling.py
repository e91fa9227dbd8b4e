"""trainer.bench.scaling: the ring all-reduce model against hand-computed figures."""

import math

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
