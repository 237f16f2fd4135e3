"""ImageNet checkpoints: locating, downloading (simulated), restoring all but the logits, mismatch reports."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from deepbc.jobs.errors import UserError
from deepbc.training import checkpoints
from deepbc.training.compat import import_slim
from deepbc.training.nets import NETWORKS
from tests import trainkit

slim = import_slim()
SCRIPT = Path(__file__).resolve().parent.parent / "workflow_scripts" / "get_checkpoint.py"


def built(arch: str, num_classes: int):
    """``arch`` built in a fresh graph (trainkit.build_network): (graph, its model variables)."""
    graph, _, _ = trainkit.build_network(arch, num_classes)
    with graph.as_default():
        return graph, slim.get_model_variables()


def save_checkpoint(arch: str, prefix: Path, num_classes: int = 1000, v1: bool = False) -> dict:
    """Save ``arch`` with ImageNet-style naming and random values (as TF-Slim's archives: model
    variables plus global_step); return the saved values by name."""
    rng = np.random.default_rng(1)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph, variables = built(arch, num_classes)
    with graph.as_default():
        tf.compat.v1.train.get_or_create_global_step()
        version = tf.compat.v1.train.SaverDef.V1 if v1 else tf.compat.v1.train.SaverDef.V2
        saver = tf.compat.v1.train.Saver(write_version=version)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = {v.op.name: rng.normal(size=v.shape.as_list()).astype(np.float32) for v in variables}
            for v in variables:
                v.load(values[v.op.name], sess)
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
    return values


def save_variables(prefix: Path, shapes: dict[str, list[int]]) -> None:
    """Save a checkpoint holding exactly ``shapes`` (name -> shape)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        for name, shape in shapes.items():
            tf.compat.v1.get_variable(name, shape)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(prefix), write_meta_graph=False, write_state=False)


def resnet_small_shapes() -> dict[str, list[int]]:
    return {v.op.name: v.shape.as_list() for v in built("resnet_small", 1000)[1]}


@pytest.mark.parametrize("v1", [True, False], ids=["v1_format", "v2_format"])
def test_restores_everything_but_the_logits(tmp_path, v1):
    prefix = tmp_path / "resnet_small.ckpt"
    saved = save_checkpoint("resnet_small", prefix, 1000, v1=v1)
    assert checkpoints.checkpoint_exists(prefix)
    graph, variables = built("resnet_small", 4)
    with graph.as_default():
        init_fn, report = checkpoints.restore_fn("resnet_small", prefix)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            initial = {v.op.name: sess.run(v) for v in variables}
            init_fn(sess)
            restored = {v.op.name: sess.run(v) for v in variables}
    logits = ["resnet_small/logits/biases", "resnet_small/logits/weights"]
    assert report["excluded"] == logits
    assert report["restored"] == len(variables) - 2 == len(saved) - 2
    assert report["unused"] == ["global_step"] + logits
    for name, value in restored.items():
        if name in logits:
            np.testing.assert_array_equal(value, initial[name])  # left to its initialiser
            assert value.shape[-1] == 4
        else:
            np.testing.assert_array_equal(value, saved[name])
    # Batch-norm moving statistics are restored too (they are not trainable, but they are the model).
    assert any(n.endswith("moving_variance") for n in restored if n not in logits)


@pytest.mark.slow
def test_resnet_v1_50_imagenet_layout_restores_into_a_4_class_network(tmp_path):
    prefix = tmp_path / "resnet_v1_50.ckpt"
    saved = save_checkpoint("resnet_v1_50", prefix, 1000, v1=True)
    graph, variables = built("resnet_v1_50", 4)
    with graph.as_default():
        init_fn, report = checkpoints.restore_fn("resnet_v1_50", prefix)
        probe = [v for v in variables if v.op.name == "resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/weights"][0]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            init_fn(sess)
            np.testing.assert_array_equal(sess.run(probe), saved[probe.op.name])
    assert report["restored"] == len(saved) - 2 == 265


