"""Training: the small network learns; runs are bit-reproducible; a killed run resumes exactly where
it stopped, unless its inputs changed; ImageNet stages, each with its own early stopping."""

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from deepbc.evaluation import inference
from deepbc.training import graph as train_graph
from deepbc.training import precision, train
from tests import trainkit

ROOT = Path(__file__).resolve().parents[1]
# Tests that need oneDNN's bfloat16 rewrite to run. It needs AVX512F (without the bfloat16
# instructions it emulates them); on an AVX2-only CPU Grappler skips it silently, and such a test
# would compare float32 with float32.
needs_onednn_bfloat16 = pytest.mark.skipif(
    not precision.onednn_bfloat16(),
    reason="TensorFlow's oneDNN cannot compute bfloat16 on this CPU (AVX2 only; it needs AVX512F)")


# Evaluations at 5, 10, 15, 16 (validation loss improves at 5 and 10); states saved at 4, 8, 12, 16.
SHORT = trainkit.settings(max_number_of_steps=16, eval_every_steps=5, save_every_steps=4)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    return trainkit.make_shards(base / "images", base / "shards")


@pytest.fixture(scope="module")
def reference(shard_dir, tmp_path_factory):
    """An uninterrupted SHORT run, one thread: what every resumed or repeated run must equal."""
    base = tmp_path_factory.mktemp("reference")
    train.train(*trainkit.indexes(shard_dir), base / "model", base / "state", "resnet_small", SHORT, seed=1, threads=1)
    return base / "model"


