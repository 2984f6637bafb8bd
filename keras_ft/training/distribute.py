"""Scaling out with tf.distribute: the strategy, its replicas, the chief, sharding, learning rate.

keras_ft distributes through TensorFlow's own engine: the model and both
phases' optimizers are created inside `strategy.scope()`, Keras's `fit` splits
each batch over the replicas and all-reduces the gradients.

- `batch_size` is per replica; each step trains on a global batch of
  `batch_size * replicas` images, which the strategy splits evenly. Every
  batch holds a multiple of `replicas` images: each epoch leaves out its last
  `images % replicas` images in its seeded order (others each epoch), and
  validation its last ones, since an empty share breaks Keras 3's evaluation.
- The learning rate is used as given (`lr_scaling="none"`), or multiplied by
  the number of replicas (`"linear"`, the linear scaling rule of Goyal et al.,
  2017), so that a larger global batch takes proportionally larger steps.
- Data is sharded with `AutoShardPolicy.DATA`: every worker builds the same
  seeded pipeline from memory and keeps its part of each global batch. (FILE
  sharding needs one file per shard; keras_ft reads images into memory first.)
- Only the chief (the `chief` task of `TF_CONFIG`, else worker 0) writes
  checkpoints, logs and the run directory; resuming reads the chief's
  checkpoint on every worker, so `--output` must be on a filesystem all
  workers share.
- A lost worker is detected by TensorFlow's coordination service, which stops
  the others' collectives once heartbeats go missing (about 10 s here); a
  collective that waits longer than `COLLECTIVE_TIMEOUT_SECONDS` fails too.
  keras_ft turns either into a `WorkerLostError` that says to rerun with
  `--resume`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import tensorflow as tf

from keras_ft.config import STRATEGIES
from keras_ft.utils.errors import KerasFTError, WorkerLostError

AUTO_SHARD_POLICY = tf.data.experimental.AutoShardPolicy.DATA
# A backstop for a peer that hangs without dying (a dead one is found by heartbeats).
COLLECTIVE_TIMEOUT_SECONDS = 600.0
# The errors TensorFlow raises in the survivors when a collective loses a peer.
LOST_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
)


@dataclass(frozen=True)
class Distribution:
    """A strategy and where this process stands in it.

    Attributes:
        strategy: the `tf.distribute.Strategy` to build and fit under.
        name: the strategy used: `"none"`, `"mirrored"`, `"multiworker"` or `"tpu"`.
        requested: the name asked for (`"auto"` resolves to `"none"` or `"mirrored"`).
        replicas: model copies training in sync, over all workers.
        workers: processes in the cluster (1 unless `"multiworker"` or a TPU pod).
        worker_index: this process's index among them; the chief's is 0.
        is_chief: whether this process writes checkpoints, logs and the run directory.
    """

    strategy: tf.distribute.Strategy
    name: str
    requested: str
    replicas: int
    workers: int = 1
    worker_index: int = 0
    is_chief: bool = True

    def describe(self, batch_size: int, lr_scaling: str) -> dict:
        """The run record's account of the distribution."""
        return {
            "strategy": self.name,
            "requested": self.requested,
            "replicas": self.replicas,
            "workers": self.workers,
            "per_replica_batch_size": batch_size,
            "global_batch_size": batch_size * self.replicas,
            "lr_scaling": lr_scaling,
            "learning_rate_factor": scale_learning_rate(1.0, self.replicas, lr_scaling),
            "auto_shard_policy": AUTO_SHARD_POLICY.name,
        }


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3's `fit` passes it.

    Keras (3.15) reduces a nested `(images, labels)` batch and scalar metrics
    with `axis=0`; TensorFlow's multi-worker `reduce` accepts neither and
    `fit` fails at its first step. Reducing each value on its own, over
    replicas only for scalars, is what `MirroredStrategy` does with them.
    """

    def reduce(self, reduce_op, value, axis):
        def one(v):
            local = self.experimental_local_results(v)[0]
            return super(_MultiWorkerMirroredStrategy, self).reduce(
                reduce_op, v, None if local.shape.rank == 0 else axis
            )

        return tf.nest.map_structure(one, value)


_CREATED: dict[str, Distribution] = {}


def get_distribution(strategy: str = "auto") -> Distribution:
    """The `Distribution` for a strategy name, created once per process.

    Args:
        strategy: `"auto"`: `"mirrored"` when more than one GPU is visible,
            else `"none"`. `"none"`: TensorFlow's default strategy, one device.
            `"mirrored"`: `tf.distribute.MirroredStrategy` over all local GPUs;
            with no GPU, over the logical CPU devices when more than one is
            configured (`tf.config.set_logical_device_configuration`), else
            the one CPU. `"multiworker"`: `MultiWorkerMirroredStrategy` over
            the cluster in the `TF_CONFIG` environment variable; it must be
            created before TensorFlow runs any operation in the process.
            `"tpu"`: `TPUStrategy` on the TPU found by `TPUClusterResolver`.

    Returns:
        A `Distribution`; the same object for the same name in one process.
    """
    if strategy not in STRATEGIES:
        raise KerasFTError(
            f"Invalid `strategy`: expected one of {STRATEGIES}, received {strategy!r}. "
            "'auto' uses all local GPUs when there are several."
        )
    if strategy not in _CREATED:
        _CREATED[strategy] = _create(strategy)
    return _CREATED[strategy]


def _create(requested: str) -> Distribution:
    name = requested
    if requested == "auto":
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if name == "none":
        return Distribution(tf.distribute.get_strategy(), "none", requested, 1)
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution(strategy, "mirrored", requested, strategy.num_replicas_in_sync)
    if name == "tpu":
        return _tpu(requested)
    return _multiworker(requested)


def _multiworker(requested: str) -> Distribution:
    config = tf_config()
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS
    )
    try:
        strategy = _MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as error:
        if "program startup" not in str(error):
            raise
        raise KerasFTError(
            "strategy='multiworker' must be set up before TensorFlow runs anything in the "
            "process. Create the FineTuner first (before the ImageFolder and any other "
            "TensorFlow work), or call "
            "keras_ft.training.distribute.get_distribution('multiworker') at the start of your "
            "script."
        ) from None
    workers, index = cluster_position(config)
    return Distribution(
        strategy,
        "multiworker",
        requested,
        strategy.num_replicas_in_sync,
        workers=workers,
        worker_index=index,
        is_chief=index == 0,
    )


def _tpu(requested: str) -> Distribution:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise KerasFTError(
            f"strategy='tpu' found no TPU ({str(error).splitlines()[0]}). Run on a TPU VM "
            "(or set TPU_NAME), or pick another strategy: 'auto', 'none' or 'mirrored'."
        ) from None
    strategy = tf.distribute.TPUStrategy(resolver)
    workers = max(1, resolver.cluster_spec().num_tasks("worker"))
    index = resolver.task_id or 0
    return Distribution(
        strategy,
        "tpu",
        requested,
        strategy.num_replicas_in_sync,
        workers=workers,
        worker_index=index,
        is_chief=index == 0,
    )


def tf_config() -> dict:
    """The `TF_CONFIG` environment variable, parsed and checked for multi-worker training."""
    raw = os.environ.get("TF_CONFIG")
    example = (
        '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not raw:
        raise KerasFTError(
            "strategy='multiworker' needs the TF_CONFIG environment variable to describe the "
            f"cluster, e.g. TF_CONFIG='{example}' on the first machine (index 1 on the second)."
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        jobs = cluster.get("chief", []) + cluster.get("worker", [])
        if task["type"] not in ("chief", "worker") or not jobs:
            raise ValueError("no chief or worker task")
        int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise KerasFTError(
            f"Invalid TF_CONFIG {raw!r} ({error}): expected JSON such as '{example}'."
        ) from None
    return config


def cluster_position(config: dict) -> tuple[int, int]:
    """(workers, this task's index) from a `TF_CONFIG` dict; the chief has index 0.

    With a `chief` job, the chief comes first and `worker` tasks follow it;
    without one, worker 0 is the chief.
    """
    cluster, task = config["cluster"], config["task"]
    chiefs = len(cluster.get("chief", []))
    workers = chiefs + len(cluster.get("worker", []))
    index = int(task["index"]) if task["type"] == "chief" else chiefs + int(task["index"])
    return workers, index


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with the auto-shard policy keras_ft records (`AUTO_SHARD_POLICY`)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = AUTO_SHARD_POLICY
    return dataset.with_options(options)


def evenly_batched(validation, count: int, global_batch: int, replicas: int) -> tf.data.Dataset:
    """Validation data (a dataset of batches, or `(x, y)` arrays) in batches every replica shares.

    Each batch holds a multiple of `replicas` images, so the strategy gives
    every replica the same number: Keras 3 builds the model from the first
    batch averaged over replicas, and an empty share fails in evaluation. The
    last `count % replicas` images (fewer than `replicas`) are left out.
    """
    if count < replicas:
        raise KerasFTError(
            f"The validation split has {count} image(s), fewer than the {replicas} replicas. "
            "Raise validation_split, or pass 0 to train without validation."
        )
    if isinstance(validation, tf.data.Dataset):
        images = validation.unbatch()
    else:
        images = tf.data.Dataset.from_tensor_slices(validation)
    return images.take(count - count % replicas).batch(global_batch)


def predict_batch(model, images):
    """`model.predict_on_batch(images)`, or a direct call when `model` has several replicas.

    Under a strategy with several replicas Keras 3's `predict_on_batch` hands
    every replica the whole batch and returns one copy per replica (and,
    multi-worker, makes every worker join in); this process's own call is
    what evaluation and feature caching need there.
    """
    strategy = getattr(model, "distribute_strategy", None)  # absent from stand-ins in tests
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return model(images, training=False)
    return model.predict_on_batch(images)


def scale_learning_rate(learning_rate: float, replicas: int, rule: str) -> float:
    """The learning rate for `replicas`: as given (rule `"none"`) or times replicas (`"linear"`)."""
    return learning_rate * replicas if rule == "linear" else learning_rate


def lost_worker(error: Exception, distribution: Distribution, checkpoint_dir) -> WorkerLostError:
    """The `WorkerLostError` to raise for a collective's `error`: who stopped, and what to do."""
    text = getattr(error, "message", str(error))
    tasks = re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", text.split("unhealthy", 1)[-1])
    who = ", ".join(sorted({f"{job} {index}" for job, index in tasks})) or "a worker"
    if checkpoint_dir:
        how = f"Its last checkpoint is in '{checkpoint_dir}': restart every worker with --resume."
    else:
        how = "Pass a checkpoint_dir (keras-ft train --output) to be able to resume."
    return WorkerLostError(
        f"Multi-worker training stopped on worker {distribution.worker_index} of "
        f"{distribution.workers}: {who} stopped responding ({type(error).__name__}: "
        f"{text.strip().splitlines()[0][:300]}). TensorFlow notices a dead worker after about "
        f"10 s of missing heartbeats, a hung one after {COLLECTIVE_TIMEOUT_SECONDS:.0f} s. "
        f"Nothing was written to the run directory. {how}"
    )


def all_agree(distribution: Distribution, value: int) -> bool:
    """Whether every worker passed the same `value` (a small int); always True on one worker."""
    if distribution.workers == 1:
        return True

    def totals():
        context = tf.distribute.get_replica_context()
        x = tf.constant(float(value), tf.float64)
        return context.all_reduce("SUM", x), context.all_reduce("SUM", x * x)

    total, squares = (
        float(distribution.strategy.experimental_local_results(t)[0])
        for t in distribution.strategy.run(totals)
    )
    # n * sum(x^2) == sum(x)^2 exactly when every x is the same.
    return distribution.replicas * squares == total * total


def check_in_scope(backbone, distribution) -> None:
    """Refuse a custom backbone whose weights were made outside the strategy's scope."""
    extended = distribution.strategy.extended
    if not all(extended.variable_created_in_scope(v.value) for v in backbone.weights):
        raise KerasFTError(
            f"Your backbone '{backbone.name}' was created outside the "
            f"strategy={distribution.requested!r} scope, so its weights live on one device. "
            "Create it inside keras_ft.training.distribute.get_distribution("
            f"{distribution.requested!r}).strategy.scope()."
        )