def test_checkpoint_of_another_network_is_refused_with_a_list(tmp_path):
    prefix = tmp_path / "other.ckpt"
    save_variables(prefix, {"vgg_16/conv1/conv1_1/weights": [3, 3, 3, 64], "vgg_16/conv1/conv1_1/biases": [64]})
    graph, variables = built("resnet_small", 4)
    with graph.as_default():
        with pytest.raises(UserError) as err:
            checkpoints.restore_fn("resnet_small", prefix)
    message = str(err.value)
    assert f"{len(variables) - 2} of {len(variables) - 2} variables missing" in message
    assert "unexpected prefix" in message and "'vgg_16/' (2)" in message and "'resnet_small/'" in message
    assert "resnet_small/block1/unit_1/bottleneck_v1/conv1/weights" in message
    assert f"... and {len(variables) - 2 - checkpoints.MAX_LISTED} more" in message


def test_missing_and_misshapen_variables_are_listed_with_both_shapes(tmp_path):
    shapes = resnet_small_shapes()
    conv = "resnet_small/block2/unit_1/bottleneck_v1/conv2/weights"
    gone = "resnet_small/block3/unit_1/bottleneck_v1/conv1/BatchNorm/moving_mean"
    shapes[conv] = [3, 3, 32, 33]
    del shapes[gone]
    prefix = tmp_path / "bad.ckpt"
    save_variables(prefix, shapes)
    graph, variables = built("resnet_small", 4)
    with graph.as_default():
        with pytest.raises(UserError) as err:
            checkpoints.restore_fn("resnet_small", prefix)
    message = str(err.value)
    assert f"1 of {len(variables) - 2} variables missing, 1 with another shape or dtype" in message
    assert gone in message
    assert f"{conv}: network [3, 3, 32, 32] float32, checkpoint [3, 3, 32, 33] float32" in message
    assert "unexpected prefix" not in message


def test_logits_are_only_skipped_when_excluded(tmp_path):
    prefix = tmp_path / "resnet_small.ckpt"
    save_checkpoint("resnet_small", prefix, 1000)
    graph, _ = built("resnet_small", 4)
    with graph.as_default():
        with pytest.raises(UserError, match=r"resnet_small/logits/weights: network \[1, 1, 256, 4\] float32, "
                                            r"checkpoint \[1, 1, 256, 1000\] float32"):
            checkpoints.restore_fn("resnet_small", prefix, exclude_scopes=[])


def test_unreadable_checkpoint(tmp_path):
    prefix = tmp_path / "junk.ckpt"
    prefix.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable TensorFlow checkpoint"):
        checkpoints.read_checkpoint(prefix)
    with pytest.raises(UserError, match="no checkpoint at"):
        checkpoints.read_checkpoint(tmp_path / "absent.ckpt")


def test_missing_checkpoint_offline_names_file_folder_and_url(tmp_path):
    with pytest.raises(UserError) as err:
        checkpoints.provide_checkpoint("inception_v3", tmp_path, allow_download=False)
    message = str(err.value)
    assert "inception_v3.ckpt" in message and str(tmp_path) in message
    assert "http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz" in message
    with pytest.raises(UserError, match="TF-Slim publishes none"):
        checkpoints.provide_checkpoint("resnet_small", tmp_path, allow_download=True)


def test_checkpoint_found_in_the_folder_or_an_arch_subfolder(tmp_path):
    (tmp_path / "vgg_16").mkdir()
    (tmp_path / "vgg_16" / "vgg_16.ckpt").write_bytes(b"v1")
    assert checkpoints.provide_checkpoint("vgg_16", tmp_path) == tmp_path / "vgg_16" / "vgg_16.ckpt"
    (tmp_path / "resnet_v2_50.ckpt.index").write_bytes(b"v2")
    assert checkpoints.provide_checkpoint("resnet_v2_50", tmp_path) == tmp_path / "resnet_v2_50.ckpt"
    assert checkpoints.checkpoint_path("resnet_v2_50", tmp_path) == tmp_path / "resnet_v2_50.ckpt"