def weights(model_dir) -> dict:
    reader = tf.train.load_checkpoint(str(model_dir / "model.ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_same_run(a, b) -> None:
    """The same curve (but for timings), the same kept step and bit-identical kept weights."""
    curve_a, curve_b = pd.read_csv(a / "training.csv"), pd.read_csv(b / "training.csv")
    columns = [c for c in curve_a.columns if c != "images_per_sec"]
    pd.testing.assert_frame_equal(curve_a[columns], curve_b[columns], check_exact=True)
    assert json.loads((a / "settings.json").read_text())["best_step"] == \
        json.loads((b / "settings.json").read_text())["best_step"]
    weights_a, weights_b = weights(a), weights(b)
    assert weights_a.keys() == weights_b.keys()
    for name, value in weights_a.items():
        np.testing.assert_array_equal(value, weights_b[name], err_msg=name)


def test_stage_plan_follows_the_preprint():
    two = train.stage_plan(trainkit.settings(init="imagenet", max_number_of_steps=3000, stage2_steps=3000))
    assert [(s["name"], s["steps"], s["learning_rate"], s["logits_only"]) for s in two] == [
        ("logits", 3000, 0.01, True), ("all_layers", 3000, 0.001, False)]
    one = train.stage_plan(trainkit.settings(init="scratch"))
    assert [(s["name"], s["logits_only"]) for s in one] == [("all_layers", False)]
    # One stage from ImageNet trains only the logits, and is named so.
    logits = train.stage_plan(trainkit.settings(init="imagenet", stage2_steps=0))
    assert [(s["name"], s["logits_only"]) for s in logits] == [("logits", True)]


def test_momentum_optimizer_reads_momentum():
    settings = trainkit.settings(optimizer="momentum", momentum=0.5, rmsprop_momentum=0.9)
    with tf.Graph().as_default():
        assert train_graph.make_optimizer(tf, settings, 0.1)._momentum == 0.5


def test_class_weights_balance_the_loss():
    assert train_graph.class_weights([200, 100]) == pytest.approx([0.75, 1.5])
    assert train_graph.class_weights([50, 50]) == pytest.approx([1.0, 1.0])


@pytest.mark.slow
def test_small_network_learns_and_beats_chance(shard_dir, tmp_path):
    out = tmp_path / "model"
    summary = train.train(*trainkit.indexes(shard_dir), out, tmp_path / "state", "resnet_small", trainkit.settings(),
                          seed=1)
    curve = pd.read_csv(out / "training.csv")
    assert list(curve["step"]) == list(range(1, 61))
    assert curve["loss"].tail(10).mean() < curve["loss"].head(10).mean()
    assert curve["val_accuracy"].dropna().max() >= 0.8  # chance is 0.5
    assert (out / "model.ckpt.index").exists() and summary["best_step"] in (20, 40, 60)
    assert json.loads((out / "settings.json").read_text())["class_names"] == trainkit.CLASSES
    assert summary["precision"] == "fp32" and "loss_scale" not in curve.columns  # only float16 scales the loss


@pytest.mark.slow
def test_killed_run_resumes_at_its_last_saved_step(shard_dir, tmp_path):
    out, state = tmp_path / "model", tmp_path / "state"
    # 45 steps after the first save: time enough to kill the process before it finishes.
    steps = {"max_number_of_steps": 50, "save_every_steps": 5, "eval_every_steps": 25}
    cmd = [sys.executable, str(ROOT / "workflow_scripts" / "train_model.py"),
           "--train-index", str(shard_dir / "train.json"),
           "--val-index", str(shard_dir / "val.json"),
           "--arch", "resnet_small", "--settings-json", json.dumps(trainkit.settings_values(**steps)), "--out-dir", str(out),
           "--state-dir", str(state), "--seed", "1", "--threads", "1", "--memory-mb", "1000", "--gpus", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (state / "checkpoint").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "settings.json").exists()  # nothing looks finished
    saved = int((state / "checkpoint").read_text().split('"')[1].rsplit("-", 1)[1])
    assert 5 <= saved < 50

    train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", trainkit.settings(**steps), seed=1)
    curve = pd.read_csv(out / "training.csv")
    assert list(curve["step"]) == list(range(1, 51))  # no step done twice, none skipped
    assert json.loads((out / "settings.json").read_text())["steps"] == 50
    assert not state.exists()  # a finished job leaves no state behind


def test_dying_while_saving_state_resumes_exactly(shard_dir, reference, tmp_path, monkeypatch):
    """Killed after writing the curve of step 8 but before its checkpoint: the rerun restores step 4
    and redoes 5..16 with the same batches and augmentations as a run that was never killed."""
    out, state = tmp_path / "model", tmp_path / "state"
    write_history = train._write_history

    def dies_at_step_8(path, history):
        if path.parent == state and len(history) == 8:
            raise KeyboardInterrupt("killed while saving the state of step 8")
        write_history(path, history)

    monkeypatch.setattr(train, "_write_history", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", SHORT, seed=1, threads=1)
    monkeypatch.setattr(train, "_write_history", write_history)
    train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", SHORT, seed=1, threads=1)
    assert_same_run(reference, out)


@pytest.mark.slow
def test_kept_weights_newer_than_the_restored_step_are_redone(shard_dir, reference, tmp_path, monkeypatch):
    """Killed right after keeping the weights of a step past the last saved state (step 8): the
    rerun restores step 8, drops those weights and keeps the same model as an uninterrupted run."""
    out, state = tmp_path / "model", tmp_path / "state"
    save_best, killed = train._save_best, []

    def dies_after_a_late_best(sess, g, state_dir, step):
        save_best(sess, g, state_dir, step)
        if step > 8:
            killed.append(step)
            raise KeyboardInterrupt(f"killed after keeping the weights of step {step}")

    monkeypatch.setattr(train, "_save_best", dies_after_a_late_best)
    with pytest.raises(KeyboardInterrupt):
        train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", SHORT, seed=1, threads=1)
    monkeypatch.setattr(train, "_save_best", save_best)
    assert killed and killed[0] % SHORT.save_every_steps  # kept after the last state save (8)
    assert (state / "best" / f"model.ckpt-{killed[0]}.index").exists()
    train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", SHORT, seed=1, threads=1)
    assert_same_run(reference, out)


def test_decoding_each_image_once_trains_the_same_model(shard_dir, reference, tmp_path, monkeypatch, caplog):
    """The reference run (16 steps of 16 over 64 images: 4 epochs) decodes its training images once;
    decoding them at every epoch, or keeping half of them on local disk beyond the memory budget,
    gives the same curve and bit-identical weights: the same images in the same order with the
    same augmentation keys."""
    caplog.set_level(logging.INFO, logger="deepbc.training.train")
    monkeypatch.setattr(train, "DECODED_SHARE", 0.15)  # of 1 MB: about half of the 64 decoded 40x40 images
    train.train(*trainkit.indexes(shard_dir), tmp_path / "spilled", tmp_path / "s1", "resnet_small", SHORT, seed=1,
                threads=1, memory_mb=1)
    in_memory, on_disk = map(float, re.search(r"([\d.]+) MB in memory, ([\d.]+) MB on local disk", caplog.text).groups())
    assert in_memory > 0 and on_disk > 0
    assert_same_run(reference, tmp_path / "spilled")
    train.train(*trainkit.indexes(shard_dir), tmp_path / "every_epoch", tmp_path / "s2", "resnet_small", SHORT,
                seed=1, threads=1, decode_images_once=False)
    assert_same_run(reference, tmp_path / "every_epoch")


def test_images_are_decoded_once_only_for_runs_that_read_them_again(tmp_path, monkeypatch):
    """Only when the steps still to run read the training images more than once (a resumed run
    near its end does not decode them all); the spill folder exists while the job runs, then not."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stages = [{"steps": 4}, {"steps": 4}]
    with contextlib.ExitStack() as job:
        assert train.decode_once(stages, 8, 64, 0, None, job) is None  # 64 images read once: nothing to keep
        assert train.decode_once(stages, 8, 63, 1, None, job) is None  # resumed: 7 steps x 8 images left
        assert list(tmp_path.iterdir()) == []
        budget, spill = train.decode_once(stages, 8, 63, 0, 1000, job)
        assert budget == int(1000 * 2**20 * train.DECODED_SHARE) and Path(spill).parent == tmp_path
        assert train.decode_once(stages, 8, 63, 0, None, job)[0] is None
    assert list(tmp_path.iterdir()) == []


def test_decoded_images_stay_out_of_checkpoints(shard_dir, tmp_path):
    from deepbc.shards.reader import read_index

    train_json, val_json = trainkit.indexes(shard_dir)
    g = train_graph.build(tf, "resnet_small", SHORT, 1, train_json, val_json, read_index(train_json),
                          train.stage_plan(SHORT), None, 0, precision.Precision("fp32", ""),
                          decode_once=(None, str(tmp_path)))
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        in_memory, on_disk = train_graph.start_input(sess, g)
        assert in_memory >= 64 * 40 * 40 * 3 and on_disk == 0  # every training image, decoded
        g.state_saver.save(sess, str(tmp_path / "state.ckpt"))
    names = tf.train.load_checkpoint(str(tmp_path / "state.ckpt")).get_variable_to_shape_map()
    assert names and all(n.startswith(("resnet_small/", "optimizer_", "global_step")) for n in names), sorted(names)


def test_decoded_images_that_cannot_go_to_local_disk_stop_the_job_with_what_to_do(shard_dir, tmp_path):
    """Local disk full (here: the spill folder under a file) is a UserError naming the folder, not
    TensorFlow's bare error."""
    from deepbc.jobs.errors import UserError
    from deepbc.shards.reader import read_index

    (tmp_path / "a file").write_text("")
    spill = tmp_path / "a file" / "spill"
    train_json, val_json = trainkit.indexes(shard_dir)
    g = train_graph.build(tf, "resnet_small", SHORT, 1, train_json, val_json, read_index(train_json),
                          train.stage_plan(SHORT), None, 0, precision.Precision("fp32", ""),
                          decode_once=(0, str(spill)))
    with tf.compat.v1.Session(graph=g.graph) as sess, pytest.raises(UserError) as err:
        train_graph.start_input(sess, g)
    assert err.value.where == str(spill) and "TMPDIR" in err.value.fix


@pytest.mark.slow
def test_same_seed_same_model_whatever_the_threads(shard_dir, reference, tmp_path):
    train.train(*trainkit.indexes(shard_dir), tmp_path / "model", tmp_path / "state", "resnet_small", SHORT, seed=1,
                threads=2)
    assert_same_run(reference, tmp_path / "model")
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()  # train() left the process switch as it was
    test_index = shard_dir / "test.json"
    a = inference.predict_shards(reference, test_index, tmp_path / "a.parquet", threads=1)
    b = inference.predict_shards(tmp_path / "model", test_index, tmp_path / "b.parquet", threads=2)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.slow
def test_a_state_of_other_settings_is_discarded(shard_dir, tmp_path, monkeypatch, caplog):
    out, state = tmp_path / "model", tmp_path / "state"
    save_state = train._save_state

    def dies_after_step_4(sess, g, state_dir, step, history):
        save_state(sess, g, state_dir, step, history)
        raise KeyboardInterrupt("killed after saving the state of step 4")

    monkeypatch.setattr(train, "_save_state", dies_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", SHORT, seed=1)
    monkeypatch.setattr(train, "_save_state", save_state)
    caplog.set_level(logging.INFO, logger="deepbc.training.train")
    train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", dataclasses.replace(SHORT, learning_rate=0.02), seed=1)
    assert "learning_rate 0.01 -> 0.02" in caplog.text
    curve = pd.read_csv(out / "training.csv")
    assert list(curve["step"]) == list(range(1, 17))
    assert curve["learning_rate"].iloc[0] == pytest.approx(0.02)


class WouldTrain(Exception):
    pass


def would_train(*args):
    raise WouldTrain


@pytest.mark.slow
def test_a_model_already_trained_with_these_inputs_is_not_trained_again(shard_dir, tmp_path, caplog, monkeypatch):
    """As when a trainer orphaned by a killed Snakemake publishes while the rerun waits on the lock."""
    settings = trainkit.settings(max_number_of_steps=2, eval_every_steps=2, save_every_steps=2)
    out, state = tmp_path / "model", tmp_path / "state"
    first = train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", settings, seed=1)
    assert json.loads((out / "settings.json").read_text())["inputs_fingerprint"] == first["inputs_fingerprint"]
    caplog.set_level(logging.INFO, logger="deepbc.training.train")
    caplog.clear()  # the first call's lines are captured too where an earlier test set INFO on the root logger
    again = train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", settings, seed=1)
    assert "already holds a model trained with these inputs" in caplog.text
    assert "training resnet_small" not in caplog.text and not state.exists()
    assert again == json.loads(json.dumps(first))
    monkeypatch.setattr(train, "_bind_state", would_train)
    with pytest.raises(WouldTrain):  # another setting: trained again
        train.train(*trainkit.indexes(shard_dir), out, state, "resnet_small", dataclasses.replace(settings, learning_rate=0.02), seed=1)


def test_only_complete_outputs_of_the_same_inputs_count_as_trained(shard_dir, tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    inputs = train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small", SHORT, 1, None, "fp32")
    summary = {"best_step": 16, "inputs_fingerprint": train.fingerprint(inputs)}
    (out / "settings.json").write_text(json.dumps(summary))
    monkeypatch.setattr(train, "_bind_state", would_train)
    for name in ("training.csv", "model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        with pytest.raises(WouldTrain):  # incomplete
            train.train(*trainkit.indexes(shard_dir), out, tmp_path / "state", "resnet_small", SHORT, seed=1)
        (out / name).write_text("")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "training.csv").write_text("a state left by a job killed after publishing")
    assert train.train(*trainkit.indexes(shard_dir), out, tmp_path / "state", "resnet_small", SHORT, seed=1) == summary
    assert not (tmp_path / "state").exists()
    with pytest.raises(WouldTrain):
        train.train(*trainkit.indexes(shard_dir), out, tmp_path / "state", "resnet_small", SHORT, seed=2)


def test_train_and_val_indexes_are_taken_by_name(shard_dir):
    """Any two indexes, wherever they lie: here the fold's test split stands in for validation."""
    inputs = train.training_inputs(shard_dir / "train.json", shard_dir / "test.json", "resnet_small", SHORT, 1, None, "fp32")
    assert inputs["train_shards"] == train._shards_identity(shard_dir / "train.json")
    assert inputs["val_shards"] == train._shards_identity(shard_dir / "test.json")
    assert inputs["val_shards"] != train._shards_identity(shard_dir / "val.json")


def test_the_state_is_bound_to_seed_and_shards(shard_dir, tmp_path, caplog):
    """New splits (another seed or splits.k) rewrite the shards: a state of the old ones is dropped."""
    state = tmp_path / "state"
    other_shards = trainkit.make_shards(tmp_path / "images", tmp_path / "shards", seed=5)
    inputs = train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small", SHORT, 1, None, "fp32")
    train._bind_state(state, inputs)
    marker = state / "state.ckpt-4.index"
    marker.write_text("a saved state")
    train._bind_state(state, train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small",
                                                   dataclasses.replace(SHORT, save_every_steps=2), 1, None, "fp32"))
    assert marker.exists()  # when states are saved does not change the model
    caplog.set_level(logging.INFO, logger="deepbc.training.train")
    for changed, said in [(train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small", SHORT, 2, None, "fp32"),
                           "seed 1 -> 2"),
                          (train.training_inputs(*trainkit.indexes(other_shards), "resnet_small", SHORT, 1, None, "fp32"),
                           "train shards, val shards")]:
        train._bind_state(state, inputs)
        marker.write_text("a saved state")
        caplog.clear()
        train._bind_state(state, changed)
        assert not marker.exists() and said in caplog.text


def test_the_state_is_bound_to_the_training_code(shard_dir, tmp_path, caplog, monkeypatch):
    """A fix to the training code (preprocessing, the reader, ...) resumed a state the old code had
    saved, silently; now the code's version is an input of the state and is in settings.json.
    Comments, docstrings, the export and files outside what training runs leave it as it is."""
    import shutil

    from deepbc.training import code_version

    package = tmp_path / "deepbc"
    shutil.copytree(code_version.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version.code_version(package)

    def edited(rel, change):
        path = package / rel
        path.write_text(change(path.read_text()))
        return code_version.code_version(package)

    def docstring(text):
        return text.replace('"""', '"""Reworded. ', 1)

    assert edited("training/preprocessing.py", docstring) == before
    assert edited("training/preprocessing.py", lambda t: t + "\n# a comment\n\n") == before
    assert edited("training/export.py", lambda t: t + "\nX = 1\n") == before
    assert edited("evaluation/metrics.py", lambda t: t + "\nX = 1\n") == before
    fixed = edited("training/preprocessing.py", lambda t: t + "\nX = 1\n")
    assert fixed["source_sha256"] != before["source_sha256"] and fixed["package"] == before["package"]
    assert edited("shards/reader.py", lambda t: t + "\nX = 1\n") != fixed

    inputs = train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small", SHORT, 1, None, "fp32")
    assert inputs["code"] == code_version.code_version()
    state = tmp_path / "state"
    train._bind_state(state, inputs)
    (state / "state.ckpt-4.index").write_text("a state saved by the old code")
    monkeypatch.setattr(train, "code_version", lambda: fixed)
    caplog.set_level(logging.INFO, logger="deepbc.training.train")
    train._bind_state(state, train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small", SHORT, 1, None,
                                                   "fp32"))
    assert not (state / "state.ckpt-4.index").exists()
    assert (f"training code {code_version.describe(inputs['code'])} -> {code_version.describe(fixed)}"
            in caplog.text)


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory):
    """An "ImageNet" checkpoint of the small network, 1000 classes, saved by the test itself."""
    from deepbc.training import nets

    prefix = tmp_path_factory.mktemp("imagenet") / "resnet_small.ckpt"
    with tf.Graph().as_default():
        nets.get_network_fn("resnet_small", 1000)(tf.zeros([1, 32, 32, 3]))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(prefix))
    return str(prefix)


def test_the_imagenet_checkpoint_counts_by_its_contents(imagenet_checkpoint, tmp_path):
    """A copy elsewhere is the same checkpoint; another one with the same sizes and mtimes is not."""
    import os
    import shutil

    source = Path(imagenet_checkpoint)
    identity = train._checkpoint_identity(imagenet_checkpoint)
    copy = tmp_path / "copy" / source.name
    copy.parent.mkdir()
    for f in source.parent.glob(source.name + ".*"):
        shutil.copyfile(f, copy.parent / f.name)
    assert train._checkpoint_identity(str(copy)) == identity
    data = next(copy.parent.glob(source.name + ".data-*"))
    stat = data.stat()
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_size == stat.st_size and data.stat().st_mtime_ns == stat.st_mtime_ns
    assert train._checkpoint_identity(str(copy)) != identity


@pytest.mark.slow
def test_imagenet_init_restores_then_trains_two_stages(shard_dir, imagenet_checkpoint, tmp_path):
    settings = trainkit.settings(init="imagenet", max_number_of_steps=10, stage2_steps=10, eval_every_steps=10)
    summary = train.train(*trainkit.indexes(shard_dir), tmp_path / "model", tmp_path / "state", "resnet_small", settings,
                          seed=1, checkpoint=imagenet_checkpoint)
    curve = pd.read_csv(tmp_path / "model" / "training.csv")
    assert list(curve["stage"]) == ["logits"] * 10 + ["all_layers"] * 10
    assert curve["learning_rate"].iloc[0] == pytest.approx(0.01)
    assert curve.loc[curve["stage"] == "all_layers", "learning_rate"].iloc[0] == pytest.approx(0.001)
    assert summary["steps"] == 20


@pytest.mark.slow
def test_early_stopping_ends_a_stage_not_the_run(shard_dir, imagenet_checkpoint, tmp_path):
    settings = trainkit.settings(init="imagenet", max_number_of_steps=30, stage2_steps=4, eval_every_steps=2,
                                 early_stopping_patience=1, keep_best_by="val_accuracy")
    train.train(*trainkit.indexes(shard_dir), tmp_path / "model", tmp_path / "state", "resnet_small", settings, seed=1,
                checkpoint=imagenet_checkpoint)
    curve = pd.read_csv(tmp_path / "model" / "training.csv")
    stopped = int(curve.loc[curve["stage"] == "logits", "step"].max())
    assert stopped < 30  # stage 1 stopped early ...
    second = curve[curve["stage"] == "all_layers"]
    assert 1 <= len(second) <= 4  # ... and stage 2 ran (with its own patience)
    assert list(second["step"]) == list(range(stopped + 1, stopped + 1 + len(second)))
    assert second["learning_rate"].iloc[0] == pytest.approx(0.001)  # its own schedule from its start
    assert not math.isnan(second["val_loss"].iloc[-1])  # the run ends with an evaluation


def rows(val_losses):
    """Curve rows with a validation loss at every step (None: no evaluation)."""
    nan = float("nan")
    return [{"step": i + 1, "val_loss": nan if v is None else v, "val_accuracy": nan if v is None else 0.5}
            for i, v in enumerate(val_losses)]


def test_stages_patience_and_best_follow_from_the_curve_alone():
    stages = [{"name": "logits", "steps": 10}, {"name": "all_layers", "steps": 4}]
    history = rows([1.0, 0.9, None, 0.95, 0.97, 0.96, 0.8, 0.85, None])
    plan = train._Stages(stages, "val_loss", patience=2)
    decisions = [plan.update(r) for r in history]
    # Stage 1 stops at step 5, after two evaluations without improvement; stage 2 runs steps 6..9.
    assert [stopped for _, stopped in decisions] == [False] * 4 + [True] + [False] * 4
    assert [improved for improved, _ in decisions] == [True, True, False, False, False, False, True, False, False]
    assert plan.finished
    for k in range(len(history)):  # a run resumed at any step replays the curve into the same state
        resumed = train._Stages(stages, "val_loss", patience=2)
        for r in history[:k]:
            resumed.update(r)
        assert [resumed.update(r) for r in history[k:]] == decisions[k:]


def test_each_stage_counts_its_patience_against_its_own_best():
    """Stage 2 improving on itself but not on stage 1's best is not stopped; the kept (run) best
    stays stage 1's."""
    stages = [{"name": "logits", "steps": 10}, {"name": "all_layers", "steps": 5}]
    history = rows([0.5, 0.6, 0.7, 0.9, 0.8, 0.7, 0.65, 0.6])
    plan = train._Stages(stages, "val_loss", patience=2)
    decisions = [plan.update(r) for r in history]
    assert [stopped for _, stopped in decisions] == [False, False, True] + [False] * 5
    assert [improved for improved, _ in decisions] == [True] + [False] * 7
    assert plan.finished and plan.best == 0.5
    for k in range(len(history)):  # and so does a run resumed at any step
        resumed = train._Stages(stages, "val_loss", patience=2)
        for r in history[:k]:
            resumed.update(r)
        assert [resumed.update(r) for r in history[k:]] == decisions[k:]


def test_keeping_the_last_weights_stops_early_on_the_validation_loss():
    """keep_best_by: last scored each evaluation by its step, so every one was an improvement and
    early stopping never stopped; the patience now counts on the validation loss."""
    stages = [{"name": "logits", "steps": 10}, {"name": "all_layers", "steps": 4}]
    history = rows([1.0, 0.9, None, 0.95, 0.97, 0.96, 0.8, 0.85, None])
    plan = train._Stages(stages, "last", patience=2)
    assert [plan.update(r)[1] for r in history] == [False] * 4 + [True] + [False] * 4
    assert plan.finished
    assert train._best_step(history, "last") == 9  # the kept weights stay the last


@pytest.mark.slow
def test_inception_aux_logits_are_in_the_loss_with_weight_0_4():
    """TF-Slim's train_image_classifier: loss = xent(logits) + 0.4 xent(AuxLogits) + weight decay."""
    rng = np.random.default_rng(0)
    with tf.Graph().as_default() as graph:
        tf.compat.v1.set_random_seed(0)
        images = tf.constant(rng.uniform(-1, 1, (2, 107, 107, 3)), tf.float32)
        labels = tf.constant([0, 1], tf.int64)
        loss, logits = train_graph.model_loss(tf, "inception_v3", 2, images, labels, trainkit.settings())
        aux = graph.get_tensor_by_name("InceptionV3/AuxLogits/SpatialSqueeze:0")
        xent = [tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x))
                for x in (logits, aux)]
        decay = tf.add_n(tf.compat.v1.losses.get_regularization_losses())
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            total, main, auxiliary, reg = sess.run([loss, xent[0], xent[1], decay])
    assert auxiliary > 0.1
    assert total == pytest.approx(main + 0.4 * auxiliary + reg, rel=1e-5)


