"""bfloat16 parity: ``precision: mixed`` against ``fp32`` on the demo's tasks, several seeds each.

The demo's data, stores and fold-0 indexes are made once by the workflow itself (``snakemake``
up to the shard indexes of every patient-wise run); then, in one process, each run's model is
trained (``deepbc.training.train.train`` with the demo's settings for it) at each precision and
seed, and its test split predicted (``deepbc.evaluation.inference.predict_shards``) and scored at
the patient level (``deepbc.evaluation.metrics.compute_metrics``, mean probability per patient, no
bootstrap). Reported per run and precision, over the seeds: the kept and the last validation loss,
patient-level accuracy, balanced accuracy and macro AUC (mean, standard deviation, each seed's), and
per figure the difference of the means against the seed-to-seed spread (the larger of the two
standard deviations): within it, the precisions are not told apart by these seeds.

Where the CPU has no bfloat16 instructions, ``mixed`` computes in float32 (the result says what
each run computed in, and the CPU's flags); ``emulate`` then pretends the flags are there, so
oneDNN's rewrite runs in emulation (slow, but the same arithmetic) where the CPU has AVX512F; on an
AVX2-only CPU oneDNN has no bfloat16 at all, and ``emulate`` is refused.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path

from deepbc.bench import common, end_to_end

LOG = logging.getLogger("deepbc.bench.parity")
PRECISIONS = ("fp32", "mixed")
FIGURES = ("val_loss_kept", "val_loss_last", "patient_accuracy", "patient_balanced_accuracy", "patient_auc")


def run(seeds=(1, 2, 3), runs: list[str] | None = None, steps: int | None = None, threads: int = 2,
        workdir: str | None = None, emulate: bool = False, one_process: bool = True) -> dict:
    from deepbc.training import precision

    flags = sorted(precision.cpu_flags() & set(precision.BF16_CPU_FLAGS))
    if emulate and not precision.onednn_bfloat16():
        # Pretending the flags would compare float32 with float32 and call it parity.
        raise RuntimeError("--emulate: TensorFlow's oneDNN cannot compute bfloat16 on this CPU, not even emulated "
                           "(it needs AVX512F); run the parity benchmark on a CPU with AVX512F")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="parity-") as tmp:
        wd = Path(tmp) / "wd"
        config = demo_config()
        names = runs or _patient_runs(config)
        targets = [f"results/tfrecords/{r}/fold0/{s}.json" for r in names for s in ("train", "val", "test")]
        LOG.info("making the demo's shards: %s", ", ".join(names))
        wd.mkdir(parents=True)
        common.timed_command(end_to_end.snakemake_command(wd, threads, [], [], targets), env=end_to_end.job_environment(),
                             log_path=Path(tmp) / "snakemake.log")
        results = []
        with common.runner(one_process) as call:
            for name in names:
                for seed in seeds:
                    for requested in PRECISIONS:
                        LOG.info("%s seed %d %s", name, seed, requested)
                        results.append(call(train_and_score, wd, name, seed, requested, steps, threads, emulate))
    return {"seeds": list(seeds), "runs": names, "threads": threads, "emulated": emulate,
            "onednn_bfloat16": precision.onednn_bfloat16(),
            "cpu_bf16_flags": flags, "steps": steps, "results": results, "summary": summarise(results)}


def demo_config() -> dict:
    """config/config.yaml as the workflow validates it (the schema's defaults filled in)."""
    import yaml
    from snakemake.utils import validate

    config_dir = end_to_end.SNAKEFILE.parent / "config"
    config = yaml.safe_load((config_dir / "config.yaml").read_text())
    validate(config, str(config_dir / "schema.yaml"))
    return config


def _patient_runs(config: dict) -> list[str]:
    from deepbc.data.runs import parse_run
    from deepbc.workflow import config as wfconfig

    return [r for r in wfconfig.runs(config) if parse_run(r)[1] == "patient"]


def train_and_score(wd: Path, name: str, seed: int, requested: str, steps: int | None, threads: int,
                    emulate: bool) -> dict:
    import pandas as pd

    from deepbc.data.runs import parse_run
    from deepbc.evaluation import inference, metrics
    from deepbc.training import precision, train
    from deepbc.training.settings import build
    from deepbc.workflow import config as wfconfig

    if emulate:
        precision.cpu_flags = lambda cpuinfo=None: {"avx512f", "avx512_bf16"}
    config = demo_config()
    arch = config["architectures"][0]
    values = wfconfig.train_settings(config, parse_run(name)[0], arch)
    values = dict(values, precision=requested, **({"max_number_of_steps": steps} if steps else {}))
    settings = build(values, arch)
    folder = wd / "results" / "tfrecords" / name / "fold0"
    with tempfile.TemporaryDirectory(dir=wd) as tmp:
        model = Path(tmp) / "model"
        summary = train.train(folder / "train.json", folder / "val.json", model, Path(tmp) / "state", arch, settings,
                              seed, threads=threads)
        curve = pd.read_csv(model / "training.csv")
        predictions = inference.predict_shards(model, folder / "test.json", Path(tmp) / "test.parquet",
                                               threads=threads)
    scored = metrics.compute_metrics(predictions, summary["class_names"], n_boot=0)
    patient = scored["patient_level"]["mean_probability"]
    evaluated = curve.dropna(subset=["val_loss"])
    return {"run": name, "seed": seed, "requested": requested, "precision": summary["precision"],
            "val_loss_kept": float(evaluated.loc[evaluated["step"] == summary["best_step"], "val_loss"].iloc[0]),
            "val_loss_last": float(evaluated["val_loss"].iloc[-1]),
            "patient_accuracy": patient["accuracy"], "patient_balanced_accuracy": patient["balanced_accuracy"],
            "patient_auc": patient["auc"], "n_patients": scored["n_patients"], "steps": int(curve["step"].iloc[-1])}


def summarise(results: list[dict]) -> dict:
    """Per run: each precision's mean, standard deviation and values of every figure over the seeds,
    and the difference of the means (mixed - fp32) against the larger standard deviation."""
    out = {}
    for name in dict.fromkeys(r["run"] for r in results):
        by = {p: [r for r in results if r["run"] == name and r["requested"] == p] for p in PRECISIONS}
        entry = {"computed_in": {p: sorted({r["precision"] for r in rs}) for p, rs in by.items()}}
        for figure in FIGURES:
            values = {p: [r[figure] for r in rs if r[figure] is not None] for p, rs in by.items()}
            stats = {p: {"mean": round(statistics.fmean(v), 4), "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None,
                         "values": [round(x, 4) for x in v]} for p, v in values.items() if v}
            if len(stats) == 2:
                spread = max(s["sd"] or 0.0 for s in stats.values())
                diff = stats["mixed"]["mean"] - stats["fp32"]["mean"]
                stats["mixed_minus_fp32"] = round(diff, 4)
                stats["within_seed_spread"] = abs(diff) <= spread
            entry[figure] = stats
        out[name] = entry
    return out
