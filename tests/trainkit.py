"""Tiny two-class shards for training and evaluation tests: learnable in a few dozen steps."""

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from deepbc.shards import writer as shard_writer

CLASSES = ["benign", "malignant"]


def draw(rng, label: int, size: int = 40) -> np.ndarray:
    """Benign: few small dark dots; malignant: many large ones, on the same pink background."""
    img = np.full((size, size, 3), (230, 170, 200), np.float64) + rng.normal(0, 12, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    n, r = (3, 2.0) if label == 0 else (12, 4.0)
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 40, 130)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_shards(root: Path, out_dir: Path, per_split=(64, 32, 32), seed: int = 0, stain: dict | None = None,
                image_format: str = "png") -> Path:
    """Write PNGs under root and shards of fold 0 under out_dir (normalised with ``stain``); returns out_dir."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in zip(("train", "val", "test"), per_split):
        for i in range(n):
            label = i % 2
            rel = f"{CLASSES[label]}/{split}_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw(rng, label)).save(root / rel)
            rows.append({"path": rel, "patient": f"{split}-p{i // 4}", "slide": f"{split}-p{i // 4}",
                         "magnification": "NA", "label": CLASSES[label], "label_index": label,
                         "fold": 0, "split": split, "protocol": "patient"})
    shard_writer.write_shards(pd.DataFrame(rows), 0, root, out_dir, seed=seed, workers=1, stain=stain, shards={"images_per_shard": 32, "format": image_format, "jpeg_quality": 95, "max_shorter_side": 0})
    return out_dir


def indexes(shard_dir: Path) -> tuple[Path, Path]:
    """The train and val indexes of make_shards' folder, as train.train takes them."""
    return shard_dir / "train.json", shard_dir / "val.json"


def settings_values(**overrides) -> dict:
    """The few training values the tests set (the schema's defaults fill the rest): a scratch network at
    32 px, short runs; as the JSON a rule would pass."""
    values = {"init": "scratch", "image_size": 32, "batch_size": 16, "learning_rate": 0.01,
              "stage2_learning_rate": 0.001, "batch_norm_decay": 0.9, "max_number_of_steps": 60,
              "eval_every_steps": 20, "save_every_steps": 20}
    values.update(overrides)
    return values


def settings(**overrides):
    """``settings_values`` as the trainer takes them: the TrainSettings the schema fills in."""
    from deepbc.training.settings import build

    return build(settings_values(**overrides), "resnet_small")


def split_settings(**values):
    """The SplitSettings of a splits section with these values (the schema's defaults fill the rest)."""
    from deepbc.data.splits import SplitSettings
    from deepbc.jobs.schema import fill

    return SplitSettings.from_config(fill(values, "/properties/splits"))


def serve_without_the_package(export_dir, encoded, tmp_path):
    """(probabilities, class names) of the SavedModel at ``export_dir`` on the ``encoded`` image
    bytes, served by a fresh Python that imports only TensorFlow (no PYTHONPATH, cwd elsewhere, so
    deepbc cannot be imported by the loader)."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "encoded.npy", np.array(encoded, dtype=object), allow_pickle=True)
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "assert 'deepbc' not in sys.modules\n"
            "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
            "out = serve(images=tf.constant(np.load(sys.argv[2], allow_pickle=True).tolist()))\n"
            "np.save(sys.argv[3], out['probabilities'].numpy())\n"
            "print(','.join(c.decode() for c in out['class_names'].numpy()))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code, str(export_dir), str(tmp_path / "encoded.npy"),
                             str(tmp_path / "probs.npy")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / "probs.npy"), result.stdout.strip().split(",")


@contextlib.contextmanager
def identity_equality():
    """Build graphs with tensors and variables compared by identity, without asking TensorFlow at
    every comparison whether it runs eagerly: inside a tf.Graph the answer is no and the result is
    identity anyway (Variable.__hash__/__eq__), but tf-keras' legacy layers hash every variable of
    the graph at each new weight, so the question, asked ~n^2 times, was half the CPU of building
    the deepest ResNets (resnet_v2_152: 19 -> 9 s). TF2's equality (the default) is back after."""
    import tensorflow as tf

    tf.compat.v1.disable_tensor_equality()
    try:
        yield
    finally:
        tf.compat.v1.enable_tensor_equality()


def packages_imported(modules: str, package: str, env=None) -> list[str]:
    """The modules of ``package`` a fresh interpreter holds after ``import <modules>``, run from the
    checkout (so its deepbc is the one imported)."""
    import json
    import subprocess
    import sys

    code = (f"import json, sys, {modules}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == {package!r})[:3]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """The workflow script ``workflow_scripts/<name>.py`` as a module, to run in this process: ``main(argv)``
    raises on failure, ``deepbc.jobs.logs.run_main(main, argv)`` returns its exit code as the rule sees it.
    (A subprocess only where the process itself is the point: ``run_script``.)"""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"workflow_script_{name}", ROOT / "workflow_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args, env: dict | None = None, timeout: float = 600, **kwargs):
    """``workflow_scripts/<name>.py`` in a fresh Python, as a rule runs it (this checkout's deepbc):
    the CompletedProcess, output captured as text."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "workflow_scripts" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, **kwargs)


def build_network(name: str, num_classes: int, size: int | None = None, is_training: bool = False):
    """Build ``name`` in a fresh graph on a [1, size, size, 3] placeholder (default: the network's own
    size); return (graph, logits, end_points)."""
    import tensorflow as tf

    from deepbc.training.nets import NETWORKS, get_network_fn

    size = size or NETWORKS[name].default_image_size
    graph = tf.Graph()
    with graph.as_default(), identity_equality():
        images = tf.compat.v1.placeholder(tf.float32, [1, size, size, 3])
        logits, end_points = get_network_fn(name, num_classes, is_training=is_training)(images)
    return graph, logits, end_points
