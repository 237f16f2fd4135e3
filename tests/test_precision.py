"""Which precision ``precision: fp32 | mixed`` computes in, on which hardware, and the session switches."""

import os

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

from deepbc.training import precision

ON = rewriter_config_pb2.RewriterConfig.ON


@pytest.mark.parametrize("requested, capability, flags, expected", [
    ("fp32", (9, 0), {"amx_bf16"}, "fp32"),
    ("mixed", (9, 0), set(), "fp16"),  # H100
    ("mixed", (7, 0), {"amx_bf16"}, "fp16"),  # the GPU runs the graph, whatever the CPU
    ("mixed", (6, 1), set(), "fp32"),  # no tensor cores
    ("mixed", None, {"avx512f", "avx512_bf16"}, "bf16"),
    ("mixed", None, {"amx_bf16"}, "bf16"),
    ("mixed", None, {"avx2", "avx512f"}, "fp32"),
])
def test_mixed_means_what_the_hardware_has(requested, capability, flags, expected):
    assert precision.resolve(requested, capability, flags).name == expected


def test_falling_back_to_float32_says_why():
    assert "compute capability 7.0 or more, this one has 6.1" in precision.resolve("mixed", (6, 1), set()).reason
    assert "avx512_bf16 or amx_bf16" in precision.resolve("mixed", None, {"avx2"}).reason
    with pytest.raises(ValueError, match="fp32 or mixed"):
        precision.resolve("fp16", None, set())


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx512f", "amx_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("name, xla", [("fp32", False), ("bf16", False), ("fp16", True)])
def test_session_config_switches_the_rewrite_and_xla(name, xla):
    config = tf.compat.v1.ConfigProto()
    precision.apply_to_config(config, precision.Precision(name, ""), xla)
    rewrites = config.graph_options.rewrite_options
    assert (rewrites.auto_mixed_precision == ON) == (name == "fp16")
    assert (rewrites.auto_mixed_precision_onednn_bfloat16 == ON) == (name == "bf16")
    assert (config.graph_options.optimizer_options.global_jit_level == config_pb2.OptimizerOptions.ON_1) == xla


def test_xla_on_the_cpu_too_keeping_other_flags(monkeypatch):
    """Without the flag, the session's jit level clusters only GPU ops: xla: true did nothing here."""
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_min_cluster_size=2")
    precision.allow_cpu_xla()
    precision.allow_cpu_xla()
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_min_cluster_size=2 --tf_xla_cpu_global_jit"


def test_loss_scaling_wraps_only_float16_and_leaves_the_process_switch_off():
    from tensorflow.python.training.experimental import mixed_precision_global_state

    with tf.Graph().as_default():
        opt = tf.compat.v1.train.GradientDescentOptimizer(0.1)
        assert precision.wrap_optimizer(opt, precision.Precision("bf16", "")) is opt
        assert precision.loss_scale(opt) is None
        wrapped = precision.wrap_optimizer(opt, precision.Precision("fp16", ""))
        assert not mixed_precision_global_state.is_mixed_precision_graph_rewrite_enabled()
        scale = precision.loss_scale(wrapped)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            assert sess.run(scale) == 2.0 ** 15