def test_dropout_masks_follow_the_step_so_a_restored_session_draws_the_same(tmp_path):
    """The mask of step N in a fresh session restored at step N is that of the continuous session
    (TF-Slim's stateful dropout restarts at step 1's masks)."""
    from deepbc.training.compat import import_slim
    from deepbc.training.nets.dropout import stateless_dropout

    slim = import_slim()
    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        with stateless_dropout(3):
            dropped = slim.dropout(tf.ones([1000]), 0.8, is_training=True, scope="Logits/Dropout_1b")
        advance = tf.compat.v1.assign_add(step, 1)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            continuous = []
            for _ in range(3):
                continuous.append(sess.run(dropped))
                sess.run(advance)
            sess.run(tf.compat.v1.assign_add(step, -1))
            saver.save(sess, str(tmp_path / "state.ckpt"))  # the state of step 2
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, str(tmp_path / "state.ckpt"))
            restored = sess.run(dropped)
    np.testing.assert_array_equal(restored, continuous[-1])
    assert not np.array_equal(continuous[0], continuous[1])  # a new mask at every step


def test_stateless_dropout_keeps_tf_slims_semantics():
    from deepbc.training.compat import import_slim
    from deepbc.training.nets.dropout import stateless_dropout

    slim = import_slim()
    original = slim.dropout
    with tf.Graph().as_default():
        x = tf.ones([4000])
        with stateless_dropout(1):
            assert slim.dropout is not original
            with slim.arg_scope([slim.dropout], is_training=False):
                off = slim.dropout(x, 0.5)
            on = slim.dropout(x, 0.25)
            other = slim.dropout(x, 0.25)  # another layer, another mask
        assert slim.dropout is original
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            off, on, other = sess.run([off, on, other])
    np.testing.assert_array_equal(off, 1.0)
    assert set(np.unique(on)) == {0.0, 4.0} and 0.2 < np.mean(on > 0) < 0.3
    assert not np.array_equal(on, other)


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------

