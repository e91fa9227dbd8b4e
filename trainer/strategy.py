"""The one module that knows how training is distributed: tf.distribute or Horovod.

A training step is written for one replica and calls the few operations offered here; it never
asks which backend runs it. The rules every backend keeps:

- The loss is the per-example sum divided by the GLOBAL batch size (`replica_loss`), so that
  summing the replicas' gradients gives the gradient of the global batch's mean loss.
- Under tf.distribute, Keras 3's `optimizer.apply_gradients` itself sums the gradients across
  replicas, so `reduce_gradients` adds nothing there (a second sum would double the update).
  Under Horovod nothing else reduces: `reduce_gradients` is one grouped all-reduce SUM.
- A term that every replica adds to its loss (weight decay) is summed across replicas the same
  way: divide it by the number of replicas (`scale_regularization`).
- Batch norm and dropout: `replica_layers(batch_norm)` gives the models their layers
  (trainer.models.replicas): batch norm over the global batch ("sync": Keras' synchronized
  layer under tf.distribute, one all-reduce of sums under Horovod) or over each replica's slice
  ("local", whose moving statistics `average_across_replicas` then makes one model's), and
  dropout whose masks fold in the replica's index, so that replicas draw different masks from
  one saved state.
- Checkpoints: the chief writes them. MultiWorkerMirroredStrategy needs every worker to take
  part in a save, so the others write to a temporary folder they delete; Horovod's other ranks
  do not save at all, and after a restore every rank takes rank 0's variables.
- The stop signal (SIGTERM or SIGINT to any one process) stops every process at the same step:
  Horovod's ranks agree through an all-reduce before each call of the training step;
  MultiWorkerMirroredStrategy's workers through TensorFlow's PreemptionCheckpointHandler; one
  process just reads its flag.

Horovod 0.28.1 with Keras 3: `hvd.DistributedGradientTape` and `horovod.tensorflow.keras` do
not work (BUILD_NOTES.md), which is why the step reduces with `hvd.grouped_allreduce` here.

Gradient compression (`--gradient_compression=fp16`) is Horovod's only: its all-reduce sends
the gradients as float16 and returns float32. Under tf.distribute, Keras 3's `apply_gradients`
always sums them itself, uncompressed, and only a private hook of Keras could replace that sum
(BUILD_NOTES.md): `create` refuses the flag there.

Input: tf.distribute's datasets fetch each replica's batches to its device by themselves;
Horovod's rank prefetches its batches to its GPU as the last step of its pipeline.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal

import keras
import tensorflow as tf

from launch import entry
from launch import slurm

from trainer.models import replicas

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "horovod")
# How batch norm normalises under several replicas: over the global batch (its moments
# all-reduced), or over each replica's own slice (faster; the moving statistics are averaged
# across replicas before every evaluation and checkpoint). One replica: the same either way.
BATCH_NORMS = ("sync", "local")
# How the gradients travel in Horovod's all-reduce: as they are, or as float16 (half the bytes,
# summed in float16, about 3 significant digits; under loss scaling an overflow of the float16
# sum skips the step like any other). Pays where the network is the limit (GPUs with NCCL
# across nodes); over Gloo on CPUs the conversions cost more than the bytes saved (README).
GRADIENT_COMPRESSIONS = ("none", "fp16")


def pick_strategy(environ=None):
    """What `--strategy=auto` means here: the launcher's choice, else the devices'.

    Several GPUs in one process are MirroredStrategy's (NCCL inside TensorFlow), whatever
    Horovod was built with: Horovod runs only under horovodrun, which launch/single_node.sh
    chooses on GPUs only when Horovod's collectives are NCCL's.
    """
    environ = os.environ if environ is None else environ
    if "HOROVOD_RANK" in environ:  # first: horovodrun's ranks inherit a SLURM job's variables
        return "horovod"
    if slurm.in_step_of_several_tasks(environ):  # its TF_CONFIG: host.configure_threads
        return "multi_worker"
    if environ.get("TF_CONFIG"):
        cluster = json.loads(environ["TF_CONFIG"]).get("cluster", {})
        if sum(len(tasks) for tasks in cluster.values()) > 1:
            return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "one_device"


def create(name="auto", logical_cpus=0, gradient_compression="none"):
    """Creates the backend. Call before TensorFlow runs its first op (devices are set here).

    Args:
      name: one of STRATEGIES.
      logical_cpus: with no GPU, split the CPU into this many logical devices, so that
        `mirrored` runs several replicas in one process (for tests and debugging).
      gradient_compression: one of GRADIENT_COMPRESSIONS; anything but "none" needs Horovod.

    Raises:
      entry.UserError: a gradient compression under a tf.distribute strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    if gradient_compression not in GRADIENT_COMPRESSIONS:
        raise ValueError(f"unknown gradient compression {gradient_compression!r}; expected one "
                         f"of {', '.join(GRADIENT_COMPRESSIONS)}")
    if name == "auto":
        name = pick_strategy()
    if name == "horovod":
        return HorovodBackend(gradient_compression)
    if gradient_compression != "none":
        # Refused even with one replica, where it would change nothing: the same command line
        # must not mean compressed on one machine and refused on the next.
        raise entry.UserError(
            f"--gradient_compression={gradient_compression} compresses Horovod's all-reduce "
            f"only, not {name}'s (tf.distribute, where Keras sums the gradients uncompressed): "
            f"run the job under horovodrun, or drop the flag")
    devices = _local_devices(logical_cpus)
    if name == "one_device":
        return TFDistributeBackend(name, tf.distribute.OneDeviceStrategy(devices[0]))
    if name == "mirrored":
        return TFDistributeBackend(name, tf.distribute.MirroredStrategy(devices))
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL
                      if tf.config.list_physical_devices("GPU")
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    return TFDistributeBackend(name, tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation)))


