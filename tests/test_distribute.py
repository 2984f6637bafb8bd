"""tf.distribute: the strategy choice, two logical-CPU replicas, two workers, a lost worker.

Each training test runs in fresh processes: logical devices and multi-worker
collectives can only be set up before TensorFlow starts, and this process has
long started it.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, TINY_TRAIN, write_folder

import keras_ft
from keras_ft.config import TrainingConfig
from keras_ft.runs.reproducibility import REPLICA_TOLERANCE
from keras_ft.training.distribute import (
    cluster_position,
    get_distribution,
    lost_worker,
    scale_learning_rate,
    tf_config,
)
from keras_ft.utils.errors import KerasFTError

# One device at global batch 16 against two logical CPUs at 8 each: the same steps.
REPLICAS_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras_ft
train, test, out = sys.argv[1:4]
result = {}
for strategy, batch in (("none", 16), ("mirrored", 8)):
    data = keras_ft.ImageFolder(train, test_dir=test, image_size=32, batch_size=batch,
                                validation_split=0, seed=5, quiet=True)
    tuner = keras_ft.FineTuner("testnet", weights=None, seed=5, dropout=0.0,
                               strategy=strategy)
    tuner.fit(data, head_epochs=1, finetune_epochs=1, head_lr=0.01, finetune_lr=0.01,
              verbose=0, tensorboard_dir=None)
    tuner.save(f"{out}/{strategy}")
    np.savez(f"{out}/{strategy}.npz", *[np.asarray(w) for w in tuner.model.weights])
    result[strategy] = {"accuracy": tuner.metrics["accuracy"],
                        "replicas": tuner.distribution.replicas}

import keras
class Interrupt(keras.callbacks.Callback):  # stops at phase 2's start, after the head's checkpoint
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt
class Epochs(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        result.setdefault("resumed_epochs", []).append(epoch)
for resume, callbacks in ((False, [Interrupt()]), (True, [Epochs()])):
    tuner = keras_ft.FineTuner("testnet", weights=None, seed=5, dropout=0.0,
                               strategy="mirrored")
    try:
        tuner.fit(data, head_epochs=1, finetune_epochs=1, head_lr=0.01, finetune_lr=0.01,
                  verbose=0, tensorboard_dir=None, callbacks=callbacks,
                  checkpoint_dir=f"{out}/checkpoints", resume=resume)
    except KeyboardInterrupt:
        result["interrupted"] = True
np.savez(f"{out}/resumed.npz", *[np.asarray(w) for w in tuner.model.weights])
print(json.dumps(result))
"""


def python(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def test_get_distribution_defaults_to_one_device():
    distribution = get_distribution("auto")  # no GPU here
    assert (distribution.name, distribution.replicas, distribution.is_chief) == ("none", 1, True)
    assert get_distribution("none").strategy is distribution.strategy
    with pytest.raises(KerasFTError, match=r"Invalid `strategy`.*'mirorred'"):
        get_distribution("mirorred")


def test_tpu_without_a_tpu_is_a_clear_error():
    with pytest.raises(KerasFTError, match="strategy='tpu' found no TPU"):
        get_distribution("tpu")


def test_config_checks_strategy_and_lr_scaling():
    assert TrainingConfig().strategy == "auto" and TrainingConfig().lr_scaling == "none"
    with pytest.raises(KerasFTError, match=r"Invalid `lr_scaling`.*'sqrt'"):
        TrainingConfig(lr_scaling="sqrt")
    with pytest.raises(KerasFTError, match=r"Invalid `strategy`"):
        TrainingConfig(strategy="horovod")


def test_learning_rate_scaling_rule():
    assert scale_learning_rate(1e-3, 4, "none") == 1e-3
    assert scale_learning_rate(1e-3, 4, "linear") == pytest.approx(4e-3)


def test_tf_config_gives_the_chief_and_checks_its_input(monkeypatch):
    cluster = {"worker": ["a:1", "b:1", "c:1"]}
    assert cluster_position({"cluster": cluster, "task": {"type": "worker", "index": 2}}) == (3, 2)
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert cluster_position({"cluster": with_chief, "task": {"type": "chief", "index": 0}}) == (
        2,
        0,
    )
    assert cluster_position({"cluster": with_chief, "task": {"type": "worker", "index": 0}}) == (
        2,
        1,
    )
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(KerasFTError, match="needs the TF_CONFIG environment variable"):
        tf_config()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(KerasFTError, match="Invalid TF_CONFIG"):
        tf_config()


def test_lost_worker_message_names_the_worker_and_resume():
    import tensorflow as tf

    distribution = get_distribution("none")
    error = tf.errors.UnavailableError(
        None,
        None,
        "Collective ops is aborted by: The following tasks are unhealthy "
        "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\n",
    )
    message = str(lost_worker(error, distribution, "runs/x/checkpoints"))
    assert "worker 1 stopped responding" in message
    assert "--resume" in message and "runs/x/checkpoints" in message


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    classes = ("red", "green", "blue")
    return (
        write_folder(root / "train", classes, per_class=16, size=32, seed=1),
        write_folder(root / "test", classes, per_class=4, size=32, seed=2),
    )


def test_two_replicas_match_one_device_within_the_stated_tolerance(colours, tmp_path):
    """Both phases train on two logical CPUs; weights stay within REPLICA_TOLERANCE; resume."""
    train, test = colours
    result = python("-c", REPLICAS_SCRIPT, str(train), str(test), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["mirrored"]["replicas"] == 2
    one, two = np.load(tmp_path / "none.npz"), np.load(tmp_path / "mirrored.npz")
    difference = max(float(np.max(np.abs(one[k] - two[k]))) for k in one.files)
    print(f"max |w(1 device) - w(2 replicas)| = {difference:.3g}")
    assert difference <= REPLICA_TOLERANCE
    assert measured["mirrored"]["accuracy"] == pytest.approx(measured["none"]["accuracy"], abs=0.1)
    record = json.loads((tmp_path / "mirrored" / "run.json").read_text())
    assert record["distribution"]["strategy"] == "mirrored"
    assert record["distribution"]["replicas"] == 2
    assert record["distribution"]["global_batch_size"] == 16
    assert record["distribution"]["auto_shard_policy"] == "DATA"
    assert "within floating-point tolerance" in record["reproducibility"]
    assert "Bitwise" in json.loads((tmp_path / "none" / "run.json").read_text())["reproducibility"]
    predictor = keras_ft.load(tmp_path / "mirrored")
    assert len(predictor.predict(sorted((test / "red").iterdir()))) == 4
    # Interrupted after phase 1 and resumed from its checkpoint: the uninterrupted weights.
    assert measured["interrupted"] and measured["resumed_epochs"] == [1]  # phase 2 only
    resumed = np.load(tmp_path / "resumed.npz")
    for key in two.files:
        np.testing.assert_array_equal(resumed[key], two[key])


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args_of, outputs, extra=()):
    """Start one `keras-ft train --strategy multiworker` process per output; return them."""
    ports = free_ports(len(outputs))
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index, output in enumerate(outputs):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "keras_ft.cli.main", *args_of(output), *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        )
    return processes