TINY = trainkit.settings(max_number_of_steps=2, eval_every_steps=2, save_every_steps=2, batch_size=4)


def checkpoint_dtypes(prefix) -> dict:
    return tf.train.load_checkpoint(str(prefix)).get_variable_to_dtype_map()


def _ancestors(op) -> set:
    """Every op ``op`` depends on, through data or control inputs."""
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_float16_loss_scale_is_read_before_the_step_updates_it():
    """The scale fetched with a step must be the one that step used: its read runs before the
    step's update of the scale variable, not in an order the session chooses."""

    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", initializer=1.0)
        opt = precision.wrap_optimizer(tf.compat.v1.train.GradientDescentOptimizer(0.1),
                                       precision.Precision("fp16", ""))
        step, scale = train_graph.train_step(tf, opt, tf.square(w), tf.compat.v1.train.get_or_create_global_step(),
                                             [w], [])
        # The scale variable; the step updates it inside a cond.
        handle = next(op for op in _ancestors(scale.op) if op.type == "VarHandleOp")
        updates = [op for op in _ancestors(step) if op.type != "ReadVariableOp"
                   and handle in [t.op for t in op.inputs]]
        assert updates and all(scale.op in _ancestors(u) for u in updates)


def test_mixed_precision_on_a_bfloat16_cpu_is_recorded_and_keeps_float32_checkpoints(
        shard_dir, tmp_path, monkeypatch, caplog):
    """On a CPU with bfloat16 instructions (pretended where this one has none), ``mixed`` trains in
    bfloat16, says so, and keeps float32 weights."""
    from deepbc.training import code_version

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    caplog.set_level(logging.INFO, logger="deepbc")
    out = tmp_path / "model"
    summary = train.train(*trainkit.indexes(shard_dir), out, tmp_path / "state", "resnet_small", dataclasses.replace(TINY, precision="mixed"), seed=1)
    assert summary["precision"] == summary["device"]["precision"] == "bf16"
    assert summary["code_version"] == code_version.code_version()  # and what trained it
    assert json.loads((out / "settings.json").read_text())["precision"] == "bf16"
    assert "precision: bf16 (CPU with avx512_bf16: oneDNN's bfloat16 rewrite)" in caplog.text
    dtypes = checkpoint_dtypes(out / "model.ckpt")
    assert dtypes and set(dtypes.values()) == {tf.float32}


