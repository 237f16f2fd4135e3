"""What a validated config asks the workflow to make: its runs (a task under one protocol, with its
datasets, manifests and stores), folds, architectures and datasets, and the target lists behind the
named rules (all, manifests, splits, shards, models, tables, figures, exports). The results' file
layout is here too, once. rules/common.smk builds one ``Plan``; the rules ask it; tests import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from deepbc.data import datasets as datasets_config
from deepbc.data.runs import SPLITS, model_fold, parse_model_fold, parse_run, repeat_suffix
from deepbc.workflow import config as wfconfig

# --------------------------------------------------------------------------------------------
# The results' layout
# --------------------------------------------------------------------------------------------


def manifest(dataset: str) -> str:
    return f"results/manifest/{dataset}.parquet"


def store_index(dataset: str) -> str:
    """The index of a dataset's encoded store (deepbc.shards.writer.encode_store)."""
    return f"results/encoded/{dataset}/store.json"


def splits(run: str) -> str:
    return f"results/splits/{run}.parquet"


def split_audit(run: str, ext: str) -> str:
    """The split's audit (deepbc.data.splits.audit): json (read by the metrics), csv or md."""
    return f"results/splits/{run}.audit.{ext}"


AUDIT_FORMATS = ("json", "csv", "md")


def shard_index(run: str, fold, split: str) -> str:
    return f"results/tfrecords/{run}/fold{fold}/{split}.json"


# A model's ``fold`` below is a model fold: the fold, or a fold's repeat (deepbc.data.runs.model_fold).
def model_dir(run: str, arch: str, fold) -> str:
    return f"results/models/{run}/{arch}/fold{fold}"


def predictions(run: str, arch: str, fold) -> str:
    return f"results/predictions/{run}/{arch}/fold{fold}.parquet"


def metrics(run: str, arch: str, fold) -> str:
    return f"results/metrics/{run}/{arch}/fold{fold}.json"


def pooled_metrics(run: str, arch: str, repeat: int = 0) -> str:
    """The figures of a run and architecture's repeat over all its test folds (deepbc.evaluation.pooled)."""
    return f"results/metrics/{run}/{arch}/pooled{repeat_suffix(repeat)}.json"


def repeat_seed(seed: int, repeat: int) -> int:
    """The training seed of a fold's repeat: ``seed`` for repeat 0 (the model trained without
    repeats, so that adding repeats retrains nothing); for repeat r > 0 the first four bytes of
    sha256("{seed}/repeat{r}"), little-endian, modulo 2**31: a function of both, far from the
    seeds next to ``seed`` (which another study might use), within every library's seed range."""
    if repeat == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}/repeat{int(repeat)}".encode("ascii")).digest()
    return int.from_bytes(digest[:4], "little") % 2**31


def predict_patient_options(run: str, arch: str, fold, folder: str) -> list[str]:
    """predict_folder.py's per-patient arguments, when new_images/{folder}.patients.csv exists."""
    csv = f"new_images/{folder}.patients.csv"
    if not os.path.exists(csv):
        return []
    return ["--patients-csv", csv,
            "--out-patients", f"results/new_predictions/{run}/{arch}/fold{fold}/{folder}.patients.csv"]


# --------------------------------------------------------------------------------------------
# Runs and targets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """A task under one protocol: trained and validated on ``dataset``, tested on ``test_dataset``
    (another dataset for external validation, else the same)."""

    name: str
    task: str
    protocol: str
    dataset: str
    test_dataset: str
    classes: tuple[str, ...]
    magnification: str
    # The folds (or repeats, or the one predefined split) run, and the split settings that make them.
    folds: tuple[int, ...]
    definition: dict = dataclasses.field(compare=False, repr=False)
    split_settings: dict = dataclasses.field(compare=False, repr=False)

    @property
    def external(self) -> bool:
        return self.test_dataset != self.dataset

    @property
    def manifest(self) -> str:
        return manifest(self.dataset)

    @property
    def test_manifest(self) -> str:
        """The manifest of the run's test images (their patient grouping)."""
        return manifest(self.test_dataset)

    @property
    def store(self) -> str:
        return store_index(self.dataset)

    @property
    def test_store(self) -> str:
        return store_index(self.test_dataset)


