"""Measurement: what the training core achieves on a machine, never part of training itself.

- `throughput`: the matrix of cells (model, batch, precision, XLA, data, distribution), each
  measured in processes of its own (entry point `trainer.benchmark`);
- `races`: time to accuracy, the baseline against improved contenders (entry point
  `trainer.time_to_accuracy`);
- `estimate`: how long a cross-validation will take here (used by `trainer.cross_validate`);
- `scaling`: a model of the ring all-reduce at many GPUs, beside the all-reduce `allreduce`
  measures under Horovod (float32 and fp16); `charts`: the PNG charts;
- `timing`: the one way all of them time the real training step;
- `processes` and `worker`: how a cell or a race runs in processes of its own; `output`:
  where their JSON lines go.

This package imports the core (loop, strategy, data, models, checkpoint); the core never
imports it.
"""