@needs_onednn_bfloat16
def test_bfloat16_training_stays_within_the_float32_seed_spread(shard_dir, reference, tmp_path, monkeypatch):
    """bfloat16 parity at a small size, on the bfloat16 code path (oneDNN's rewrite; emulated where
    the CPU has AVX512F but not the bfloat16 flags; an AVX2-only CPU cannot run it): the validation
    losses and test probabilities of ``mixed`` differ from float32's (same seed) by no more than
    another float32 seed's do (bench/parity.py measures the demo's tasks, BENCHMARKS.md section 9)."""

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    bf16, other_seed = tmp_path / "bf16", tmp_path / "seed2"
    summary = train.train(*trainkit.indexes(shard_dir), bf16, tmp_path / "s1", "resnet_small",
                          dataclasses.replace(SHORT, precision="mixed"), seed=1, threads=1)
    assert summary["precision"] == "bf16"
    train.train(*trainkit.indexes(shard_dir), other_seed, tmp_path / "s2", "resnet_small", SHORT, seed=2, threads=1)

    def val_losses(model):
        return pd.read_csv(model / "training.csv")["val_loss"].dropna().to_numpy()

    def malignant_probability(model):
        df = inference.predict_shards(model, shard_dir / "test.json", model / "test.parquet", threads=1)
        return df["prob_malignant"].to_numpy()

    fp32 = val_losses(reference)
    seed_spread = np.abs(val_losses(other_seed) - fp32).max()
    assert np.abs(val_losses(bf16) - fp32).max() <= max(seed_spread, 0.05)
    probability = malignant_probability(reference)
    seed_spread = np.abs(malignant_probability(other_seed) - probability).mean()
    assert np.abs(malignant_probability(bf16) - probability).mean() <= max(seed_spread, 0.02)


