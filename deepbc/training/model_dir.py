"""A trained model's folder, as the trainer publishes it and evaluation reads it, and the session
both build their graphs in.

The folder holds the kept checkpoint (``model.ckpt.*``: the network's variables only, float32),
``training.csv`` (the curve) and ``settings.json`` (the run's summary), written last: its presence
marks a complete model.
"""

import csv
import json
import logging
import shutil
from pathlib import Path

from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError, delete_and_rerun

LOG = logging.getLogger("deepbc.training.model_dir")
MODEL_PREFIX = "model.ckpt"
SETTINGS_FILE = "settings.json"
CURVE_FILE = "training.csv"
CSV_FIELDS = ["step", "stage", "loss", "accuracy", "learning_rate", "images_per_sec",
              "val_loss", "val_accuracy"]
# Written only where the graph computes in float16 (dynamic loss scaling).
LOSS_SCALE_FIELD = "loss_scale"


def checkpoint_prefix(model_dir) -> str:
    return str(Path(model_dir) / MODEL_PREFIX)


def retrain(model_dir) -> str:
    """What to do about a model folder whose files are broken or of an older version."""
    return delete_and_rerun(model_dir, folder=True, remakes="the train rule trains the model again")


def load_settings(model_dir) -> dict:
    path = Path(model_dir) / SETTINGS_FILE
    if not path.exists():
        raise UserError("no trained model here (settings.json is missing)", str(model_dir),
                        "point at a folder results/models/{task}/{arch}/fold{k} written by the train rule")
    return json.loads(path.read_text())


def model_variables(tf, spec) -> list:
    """The network's variables (those under its scope): what the kept checkpoint holds, without the
    optimizer's slots, the global step or a loss scale."""
    return [v for v in tf.compat.v1.global_variables() if v.name.startswith(spec.scope + "/")]


def session_config(tf, threads: int, precision, xla: bool = False):
    """The session ConfigProto of training and evaluation: ``threads`` TensorFlow threads (0: one per
    core), GPU memory taken as needed, the precision's graph rewrite and optionally XLA."""
    from deepbc.training import precision as precision_mod

    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    config.gpu_options.allow_growth = True  # share a leased GPU without grabbing all its memory
    precision_mod.apply_to_config(config, precision, xla)
    return config


def curve_fields(history: list[dict]) -> list[str]:
    return CSV_FIELDS + ([LOSS_SCALE_FIELD] if history and LOSS_SCALE_FIELD in history[0] else [])


def read_history(path: Path, up_to_step: int) -> list[dict]:
    """Rows of a curve up to ``up_to_step`` (a resumed run redoes the later ones)."""
    if not path.exists() or up_to_step == 0:
        return []
    with path.open() as fh:
        rows = [{k: (v if k == "stage" else float(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if r["step"] <= up_to_step]


def write_history(path: Path, history: list[dict]) -> None:
    with atomic.atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, curve_fields(history), lineterminator="\n")
        w.writeheader()
        w.writerows(history)


def published_summary(out_dir: Path, inputs_fingerprint: str) -> dict | None:
    """The summary of a complete model in ``out_dir`` trained with these inputs, else None."""
    settings_json = out_dir / SETTINGS_FILE  # written last by publish
    if not settings_json.is_file():
        return None
    try:
        summary = json.loads(settings_json.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    complete = ((out_dir / CURVE_FILE).is_file() and (out_dir / f"{MODEL_PREFIX}.index").is_file()
                and any(out_dir.glob(f"{MODEL_PREFIX}.data-*")))
    return summary if complete and summary.get("inputs_fingerprint") == inputs_fingerprint else None


def publish(best_dir: Path, out_dir: Path, history: list[dict], summary: dict) -> None:
    """Copy the kept checkpoint (``best_dir/model.ckpt-{best_step}``) and the curve into out_dir;
    settings.json last marks completion."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = f"{MODEL_PREFIX}-{summary['best_step']}"
    sources = sorted(best_dir.glob(kept + ".*"))
    if not sources:
        raise RuntimeError(f"the kept weights of step {summary['best_step']} are missing from {best_dir}")
    for src in sources:
        with atomic.atomic_path(out_dir / (MODEL_PREFIX + src.name[len(kept):])) as tmp:
            shutil.copyfile(src, tmp)
    write_history(out_dir / CURVE_FILE, history)
    atomic.write_json(out_dir / SETTINGS_FILE, summary)