def _local_devices(logical_cpus):
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [f"/gpu:{i}" for i in range(len(gpus))]
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        return [f"/cpu:{i}" for i in range(logical_cpus)]
    return ["/cpu:0"]


def replica_loss(per_example_loss, global_batch_size):
    """One replica's share of the global batch's mean loss."""
    return tf.reduce_sum(per_example_loss) / tf.cast(global_batch_size, per_example_loss.dtype)


class TFDistributeBackend:
    """One device, MirroredStrategy or MultiWorkerMirroredStrategy."""

    # Keras' apply_gradients all-reduces across replicas itself: XLA cannot compile it here
    # (trainer.steps).
    compiles_update = False

    gradient_compression = "none"  # Keras' apply_gradients sums them as they are

    def __init__(self, name, strategy):
        self.name = name
        self._strategy = strategy
        self.is_chief = strategy.extended.should_checkpoint
        self.num_processes = strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)
        self.process_index = _task_index(getattr(strategy, "cluster_resolver", None))

    @property
    def num_replicas(self):
        return self._strategy.num_replicas_in_sync

    @property
    def replicas_per_pipeline(self):
        """Replicas fed by one input pipeline, which yields one batch per replica per step."""
        return self.num_replicas // self.num_processes

    def scope(self):
        return self._strategy.scope()

    def restores_checkpoints(self):
        return True  # every worker reads the chief's folder (a shared file system)

    def checkpoint_write_dir(self, directory):
        """Where this process saves: the chief in `directory`, the others in a temporary one."""
        if self.is_chief:
            return directory
        # TensorFlow's PreemptionCheckpointHandler uses (and deletes) this same folder.
        task_id = self._strategy.cluster_resolver.task_id
        return os.path.join(os.path.dirname(directory), f"workertemp_{task_id}",
                            os.path.basename(directory))

    def remove_temporary_checkpoints(self, directory):
        if not self.is_chief:
            shutil.rmtree(os.path.dirname(self.checkpoint_write_dir(directory)),
                          ignore_errors=True)

    def stop_signal(self, checkpoint, checkpoint_dir, save):
        """A StopSignal; under multi_worker, TensorFlow's preemption handler (see StopSignal)."""
        if self.name == "multi_worker":
            return _PreemptionHandlerStop(self._strategy.cluster_resolver, checkpoint,
                                          checkpoint_dir, save)
        return StopSignal(agree=lambda requested: requested)

    def run(self, replica_fn, args=()):
        return self._strategy.run(replica_fn, args=args)

    def sum(self, per_replica_value):
        """The sum over replicas of a per-replica value, outside the replica function."""
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_value, axis=None)

    def distribute_values(self, value_fn):
        """Per-replica values: `value_fn(replica_id)` for each replica of this process."""
        return self._strategy.experimental_distribute_values_from_function(
            lambda context: value_fn(context.replica_id_in_sync_group))

    def replica_device(self, replica_id):
        """The device of replica `replica_id` (global index) of this process, where a value
        for it must be placed (distribute_values alone places nothing: all stay on CPU:0)."""
        devices = self._strategy.extended.worker_devices
        return devices[replica_id % len(devices)]

    def distribute_dataset(self, dataset_fn, global_batch_size):
        """Batches for every replica from `dataset_fn(num_pipelines, pipeline_index,
        per_replica_batch_size)`: one input pipeline per worker, each reading its own files."""
        def for_pipeline(context):
            return dataset_fn(context.num_input_pipelines, context.input_pipeline_id,
                              context.get_per_replica_batch_size(global_batch_size))
        return self._strategy.distribute_datasets_from_function(for_pipeline)

    def gather(self, value):
        """Every replica's copy of the scalar `value` (this process's, for each of its
        replicas), in replica order, on every process."""
        per_replica = self.distribute_values(lambda _: tf.reshape(tf.constant(value), [1]))
        return self._strategy.gather(per_replica, axis=0).numpy()

    def reduce_gradients(self, grads):
        return grads  # Keras 3's apply_gradients sums across replicas itself.

    def all_finite(self, grads):
        """Whether every replica's gradients are finite, agreed by all replicas.

        Keras 3's LossScaleOptimizer decides to skip a step from the gradients it is given,
        assuming they are already summed; under tf.distribute they are not yet, so one
        replica's overflow must be made every replica's (else: inf weights, or a hang).
        """
        bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.int32))
                        for g in grads])
        return self.all_reduce_sum(bad) == 0

    def all_reduce_sum(self, values):
        """Sums values across replicas, inside the replica function."""
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)

    def scale_regularization(self, loss):
        return loss / self.num_replicas

    def sync_variables(self, variables):
        del variables  # Mirrored variables are created equal on every replica.

    def replica_layers(self, batch_norm):
        """The models' batch-norm and dropout layers (trainer.models.replicas): Keras' own
        synchronized batch norm when `batch_norm` is "sync" over several replicas."""
        layers = replicas.ReplicaLayers(replica_id=_replica_id_in_sync_group)
        if batch_norm == "sync" and self.num_replicas > 1:
            layers = dataclasses.replace(layers, batch_norm=functools.partial(
                keras.layers.BatchNormalization, synchronized=True))
        return layers

    def average_across_replicas(self, variables):
        """Sets `variables` on every replica to their mean over the replicas; call it in a
        tf.function, outside the replica function, on every process."""
        local_values = self._strategy.run(lambda: [tf.identity(_tf_variable(v))
                                                   for v in variables])
        means = self._strategy.reduce(tf.distribute.ReduceOp.MEAN, local_values, axis=None)
        for variable, mean in zip(variables, means):
            variable.assign(mean)  # in cross-replica context: every replica's copy


