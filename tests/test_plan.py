"""The runs and target lists a config asks for (deepbc.workflow.plan), as the rules get them."""

import re

import pytest

from deepbc.data import runs
from deepbc.workflow import plan
from tests.conftest import validated_config


def test_the_demo_plan():
    demo = plan.Plan(validated_config("config.yaml"))
    assert list(demo.runs) == ["cancer_types", "benign_vs_malignant", "benign_vs_malignant__image_level",
                               "benign_subtypes", "malignant_subtypes"]
    run = demo.runs["benign_vs_malignant__image_level"]
    assert (run.task, run.protocol, run.dataset, run.external) == ("benign_vs_malignant", "image", "breakhis", False)
    assert run.manifest == run.test_manifest == "results/manifest/breakhis.parquet"
    assert run.store == "results/encoded/breakhis/store.json" and run.classes == ("benign", "malignant")
    assert {r.folds for r in demo.runs.values()} == {(0,)}
    assert demo.archs == ["resnet_small"] and demo.datasets == ["breakhis", "tma"]
    assert demo.models() == [f"results/models/{r}/resnet_small/fold0/settings.json" for r in demo.runs]
    assert len(demo.shards()) == 5 * 3
    tables = demo.tables()
    assert "results/tables/leakage.md" in tables and "results/tables/magnification.tex" in tables
    assert "results/tables/benign_subtypes_per_class.md" in tables
    assert len(tables) == 4 * 3 + 4 * 2 + 2 + 2 + 3 + 3
    assert demo.pooled_files([demo.runs["cancer_types"]]) == ["results/metrics/cancer_types/resnet_small/pooled.json"]
    # ROC and calibration per task; confusion and training per run; Grad-CAM per model.
    assert len(demo.figures()) == 4 * 2 * 2 + 5 * 2 * 2 + 5
    assert [r.name for r in demo.magnification_runs()] == ["benign_vs_malignant", "benign_subtypes",
                                                           "malignant_subtypes"]
    assert demo.metrics_files([demo.runs["cancer_types"]]) == ["results/metrics/cancer_types/resnet_small/fold0.json"]


def test_the_paper_plan():
    paper = plan.Plan(validated_config("paper.yaml"))
    # 16 runs of 5 folds (4 tasks under 3 protocols, 4 one-magnification tasks patient-wise), and 4
    # Spanhol-protocol runs of 5 repeated holdouts (a repeat is a fold).
    assert len(paper.runs) == 20 and len(paper.archs) == 7
    assert paper.runs["benign_subtypes__augmented_image_level"].protocol == "augmented_image"
    assert {r.folds for r in paper.runs.values()} == {(0, 1, 2, 3, 4)}
    assert paper.runs["benign_vs_malignant_40X_spanhol"].split_settings["scheme"] == "repeated_holdout"
    assert len(paper.models()) == 20 * 7 * 5 == 700
    # Each run's splits parquet and its audit (JSON, CSV, Markdown).
    assert len(paper.exports()) == 700 and len(paper.split_tables()) == 20 * 4
    assert "results/splits/benign_subtypes.audit.md" in paper.split_tables()
    assert paper.runs["benign_vs_malignant_40X"].magnification == "40X"


def test_an_external_run_is_tested_on_its_own_dataset():
    study = plan.Plan(validated_config("paper.yaml", "external_example.yaml"))
    run = study.runs["hospital_a_to_b"]
    assert run.external and run.dataset == "hospital_a" and run.test_dataset == "hospital_b"
    assert run.test_manifest == "results/manifest/hospital_b.parquet" != run.manifest
    assert run.test_store == "results/encoded/hospital_b/store.json"
    assert "leakage" not in " ".join(study.tables())  # external runs run the patient protocol only
    assert study.manifests() == [plan.manifest(d) for d in ["breakhis", "breakhis_site_b", "hospital_a", "hospital_b"]]


