"""The runs and target lists a config asks for (deepbc.workflow.plan), as the rules get them."""

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