class Plan:
    """The runs and targets of a validated config (``wfconfig.check`` passed)."""

    def __init__(self, config: dict):
        self.config = config
        self.tasks = wfconfig.selected_tasks(config)
        self.runs = {name: self._run(name) for name in wfconfig.runs(config)}
        # Each fold's trainings (train.repeats): the tables average over them.
        self.repeats = list(range(config["train"]["repeats"]))
        self.archs = list(config["architectures"])
        # Each dataset entry with the breakhis_dir/tma_dir/tma_patients_csv shortcuts applied.
        self.dataset_specs = datasets_config.resolve(config)
        self.datasets = datasets_config.used(config)

    def _run(self, name: str) -> Run:
        task, protocol = parse_run(name)
        spec = self.tasks[task]
        return Run(name, task, protocol, spec["dataset"], spec.get("test_dataset") or spec["dataset"],
                   tuple(spec["classes"]), spec["magnification"], tuple(wfconfig.folds(self.config, task)), spec,
                   wfconfig.split_settings(self.config, task))

    def runs_of_task(self, task: str) -> list[Run]:
        return [r for r in self.runs.values() if r.task == task]

    def patient_runs(self) -> list[Run]:
        return [r for r in self.runs.values() if r.protocol == "patient"]

    def leaderboards(self) -> dict:
        """{task: leaderboard} of the selected tasks compared with a published leaderboard."""
        return {task: spec["leaderboard"] for task, spec in self.tasks.items() if spec.get("leaderboard")}

    def leaderboard_runs(self) -> list[Run]:
        """The patient-wise runs of those tasks (results/tables/leaderboard.md)."""
        return [r for r in self.patient_runs() if r.task in self.leaderboards()]

    def magnification_runs(self) -> list[Run]:
        """The patient-wise runs tested on a BreakHis-kind dataset: the only test images with magnifications."""
        return [r for r in self.patient_runs() if self.dataset_specs[r.test_dataset]["kind"] == "breakhis"]

    def dataset_root(self, dataset: str) -> str:
        return datasets_config.root(self.dataset_specs, dataset)

    # The files of (run, arch, fold) combinations; ``runs``: Run objects or names (default: all).
    def _names(self, runs=None) -> list[str]:
        return [r if isinstance(r, str) else r.name for r in (self.runs.values() if runs is None else runs)]

    # ``repeats``: which of each fold's repeats (default: all); ``pattern`` gets the model fold.
    def _each(self, pattern, runs=None, archs=None, repeats=None) -> list[str]:
        chosen = [self.runs[name] for name in self._names(runs)]
        return [pattern(run.name, arch, model_fold(fold, repeat)) for run in chosen for arch in (archs or self.archs)
                for fold in run.folds for repeat in (self.repeats if repeats is None else repeats)]

    def train_seed(self, fold) -> int:
        """The training seed of a model fold (``repeat_seed``)."""
        return repeat_seed(self.config["seed"], parse_model_fold(fold)[1])

    def metrics_files(self, runs=None) -> list[str]:
        return self._each(metrics, runs)

    def pooled_files(self, runs=None) -> list[str]:
        """The pooled metrics of each (run, architecture, repeat)."""
        return [pooled_metrics(run, arch, repeat) for run in self._names(runs) for arch in self.archs
                for repeat in self.repeats]

    def split_audits(self, runs=None) -> list[str]:
        """The split audit JSON of each run (what its figures' titles say of the split)."""
        return [split_audit(run, "json") for run in self._names(runs)]

    def predictions_files(self, runs=None, archs=None, repeats=None) -> list[str]:
        return self._each(predictions, runs, archs, repeats)

    def model_files(self, name: str, runs=None, archs=None, repeats=None) -> list[str]:
        """A file of each model (name: settings.json or training.csv)."""
        return self._each(lambda run, arch, fold: f"{model_dir(run, arch, fold)}/{name}", runs, archs, repeats)

    def model_fingerprints(self, runs) -> list[str]:
        return [self.model_fingerprint(r.name, arch) for r in runs for arch in self.archs]

    def model_fingerprint(self, run: str, arch: str) -> str:
        return wfconfig.model_fingerprint(self.config, run, arch)

    # The named targets.
    def manifests(self) -> list[str]:
        return [manifest(d) for d in self.datasets]

    def split_tables(self) -> list[str]:
        """Each run's splits and their audit."""
        return [f for r in self.runs for f in (splits(r), *(split_audit(r, ext) for ext in AUDIT_FORMATS))]

    def shards(self) -> list[str]:
        return [shard_index(run.name, fold, split) for run in self.runs.values() for fold in run.folds
                for split in SPLITS]

    def models(self) -> list[str]:
        return self.model_files("settings.json")

    def exports(self) -> list[str]:
        """Repeat 0's models (a repeat's export can be asked for by its path)."""
        return self._each(lambda run, arch, fold: f"results/export/{run}/{arch}/fold{fold}", repeats=[0])

    def tables(self) -> list[str]:
        files = [f"results/tables/{task}.{ext}" for task in self.tasks for ext in ("csv", "md", "tex")]
        files += [f"results/tables/{task}_per_class.{ext}" for task in self.tasks for ext in ("csv", "md")]
        files += [f"results/tables/summary.{ext}" for ext in ("csv", "md")]
        if wfconfig.has_both_protocols(self.config):
            files += [f"results/tables/leakage.{ext}" for ext in ("csv", "md")]
        if self.magnification_runs():
            files += [f"results/tables/magnification.{ext}" for ext in ("csv", "md", "tex")]
        if self.leaderboards():
            files += [f"results/tables/leaderboard.{ext}" for ext in ("csv", "md")]
        files += [f"results/tables/calibration.{ext}" for ext in ("csv", "md", "tex")]
        return files

    def figures(self) -> list[str]:
        files = [f"results/figures/{kind}/{task}.{ext}" for kind in ("roc", "calibration") for task in self.tasks
                 for ext in ("png", "pdf")]
        files += [f"results/figures/{kind}/{run}/{arch}.{ext}" for kind in ("confusion", "training")
                  for run in self.runs for arch in self.archs for ext in ("png", "pdf")]
        # Every model's evaluation draws its Grad-CAM; the figures are repeat 0's.
        files += self._each(lambda run, arch, fold: f"results/figures/gradcam/{run}/{arch}/fold{fold}.png",
                            repeats=[0])
        return files