@needs_onednn_bfloat16
def test_the_bfloat16_rewrite_keeps_the_loss_the_optimizer_and_batch_norm_statistics_in_float32(shard_dir):
    """What oneDNN's bfloat16 rewrite converts in the training step, as the session runs it: the
    convolutions and batch norm compute in bfloat16; the cross-entropy, the RMSProp updates of the
    float32 variables and slots and the moving averages of the batch-norm statistics stay float32."""
    from deepbc.shards.reader import read_index
    from deepbc.training import model_dir

    bf16 = precision.Precision("bf16", "")
    train_json, val_json = trainkit.indexes(shard_dir)
    g = train_graph.build(tf, "resnet_small", SHORT, 1, train_json, val_json, read_index(train_json),
                          train.stage_plan(SHORT), None, 0, bf16)
    metadata = tf.compat.v1.RunMetadata()
    with train.op_determinism(True), tf.compat.v1.Session(graph=g.graph, config=model_dir.session_config(tf, 1, bf16)) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        train_graph.start_input(sess, g)
        sess.run(g.train_ops[0], {g.stage_start: 0}, run_metadata=metadata,
                 options=tf.compat.v1.RunOptions(output_partition_graphs=True))
    dtypes, moving_averages = {}, set()
    for node in (n for graph in metadata.partition_graphs for n in graph.node if "T" in n.attr):
        dtype = tf.dtypes.as_dtype(node.attr["T"].type).name
        dtypes.setdefault(node.op, set()).add(dtype)
        if "AssignMovingAvg" in node.name:  # variable - (variable - batch statistic) * (1 - decay)
            moving_averages.add(dtype)
    assert any("Conv2D" in op and dtypes[op] == {"bfloat16"} for op in dtypes)  # the rewrite ran
    assert dtypes["SparseSoftmaxCrossEntropyWithLogits"] == {"float32"}
    assert dtypes["ResourceApplyRMSProp"] == {"float32"}
    assert moving_averages == {"float32"}