def test_download_extracts_the_checkpoint_from_the_official_archive(tmp_path, monkeypatch):
    # The archive is made here (a V2 checkpoint plus extra files, in a subfolder); fetch is faked,
    # extraction is deepbc.data.archives' real safe_extract.
    made = tmp_path / "made"
    save_variables(made / "resnet_v2_50.ckpt", {"resnet_v2_50/conv1/weights": [7, 7, 3, 64]})
    (made / "train.graph").write_text("graph")
    archive_src = tmp_path / "resnet_v2_50_2017_04_14.tar.gz"
    with tarfile.open(archive_src, "w:gz") as tar:
        for f in sorted(made.iterdir()):
            tar.add(f, arcname=f"inner/{f.name}")
    fetched = []

    def fake_fetch(url, dest, sha256=None, progress=True):
        fetched.append(url)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(archive_src.read_bytes())
        return Path(dest)

    from deepbc.data import download

    monkeypatch.setattr(download, "fetch", fake_fetch)
    ckpt_dir = tmp_path / "checkpoints"
    prefix = checkpoints.provide_checkpoint("resnet_v2_50", ckpt_dir, allow_download=True)
    assert fetched == [NETWORKS["resnet_v2_50"].checkpoint_url]
    assert prefix == ckpt_dir / "resnet_v2_50.ckpt"
    assert checkpoints.read_checkpoint(prefix) == {"resnet_v2_50/conv1/weights": ([7, 7, 3, 64], "float32")}
    assert sorted(p.name for p in ckpt_dir.iterdir()) == sorted(
        p.name for p in made.iterdir() if p.name.startswith("resnet_v2_50.ckpt."))
    # Present now: no second download.
    assert checkpoints.provide_checkpoint("resnet_v2_50", ckpt_dir, allow_download=True) == prefix
    assert len(fetched) == 1


def test_downloaded_checkpoint_archive_is_held_to_size_limits(tmp_path, monkeypatch):
    # 4 MiB of zeros in a few kB: a decompression bomb, refused before anything is written.
    archive_src = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive_src, "w:gz") as tar:
        info = tarfile.TarInfo("resnet_v2_50.ckpt.data-00000-of-00001")
        info.size = 4 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))

    def fake_fetch(url, dest, sha256=None, progress=True):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(archive_src.read_bytes())
        return Path(dest)

    from deepbc.data import download

    monkeypatch.setattr(download, "fetch", fake_fetch)
    ckpt_dir = tmp_path / "checkpoints"
    with pytest.raises(UserError, match=r"(?s)the archive unpacks to 4,194,304 bytes .* allowed by the limits "
                                        r"for TF-Slim checkpoint archives.*nothing was extracted"):
        checkpoints.provide_checkpoint("resnet_v2_50", ckpt_dir, allow_download=True)
    assert sorted(p.name for p in ckpt_dir.rglob("*") if not p.is_dir()) == ["resnet_v2_50_2017_04_14.tar.gz"]


def test_prepare_checkpoint_writes_a_stable_record(tmp_path):
    save_checkpoint("resnet_small", tmp_path / "ck" / "resnet_small.ckpt", 1000, v1=True)
    out = tmp_path / "results" / "resnet_small.json"
    record = checkpoints.prepare_checkpoint("resnet_small", tmp_path / "ck", False, out)
    first = out.read_bytes()
    assert json.loads(first) == record == {
        "arch": "resnet_small", "checkpoint": str(tmp_path / "ck" / "resnet_small.ckpt"),
        "variables": len(resnet_small_shapes()) + 1, "restored": len(resnet_small_shapes()) - 2,
        "exclude_scopes": ["resnet_small/logits"], "checkpoint_classes": 1000}
    checkpoints.prepare_checkpoint("resnet_small", tmp_path / "ck", False, out)
    assert out.read_bytes() == first


def test_script_help_and_missing_checkpoint(tmp_path):
    help_run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--allow-download" in help_run.stdout
    from deepbc.jobs.logs import run_main

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import get_checkpoint
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = tmp_path / "out.json"
    code = run_main(get_checkpoint.main, ["--arch", "vgg_16", "--checkpoint-dir", str(tmp_path),
                                          "--out", str(out), "--log", str(tmp_path / "log.txt")])
    assert code == 1 and not out.exists()
    assert "vgg_16_2016_08_28.tar.gz" in (tmp_path / "log.txt").read_text()
