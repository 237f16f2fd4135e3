"""Which precision a graph computes in: the setting ``precision: fp32 | mixed`` resolved on this machine.

``mixed`` means, where the hardware has it:

- on a CUDA GPU of compute capability 7.0 or more (tensor cores), float16 through Grappler's
  ``auto_mixed_precision`` rewrite, with dynamic loss scaling of the training loss
  (``tf.compat.v1.mixed_precision.enable_mixed_precision_graph_rewrite``): ``fp16``;
- on a CPU with bfloat16 instructions (AVX512-BF16 or AMX-BF16), oneDNN's bfloat16 rewrite
  (``auto_mixed_precision_onednn_bfloat16``), which needs no loss scaling (bfloat16 has float32's
  exponent range): ``bf16``;
- elsewhere ``fp32``, with one log line saying why.

Either rewrite changes the compute graph only: variables, and so every checkpoint, stay float32.
That is training's precision (its validation included). Everything that runs a kept model
(evaluation, Grad-CAM, predict_folder, the SavedModel export) computes in float32 (``INFERENCE``).
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("deepbc.training.precision")
# CPU flags (/proc/cpuinfo) of the bfloat16 instructions oneDNN's rewrite needs to pay off.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Tensor cores, which make float16 worth it, came with Volta (7.0).
MIN_FP16_COMPUTE_CAPABILITY = (7, 0)
CPU_XLA_FLAG = "--tf_xla_cpu_global_jit"


@dataclass(frozen=True)
class Precision:
    name: str  # what the graph computes in: fp32, bf16 or fp16
    reason: str  # why, for the log

    @property
    def loss_scaling(self) -> bool:
        return self.name == "fp16"


# Inference computes in float32 whatever the model was trained in: ``mixed`` resolved where a model
# is evaluated would make its test probabilities depend on that machine (a bfloat16 CPU moved them
# by up to 0.008 and flipped a demo prediction), and the SavedModel, served anywhere, computes in
# float32; the kept weights are float32 anyway.
INFERENCE = Precision("fp32", "inference computes in float32, whatever the training computed in")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo is missing (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def onednn_bfloat16() -> bool:
    """Whether TensorFlow's oneDNN computes bfloat16 on this CPU at all: it needs AVX512F (without the
    bfloat16 instructions it emulates them, slowly). Elsewhere (AVX2 only) Grappler skips the
    bfloat16 rewrite without a word and the graph computes in float32."""
    from tensorflow.python.framework import dtypes
    from tensorflow.python.util import _pywrap_utils

    return bool(_pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(dtypes.bfloat16))


def resolve(requested: str, gpu_compute_capability: tuple[int, int] | None = None,
            flags: set[str] | None = None) -> Precision:
    """The precision a graph of setting ``requested`` computes in here. ``gpu_compute_capability``
    is that of the GPU TensorFlow runs the graph on (None: no GPU); ``flags`` the CPU's flags
    (default: read from /proc/cpuinfo)."""
    if requested == "fp32":
        return Precision("fp32", "precision: fp32 requested")
    if requested != "mixed":
        raise ValueError(f"precision must be fp32 or mixed, not {requested!r}")
    if gpu_compute_capability is not None:
        if tuple(gpu_compute_capability) >= MIN_FP16_COMPUTE_CAPABILITY:
            return Precision("fp16", f"GPU of compute capability {gpu_compute_capability[0]}."
                                     f"{gpu_compute_capability[1]}: float16 with dynamic loss scaling")
        return Precision("fp32", "mixed precision needs a GPU of compute capability 7.0 or more, this one has "
                                 f"{gpu_compute_capability[0]}.{gpu_compute_capability[1]}: computing in float32")
    found = sorted((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))
    if found:
        return Precision("bf16", f"CPU with {', '.join(found)}: oneDNN's bfloat16 rewrite")
    return Precision("fp32", f"mixed precision needs a GPU of compute capability 7.0 or more or a CPU with "
                             f"{' or '.join(BF16_CPU_FLAGS)}; this machine has neither: computing in float32")


def for_this_machine(requested: str) -> Precision:
    """resolve() for the device TensorFlow will run this process's graphs on (the first GPU, else the CPU)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    capability = None
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
    chosen = resolve(requested, capability)
    if requested != "fp32":
        LOG.info("precision: %s (%s)", chosen.name, chosen.reason)
    return chosen


def wrap_optimizer(optimizer, precision: Precision):
    """The optimizer with dynamic loss scaling where the graph computes in float16, else as it is.

    TensorFlow's wrapper also switches the float16 rewrite on process-wide; it is switched off again
    at once, because session_config() asks for it per session, so no other graph of this process
    (an evaluation after training, in tests) is rewritten by accident.
    """
    if not precision.loss_scaling:
        return optimizer
    import tensorflow as tf

    wrapped = tf.compat.v1.mixed_precision.enable_mixed_precision_graph_rewrite(optimizer, loss_scale="dynamic")
    tf.compat.v1.mixed_precision.disable_mixed_precision_graph_rewrite()
    return wrapped


def loss_scale(optimizer):
    """The current loss scale of an optimizer from wrap_optimizer (a float32 scalar tensor), else None."""
    variables = [v for v in optimizer.variables() if v.op.name.endswith("current_loss_scale")]
    return variables[0].read_value() if variables else None


def apply_to_config(config, precision: Precision, xla: bool = False) -> None:
    """Switch the precision's graph rewrite, and XLA auto-clustering, on in a session ConfigProto."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    rewrites = config.graph_options.rewrite_options
    if precision.name == "fp16":
        rewrites.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    elif precision.name == "bf16":
        rewrites.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    if xla:
        config.graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.ON_1


def allow_cpu_xla() -> None:
    """Let XLA auto-clustering compile CPU ops too: the session's jit level alone clusters only GPU
    ops. TensorFlow reads this flag once per process, as early as the first graph it builds, so
    this is called before any graph is."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if CPU_XLA_FLAG not in flags.split():
        os.environ["TF_XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAG}".strip()