def test_float16_training_logs_and_records_its_loss_scale_and_evaluation_stays_float32(
        shard_dir, tmp_path, monkeypatch, caplog):
    """Where the graph computes in float16 (a GPU of compute capability >= 7.0), the optimizer scales
    the loss dynamically and the scale is logged and in training.csv. Without such a GPU the float16
    rewrite itself cannot run (Grappler skips it on a CPU), but the loss scaling, its variable and
    the reading of it can: that is what runs here. Evaluation computes in float32 all the same."""

    monkeypatch.setattr(precision, "for_this_machine", lambda requested: precision.resolve(requested, (8, 0)))
    caplog.set_level(logging.INFO, logger="deepbc.training.train")
    out = tmp_path / "model"
    summary = train.train(*trainkit.indexes(shard_dir), out, tmp_path / "state", "resnet_small", dataclasses.replace(TINY, precision="mixed"), seed=1,
                          log_every=1)
    assert summary["precision"] == "fp16"
    curve = pd.read_csv(out / "training.csv")
    assert list(curve["loss_scale"]) == [2.0 ** 15] * 2  # TensorFlow's initial dynamic scale, finite steps
    assert "loss_scale=32768" in caplog.text
    dtypes = checkpoint_dtypes(out / "model.ckpt")
    assert set(dtypes.values()) == {tf.float32} and not any("loss_scale" in n for n in dtypes)
    used = []
    apply_to_config = precision.apply_to_config
    monkeypatch.setattr(precision, "apply_to_config", lambda config, p, xla=False: (
        used.append(p.name), apply_to_config(config, p, xla)))
    inference.predict_shards(out, shard_dir / "test.json", tmp_path / "p.parquet", threads=1)
    assert used == ["fp32"]