class HorovodBackend:
    """One replica per process, launched by horovodrun; collectives over Gloo (or NCCL)."""

    def __init__(self, gradient_compression="none", input_device=None):
        """`gradient_compression`: one of GRADIENT_COMPRESSIONS. `input_device`: where this
        rank's batches are prefetched to (default: its GPU; none without one)."""
        import horovod.tensorflow as hvd  # only this backend needs Horovod installed

        self.name = "horovod"
        self._hvd = hvd
        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
            tf.config.experimental.set_memory_growth(gpus[hvd.local_rank()], True)
        self._device = "/gpu:0" if gpus else "/cpu:0"  # its one GPU, else the CPU
        self._input_device = input_device or (self._device if gpus else None)
        self.gradient_compression = gradient_compression
        self._compression = {"none": hvd.Compression.none,
                             "fp16": hvd.Compression.fp16}[gradient_compression]
        self.process_index = hvd.rank()
        self.num_processes = hvd.size()
        self.is_chief = hvd.rank() == 0

    @property
    def num_replicas(self):
        return self._hvd.size()

    replicas_per_pipeline = 1
    compiles_update = True  # the all-reduce comes before the update, outside it

    def scope(self):
        return contextlib.nullcontext()

    def restores_checkpoints(self):
        return self.is_chief  # then sync_variables: ranks need not see the checkpoint folder

    def checkpoint_write_dir(self, directory):
        return directory if self.is_chief else None

    def remove_temporary_checkpoints(self, directory):
        del directory  # only rank 0 writes

    def stop_signal(self, checkpoint, checkpoint_dir, save):
        del checkpoint, checkpoint_dir, save  # the loop saves once every rank agreed to stop

        def agree(requested):
            votes = self._hvd.allreduce(tf.constant(int(requested), tf.int32), op=self._hvd.Sum,
                                        name="stop_votes")
            return int(votes) > 0

        return StopSignal(agree)

    def run(self, replica_fn, args=()):
        return replica_fn(*args)

    def sum(self, value):
        return self._hvd.allreduce(value, op=self._hvd.Sum)

    def distribute_values(self, value_fn):
        return value_fn(self._hvd.rank())

    def replica_device(self, replica_id):
        del replica_id  # one replica per rank
        return self._device

    def distribute_dataset(self, dataset_fn, global_batch_size):
        """This rank's batches: one input pipeline per rank, each reading its own files,
        prefetched to the rank's device (its GPU) while the previous step computes."""
        if global_batch_size % self._hvd.size():
            raise ValueError(f"global batch {global_batch_size} does not split over "
                             f"{self._hvd.size()} ranks")
        dataset = dataset_fn(self._hvd.size(), self._hvd.rank(),
                             global_batch_size // self._hvd.size())
        if self._input_device is None:
            return dataset
        # Must be the pipeline's last transformation (TensorFlow's rule).
        return dataset.apply(tf.data.experimental.prefetch_to_device(self._input_device))

    def gather(self, value):
        return self._hvd.allgather(tf.reshape(tf.constant(value), [1])).numpy()

    def reduce_gradients(self, grads):
        return self._hvd.grouped_allreduce(grads, op=self._hvd.Sum,
                                           compression=self._compression)

    def all_finite(self, grads):
        # Summed gradients are the same on every rank: so is this answer.
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])

    def all_reduce_sum(self, values):
        return self._hvd.grouped_allreduce(values, op=self._hvd.Sum)

    def scale_regularization(self, loss):
        return loss / self.num_replicas

    def sync_variables(self, variables):
        """Makes every rank start from rank 0's values (model and optimizer state)."""
        self._hvd.broadcast_variables([_tf_variable(v) for v in variables], root_rank=0)

    def replica_layers(self, batch_norm):
        """The models' batch-norm and dropout layers (trainer.models.replicas): batch norm
        whose moments are all-reduced over the ranks when `batch_norm` is "sync" over several
        (Horovod's own SyncBatchNormalization fails under Keras 3)."""
        rank = self._hvd.rank()
        layers = replicas.ReplicaLayers(replica_id=lambda: rank)
        if batch_norm == "sync" and self.num_replicas > 1:
            layers = dataclasses.replace(layers, batch_norm=functools.partial(
                replicas.AllReducedBatchNormalization, all_reduce_sum=self.all_reduce_sum))
        return layers

    def average_across_replicas(self, variables):
        """Sets `variables` on every rank to their mean over the ranks; every rank calls it."""
        means = self._hvd.grouped_allreduce([_tf_variable(v) for v in variables],
                                            op=self._hvd.Average)
        for variable, mean in zip(variables, means):
            variable.assign(mean)


