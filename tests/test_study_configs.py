"""The study configs as a real run would see them: what every training job of config/paper.yaml (and
its overlays) gets, from dry runs, without data or training; and how config files layer."""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from deepbc.jobs import schema
from deepbc.jobs.errors import UserError
from deepbc.training.nets import NETWORKS
from deepbc.workflow import config as wc
from tests.conftest import validated_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
SCHEMA = yaml.safe_load((CONFIG / "schema.yaml").read_text())


def dry_run(workdir, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(workdir), "-n", "-p", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def trained_settings(out: str) -> list[tuple[str, str, dict]]:
    """(run, arch, settings) of every training job in a dry run's printed shell commands."""
    jobs = re.findall(r"train_model\.py\S* --train-index results/tfrecords/([^/]+)/\S* .*?--arch (\S+) "
                      r"--settings-json '([^']*)'", out)
    return [(run, arch, json.loads(text)) for run, arch, text in jobs]


def schema_defaults() -> dict:
    """train.defaults' defaults as the schema writes them (the oracle: read here, not through deepbc)."""
    props = SCHEMA["properties"]["train"]["properties"]["defaults"]["properties"]
    out = {k: v["default"] for k, v in props.items() if "default" in v}
    out["augment"] = {k: v["default"] for k, v in props["augment"]["properties"].items()}
    return out


def expected_settings(study: dict, task: str, arch: str) -> dict:
    """The schema's defaults, then the study's own defaults, per_architecture and per_task values."""
    train = study["train"]
    settings = schema_defaults()
    for layer in (train["defaults"], train.get("per_architecture", {}).get(arch), train.get("per_task", {}).get(task)):
        for key, value in (layer or {}).items():
            settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    settings.setdefault("image_size", NETWORKS[arch].default_image_size)
    return settings


@pytest.mark.parametrize("files", [["paper.yaml"], ["paper.yaml", "external_example.yaml"]])
def test_every_study_training_job_gets_the_networks_size_and_no_demo_value(tmp_path, files):
    """config/paper.yaml left image_size out, meaning "the network's own", and the demo's 64 px came
    in underneath it: every ResNet and Inception trained at 64 px."""
    out = dry_run(tmp_path, "models", "--configfile", *(str(CONFIG / f) for f in files)).stdout
    jobs = trained_settings(out)
    # benchmark_files: false: no job is sampled by Snakemake (the demo's are: tests/test_workflow.py).
    assert "benchmark:" not in out and "train_model.py" in out
    study = validated_config(*files)
    def folds(task):
        """k folds, or the repeats of a repeated holdout (the schema's default count)."""
        split = {**study["splits"], **study["task_definitions"][task].get("splits", {})}
        repeats = SCHEMA["properties"]["splits"]["properties"]["repeats"]["default"]
        return repeats if split["scheme"] == "repeated_holdout" else split["k"]

    runs = [(t, p) for t in study["tasks"] for p in study["task_definitions"][t].get("protocols", ["patient"])]
    # paper.yaml: 16 runs of 5 folds and the 4 Spanhol-protocol tasks' 5 repeats each, 7 architectures.
    assert len(jobs) == sum(folds(t) for t, _ in runs) * len(study["architectures"])
    demo = yaml.safe_load((CONFIG / "config.yaml").read_text())["train"]["defaults"]
    by_arch = {}
    for run, arch, settings in jobs:
        by_arch.setdefault(arch, set()).add(settings["image_size"])
        # The settings of some task: per_task entries (none in the shipped configs) would pick one out.
        expected = expected_settings(study, "", arch)
        if run.endswith("__augmented_image_level"):  # its images are the rotations and mirror images
            expected["augment"] = {**expected["augment"], "rotate": False, "flip": False}
        assert settings == expected, (run, arch)
        inherited = {k for k, v in demo.items() if k not in study["train"]["defaults"] and settings.get(k) == v
                     and v != schema_defaults().get(k)}
        assert not inherited, f"{arch}: demo values {sorted(inherited)}"
    assert by_arch == {arch: {NETWORKS[arch].default_image_size} for arch in study["architectures"]}
    assert by_arch["resnet_v1_50"] == {224} and by_arch["inception_v3"] == {299}


def test_the_eva_config_plans_one_split_of_a_linear_probe_and_a_fine_tune(tmp_path):
    """config/eva_breakhis.yaml: eva's BreakHis task on its published list (patients on two sides
    allowed), one fold, the linear probe (the logits only) and the fine-tune, and the leaderboard."""
    import shutil

    study = validated_config("eva_breakhis.yaml")
    listed = study["splits"]["predefined"]
    # The split's path is relative to the working directory, the repository's in a real run.
    (tmp_path / listed).parent.mkdir(parents=True)
    shutil.copy(ROOT / listed, tmp_path / listed)
    out = dry_run(tmp_path, "--configfile", str(CONFIG / "eva_breakhis.yaml")).stdout
    jobs = re.findall(r"train_model\.py\S* --train-index results/tfrecords/(\w+)/fold(\d+)/train\.json .*?"
                      r"--arch (\S+) --settings-json '([^']*)'", out)
    trained = {(run, fold, arch): json.loads(text) for run, fold, arch, text in jobs}
    probe, finetune = "breakhis_eva_linear_probe", "breakhis_eva_finetune"
    assert sorted(trained) == [(finetune, "0", "resnet_v1_50"), (probe, "0", "resnet_v1_50")]
    assert not re.search(r"fold[1-9]", out)
    for (run, _, arch), settings in trained.items():
        assert settings == expected_settings(study, run, arch), run
    # The probe is the first stage alone (deepbc.training.train.stage_plan: the logits only).
    assert trained[(probe, "0", "resnet_v1_50")]["stage2_steps"] == 0
    assert trained[(finetune, "0", "resnet_v1_50")]["stage2_steps"] == 3000
    assert {s["init"] for s in trained.values()} == {"imagenet"}
    splits = re.findall(r"make_splits\.py\S* .*?--task (\w+) .*?--splits-json '([^']*)'", out)
    assert sorted(t for t, _ in splits) == [finetune, probe]
    for _, text in splits:
        split = json.loads(text)
        assert (split["predefined"], split["predefined_key"], split["allow_straddling"]) == (
            "config/splits/eva_breakhis_v2_40X.csv", "slide", True)
    board = re.search(r"make_leaderboard\.py\S* .*--leaderboards '([^']*)'", out)
    assert board and json.loads(board[1]) == {probe: "eva_breakhis", finetune: "eva_breakhis"}


def test_the_study_trains_with_tf_slims_random_crops():
    """TF-Slim's training preprocessing crops at random (and distorts Inception's colours); the study
    trained every network on the evaluation's central crop."""
    study = validated_config("paper.yaml")
    for task in study["tasks"]:
        for arch in study["architectures"]:
            assert wc.train_settings(study, task, arch)["augment"]["random_crop"] is True, (task, arch)


def test_the_demo_still_comes_from_config_yaml_without_configfile(tmp_path):
    out = dry_run(tmp_path, "results/models/cancer_types/resnet_small/fold0/settings.json").stdout
    [(_, arch, settings)] = trained_settings(out)
    assert arch == "resnet_small" and settings["image_size"] == 64 and settings["max_number_of_steps"] == 60


def test_an_overlay_alone_is_refused_with_advice_that_works(tmp_path):
    """--configfile names the whole config: an overlay alone is not one, and the message says how to
    layer it; doing what it says plans the study."""
    proc = dry_run(tmp_path, "models", "--configfile", str(CONFIG / "cpu_only.yaml"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "the config files given are not a whole config" in out, out[-3000:]
    assert "--configfile config/paper.yaml your_overlay.yaml" in out
    dry_run(tmp_path, "models", "--configfile", str(CONFIG / "paper.yaml"), str(CONFIG / "cpu_only.yaml"))


def test_a_study_on_the_demo_config_is_refused(tmp_path):
    """--config demo=False on the default config would train the demo's 64 px, 60-step settings on real data."""
    proc = dry_run(tmp_path, "--config", "demo=False", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "demo: false on the demo's config" in out, out[-3000:]
    assert "--configfile config/paper.yaml" in out


def test_check_layering():
    demo = CONFIG / "config.yaml"
    with pytest.raises(UserError, match="small-data settings"):
        wc.check_layering({"demo": False}, [], demo)
    with pytest.raises(UserError, match="small-data settings"):
        wc.check_layering({"demo": False}, [demo, CONFIG / "cpu_only.yaml"], demo)
    wc.check_layering({"demo": True}, [], demo)
    wc.check_layering({"demo": False}, [CONFIG / "paper.yaml"], demo)


def test_per_task_settings_must_name_a_defined_task():
    config = validated_config("paper.yaml")
    schema.check(config)
    config["train"]["per_task"] = {"benign_vs_malignent": {"batch_size": 8}}
    with pytest.raises(UserError) as err:
        wc.check(config)
    text = str(err.value)
    assert "['benign_vs_malignent']" in text and "config key train.per_task" in text and "'benign_vs_malignant'" in text


def test_per_architecture_settings_must_name_a_known_network():
    config = validated_config("paper.yaml")
    config["train"]["per_architecture"] = {"resnet_v1_5O": {"batch_size": 8}}
    with pytest.raises(UserError, match=r"resnet_v1_5O(.|\n)*train\.per_architecture"):
        schema.check(config)


@pytest.mark.parametrize("folds", [[-1], [], "abc", ["x"]])
def test_bad_folds_say_what_is_allowed(folds):
    config = {**validated_config("config.yaml"), "folds": folds}
    with pytest.raises(UserError) as err:
        schema.check(config)
    text = str(err.value)
    assert "not valid under any of the given schemas" not in text
    assert "config key folds" in text and "all (every one of a task's splits.k folds, or its splits.repeats holdouts" in text


def test_slurm_gives_each_job_its_threads_and_the_job_uses_them():
    """The SLURM profile asked 8 CPUs for training while paper.yaml's train_threads is 16: TensorFlow
    then ran 16 threads on 8 CPUs. Without cpus_per_task in the profile, the plugin asks for the
    rule's threads."""
    from snakemake_executor_plugin_slurm.partitions import get_job_cpu_requirement

    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    resources = validated_config("paper.yaml")["resources"]
    for rule, threads in (("train", resources["train_threads"]), ("evaluate", resources["eval_threads"]),
                          ("check_dataset", resources["data_threads"])):
        job = SimpleNamespace(threads=threads, resources={**profile["default-resources"],
                                                          **profile["set-resources"].get(rule, {})})
        assert get_job_cpu_requirement(job) == (threads, "task"), rule


def test_job_threads_are_capped_at_the_cpus_given(monkeypatch):
    from deepbc.jobs import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert cli.job_cpus("16") == 4 and cli.job_cpus("2") == 2 and cli.job_cpus("0") == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cli.job_cpus("16") == 3 and cli.job_cpus("0") == 3


def test_documented_commands_put_targets_before_configfile():
    """--configfile takes every word after it: `snakemake -n --configfile X.yaml TARGET` reads TARGET
    as a config file. Every documented command names only config files after --configfile."""
    import shlex

    checked = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), CONFIG / "README.md"]:
        text = doc.read_text().replace("\\\n", " ")
        for command in re.findall(r"snakemake [^`\n]*--configfile[^`\n]*", text):
            checked += 1
            words = shlex.split(command)
            after = words[words.index("--configfile") + 1:]
            files = after[:next((i for i, w in enumerate(after) if w.startswith("-")), len(after))]
            assert files and all(w.endswith((".yaml", ".yml", "...")) for w in files), (doc.name, command)
    assert checked >= 3