def test_a_runs_folds_follow_its_split_scheme(tmp_path):
    """A repeat of a repeated holdout is a fold (results/.../fold{r}); a predefined split has fold 0
    only, whatever splits.k and folds say."""
    predefined = tmp_path / "split.csv"
    predefined.write_text("key,split\n")
    config = validated_config("paper.yaml")
    config["folds"] = ["0", "4"]
    config["task_definitions"]["benign_vs_malignant_40X_spanhol"]["splits"] = {
        "scheme": "repeated_holdout", "repeats": 7}
    config["task_definitions"]["benign_subtypes"]["splits"] = {"predefined": str(predefined)}
    config["task_definitions"]["benign_subtypes"]["protocols"] = ["patient"]
    study = plan.Plan(config)
    assert study.runs["benign_vs_malignant_40X_spanhol"].folds == (0, 4)
    assert study.runs["benign_subtypes"].folds == (0,) and study.runs["benign_vs_malignant"].folds == (0, 4)
    assert "results/metrics/benign_subtypes/inception_v4/fold0.json" in study.metrics_files()
    assert not [f for f in study.metrics_files() if f.startswith("results/metrics/benign_subtypes/")
                and not f.endswith("fold0.json")]
    config["folds"] = "all"
    assert plan.Plan(config).runs["benign_vs_malignant_40X_spanhol"].folds == tuple(range(7))


def test_model_fold_names_keep_repeat_0_as_the_fold():
    assert [runs.model_fold(3, r) for r in range(3)] == ["3", "3_r1", "3_r2"]
    assert [runs.parse_model_fold(n) for n in ("3", "3_r1", "12_r10")] == [(3, 0), (3, 1), (12, 10)]
    assert runs.model_label("3") == "fold 3" and runs.model_label("3_r2") == "fold 3, repeat 2"
    assert runs.parse_repeat_suffix("") == 0 and runs.parse_repeat_suffix("_r4") == 4
    # Repeat 0 has one name only: "3_r0" would be a second path to the same model.
    for bad in ("3_r0", "3r1", "_r1", "3_r", "x", "3_r01"):
        with pytest.raises(ValueError, match="not a fold"):
            runs.parse_model_fold(bad)
        assert not re.fullmatch(runs.MODEL_FOLD, bad)


def test_training_repeats_multiply_the_models_and_keep_repeat_0s_paths_and_seed():
    config = validated_config("config.yaml")
    assert config["train"]["repeats"] == 1
    one = plan.Plan(config)
    config["train"]["repeats"] = 3
    three = plan.Plan(config)
    assert three.repeats == [0, 1, 2]
    run = ["cancer_types"]
    assert three.models() == [f"results/models/{r}/resnet_small/fold0{s}/settings.json"
                              for r in three.runs for s in ("", "_r1", "_r2")]
    assert set(one.models()) < set(three.models()) and len(three.models()) == 3 * len(one.models())
    assert three.metrics_files(run) == [f"results/metrics/cancer_types/resnet_small/fold0{s}.json"
                                        for s in ("", "_r1", "_r2")]
    assert three.pooled_files(run) == [f"results/metrics/cancer_types/resnet_small/pooled{s}.json"
                                       for s in ("", "_r1", "_r2")]
    assert three.predictions_files(run, repeats=[2]) == [
        "results/predictions/cancer_types/resnet_small/fold0_r2.parquet"]
    # The splits and shards are a fold's, shared by its repeats; figures and exports are repeat 0's.
    assert three.shards() == one.shards() and three.split_tables() == one.split_tables()
    assert three.figures() == one.figures() and three.exports() == one.exports()
    assert three.tables() == one.tables()
    # Repeat 0 trains with the config's seed, as without repeats; the others with seeds of their own.
    seeds = [three.train_seed(f) for f in ("0", "0_r1", "0_r2", "1", "1_r1")]
    assert seeds[0] == seeds[3] == config["seed"] == one.train_seed("0")
    assert len(set(seeds[:3])) == 3 and seeds[1] == seeds[4] and all(0 <= s < 2**31 for s in seeds)
    assert seeds[1] == plan.repeat_seed(config["seed"], 1) != plan.repeat_seed(config["seed"] + 1, 1)