@pytest.mark.slow
def test_a_bfloat16_trained_model_is_evaluated_in_float32_as_its_export_serves_it(shard_dir, tmp_path, monkeypatch):
    """Evaluation computed in the model's precision resolved where it ran (bfloat16 on this kind of
    CPU), the SavedModel in float32: the export did not reproduce the evaluation it claims to, and
    the same model's test probabilities depended on the evaluating machine. Both now compute in
    float32, and the predictions and the export say so."""
    from deepbc.shards import reader as shard_reader
    from deepbc.training import export

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    model = tmp_path / "model"
    # Trained enough for bfloat16 to move its probabilities (by up to 0.011 here, in the old evaluation).
    summary = train.train(*trainkit.indexes(shard_dir), model, tmp_path / "state", "resnet_small",
                          dataclasses.replace(TINY, precision="mixed", max_number_of_steps=12, batch_size=16),
                          seed=1, threads=1)
    assert summary["precision"] == "bf16"
    evaluated = inference.predict_shards(model, shard_dir / "test.json", tmp_path / "p.parquet", threads=1)
    assert set(pd.read_parquet(tmp_path / "p.parquet")["precision"]) == {"fp32"}
    export.export_saved_model(model, tmp_path / "export", threads=1)
    assert export.load_info(tmp_path / "export")["precision"] == "fp32"
    names, encoded = [], []
    for record, _ in shard_reader.member_records(shard_dir / "test.json"):
        example = tf.train.Example.FromString(record.numpy())
        names.append(example.features.feature["image/filename"].bytes_list.value[0].decode())
        encoded.append(example.features.feature["image/encoded"].bytes_list.value[0])
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures[export.SIGNATURE]
    served = pd.DataFrame(serve(images=tf.constant(encoded))["probabilities"].numpy(),
                          columns=["prob_benign", "prob_malignant"]).assign(path=names)
    both = evaluated.merge(served, on="path", suffixes=("", "_served"))
    assert len(both) == len(evaluated) == 32
    np.testing.assert_allclose(both["prob_malignant_served"], both["prob_malignant"], atol=1e-5)


def test_the_state_is_bound_to_the_precision_computed_in(shard_dir):
    """precision: mixed computes in bfloat16 on one machine and float32 on another: a state saved on
    the one is not resumed on the other."""
    fp32, bf16 = (train.training_inputs(*trainkit.indexes(shard_dir), "resnet_small", TINY, 1, None, p) for p in ("fp32", "bf16"))
    assert train.fingerprint(fp32) != train.fingerprint(bf16)
    assert train._describe_changes(fp32, bf16) == "precision 'fp32' -> 'bf16'"