class StopSignal:
    """SIGTERM or SIGINT asks the job to stop; `requested(step)` says whether all processes stop
    now. The loop calls it before each call of the training step, then saves and ends with exit
    code 0."""

    def __init__(self, agree):
        self._agree = agree
        # A signal that reached an earlier loop's StopSignal after that loop ended (during
        # cross_validate's evaluation of a finished fold) stops this loop at its first step.
        earlier = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        self._received = earlier.received if isinstance(earlier, StopSignal) else None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._receive)

    def _receive(self, signum, frame):
        del frame
        self._received = signal.Signals(signum).name

    @property
    def received(self):
        return self._received

    def requested(self, step):
        del step
        return self._agree(self._received is not None)


class _PreemptionHandlerStop:
    """MultiWorkerMirroredStrategy's workers agree through the coordination service.

    TensorFlow's PreemptionCheckpointHandler watches SIGTERM; we forward SIGINT to it. When a
    worker is signalled, every worker runs to one agreed step, calls `save` (the trainer's own
    CheckpointManager, through `save_fn`) and then the exit function, which here only records
    that the job stopped, so that the loop ends normally. The handler restores the latest
    checkpoint of `checkpoint_dir` when created (the trainer already did: the same values).
    """

    def __init__(self, cluster_resolver, checkpoint, checkpoint_dir, save):
        self._stopped = False
        self._received = None
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver, checkpoint, checkpoint_dir=checkpoint_dir,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=self._exit, save_fn=save))
        watch_sigterm = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self._received = signal.Signals(signum).name
            watch_sigterm(signal.SIGTERM, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        signal.signal(signal.SIGINT, on_sigterm)

    def _exit(self):
        self._stopped = True

    @property
    def received(self):
        return self._received or ("SIGTERM" if self._stopped else None)

    def requested(self, step):
        if not self._stopped:
            self._handler.save_checkpoint_if_preempted(step)
        return self._stopped


def _task_index(resolver):
    """This process's place among the workers of a TF_CONFIG cluster (the chief first)."""
    if resolver is None or not resolver.task_type:
        return 0
    if resolver.task_type == "chief":
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_id + int(has_chief)


def _replica_id_in_sync_group():
    """This replica's index among all replicas of all workers (0 outside a replica function)."""
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def _tf_variable(variable):
    # Keras 3 variables wrap a tf.Variable, which is what Horovod's broadcast assigns to.
    return variable.value if isinstance(variable, keras.Variable) else variable