def finish(processes, timeout=300):
    return [(p.wait(timeout=timeout), *p.communicate()) for p in processes]


@pytest.fixture(scope="module")
def digits_like(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("mw") / "data", ("a", "b", "c"), 12)


def multiworker_args(data):
    options = "--batch-size 4 --validation-split 0.2 --head-epochs 1 --finetune-epochs 1 --seed 5"
    options += " --no-tensorboard"
    return lambda output: [
        "train",
        str(data),
        *TINY_TRAIN,
        *options.split(),
        "--strategy",
        "multiworker",
        "--output",
        str(output),
    ]


@pytest.fixture(scope="module")
def two_workers(digits_like, tmp_path_factory):
    """An uninterrupted two-worker run; each worker names its own --output."""
    root = tmp_path_factory.mktemp("two_workers")
    outputs = [root / "chief", root / "worker1"]
    results = finish(start_workers(multiworker_args(digits_like), outputs))
    return outputs, results


def test_two_workers_finish_with_the_same_weights_and_only_the_chief_writes(two_workers):
    (chief, other), results = two_workers
    for code, _, err in results:
        assert code == 0, err[-3000:]
    record = json.loads((chief / "run.json").read_text())
    assert record["distribution"]["strategy"] == "multiworker"
    assert record["distribution"]["workers"] == 2 and record["distribution"]["replicas"] == 2
    assert f"weights sha256 {record['weights_sha256']}" in results[1][1]
    assert not other.exists()
    keras_ft.load(chief)


def test_a_killed_worker_stops_the_other_clearly_and_resume_completes(
    digits_like, two_workers, tmp_path
):
    output = tmp_path / "run"  # one --output for both: a shared filesystem
    args_of = multiworker_args(digits_like)
    processes = start_workers(args_of, [output, output])
    state = output / "checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not state.exists():
        time.sleep(0.05)
    processes[1].kill()
    killed = time.monotonic()
    code, _, err = finish(processes[:1], timeout=120)[0]
    detected = time.monotonic() - killed
    print(f"chief stopped {detected:.1f} s after worker 1 was killed")
    processes[1].wait()
    assert code == 1 and "worker 1 stopped responding" in err and "--resume" in err, err[-3000:]
    assert "Traceback" not in err
    assert detected < 60
    assert not (output / "run.json").exists()
    assert not list(output.parent.glob(".run.partial-*"))
    resumed = finish(start_workers(args_of, [output, output], extra=["--resume"]))
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
    record = json.loads((output / "run.json").read_text())
    reference = json.loads((two_workers[0][0] / "run.json").read_text())
    assert record["weights_sha256"] == reference["weights_sha256"]
