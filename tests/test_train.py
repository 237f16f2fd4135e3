"""Training: the small network learns, a killed run resumes where it stopped, ImageNet stages."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from deepbc import train
from tests import trainkit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    return trainkit.make_shards(base / "images", base / "shards")


def test_stage_plan_follows_the_preprint():
    two = train.stage_plan(trainkit.settings(init="imagenet", max_number_of_steps=3000, stage2_steps=3000))
    assert [(s["name"], s["steps"], s["learning_rate"], s["logits_only"]) for s in two] == [
        ("logits", 3000, 0.01, True), ("all_layers", 3000, 0.001, False)]
    one = train.stage_plan(trainkit.settings(init="scratch"))
    assert [(s["name"], s["logits_only"]) for s in one] == [("all_layers", False)]


def test_class_weights_balance_the_loss():
    assert train.class_weights([200, 100]) == pytest.approx([0.75, 1.5])
    assert train.class_weights([50, 50]) == pytest.approx([1.0, 1.0])


@pytest.mark.slow
def test_small_network_learns_and_beats_chance(shard_dir, tmp_path):
    out = tmp_path / "model"
    summary = train.train(shard_dir, out, tmp_path / "state", "resnet_small", trainkit.settings(), seed=1)
    curve = pd.read_csv(out / "training.csv")
    assert list(curve["step"]) == list(range(1, 61))
    assert curve["loss"].tail(10).mean() < curve["loss"].head(10).mean()
    assert curve["val_accuracy"].dropna().max() >= 0.8  # chance is 0.5
    assert (out / "model.ckpt.index").exists() and summary["best_step"] in (20, 40, 60)
    assert json.loads((out / "settings.json").read_text())["class_names"] == trainkit.CLASSES


@pytest.mark.slow
def test_killed_run_resumes_at_its_last_saved_step(shard_dir, tmp_path):
    out, state = tmp_path / "model", tmp_path / "state"
    settings = trainkit.settings(max_number_of_steps=400, save_every_steps=10, eval_every_steps=200)
    cmd = [sys.executable, str(ROOT / "workflow_scripts" / "train_model.py"), "--shard-dir", str(shard_dir),
           "--arch", "resnet_small", "--settings-json", json.dumps(settings), "--out-dir", str(out),
           "--state-dir", str(state), "--seed", "1", "--gpus", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (state / "checkpoint").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "settings.json").exists()  # nothing looks finished
    saved = int((state / "checkpoint").read_text().split('"')[1].rsplit("-", 1)[1])
    assert 10 <= saved < 400

    resumed = dict(settings, max_number_of_steps=saved + 20)
    train.train(shard_dir, out, state, "resnet_small", resumed, seed=1)
    curve = pd.read_csv(out / "training.csv")
    assert list(curve["step"]) == list(range(1, saved + 21))  # no step done twice, none skipped
    assert json.loads((out / "settings.json").read_text())["steps"] == saved + 20


def test_dying_while_saving_state_loses_no_curve_rows(shard_dir, tmp_path, monkeypatch):
    out, state = tmp_path / "model", tmp_path / "state"
    settings = trainkit.settings(max_number_of_steps=30, save_every_steps=10, eval_every_steps=30)
    write_history = train._write_history

    def dies_at_step_20(path, history):
        if path.parent == state and len(history) == 20:
            raise KeyboardInterrupt("killed while saving the state of step 20")
        write_history(path, history)

    monkeypatch.setattr(train, "_write_history", dies_at_step_20)
    with pytest.raises(KeyboardInterrupt):
        train.train(shard_dir, out, state, "resnet_small", settings, seed=1)
    monkeypatch.setattr(train, "_write_history", write_history)
    train.train(shard_dir, out, state, "resnet_small", settings, seed=1)
    assert list(pd.read_csv(out / "training.csv")["step"]) == list(range(1, 31))


@pytest.mark.slow
def test_imagenet_init_restores_then_trains_two_stages(shard_dir, tmp_path):
    import tensorflow as tf

    from deepbc import nets

    # An "ImageNet" checkpoint of the small network, 1000 classes, saved by the test itself.
    prefix = tmp_path / "imagenet" / "resnet_small.ckpt"
    with tf.Graph().as_default():
        nets.get_network_fn("resnet_small", 1000)(tf.zeros([1, 32, 32, 3]))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(prefix))
    settings = trainkit.settings(init="imagenet", max_number_of_steps=10, stage2_steps=10, eval_every_steps=10)
    summary = train.train(shard_dir, tmp_path / "model", tmp_path / "state", "resnet_small", settings,
                          seed=1, checkpoint=str(prefix))
    curve = pd.read_csv(tmp_path / "model" / "training.csv")
    assert list(curve["stage"]) == ["logits"] * 10 + ["all_layers"] * 10
    assert curve["learning_rate"].iloc[0] == pytest.approx(0.01)
    assert curve.loc[curve["stage"] == "all_layers", "learning_rate"].iloc[0] == pytest.approx(0.001)
    assert summary["steps"] == 20
