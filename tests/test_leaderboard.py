"""deepbc.results.leaderboard: a benchmark's published figures beside this workflow's, from synthetic
pooled metrics; the leaderboards a task may name; the check that a task is the leaderboard's."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from deepbc.evaluation import metrics
from deepbc.jobs import schema
from deepbc.jobs.atomic import write_json
from deepbc.jobs.errors import UserError
from deepbc.results import leaderboard
from deepbc.training import train
from deepbc.workflow import config as wfconfig
from tests import trainkit
from tests.conftest import validated_config
from tests.resultkit import predictions, results, run_results, split_audit

ROOT = Path(__file__).resolve().parents[1]
EVA = ["TA", "MC", "F", "DC"]
PROBE, FINETUNE = "breakhis_eva_linear_probe", "breakhis_eva_finetune"
LABEL = "predefined split, 4 patients on two sides"


def fold(n_wrong: int) -> pd.DataFrame:
    """8 test patients, 2 per class, 3 images each; the first ``n_wrong`` patients' images called DC or TA."""
    rows = []
    for i in range(8):
        label = EVA[i % 4]
        pred = (EVA[3] if label != EVA[3] else EVA[0]) if i < n_wrong else label
        rows += [(f"14-{i}", label, pred, 0.7)] * 3
    return predictions(rows, EVA)


def eva_results(tmp_path):
    """Per-fold and pooled metrics of both tasks' one split (its audit in meta.split), and each
    model's settings.json as training writes it (its stages from deepbc.training.train.stage_plan)."""
    audit = split_audit(tmp_path / "audit.json", 4, predefined="config/splits/eva_breakhis_v2_40X.csv",
                        predefined_key="slide", allow_straddling=True)
    runs, models = [], []
    for task, n_wrong, stage2 in ((PROBE, 3, 0), (FINETUNE, 1, 3000)):
        fold_metrics, pooled = run_results(task, {0: fold(n_wrong)}, arch="resnet_v1_50", classes=EVA,
                                           magnification="40X", n_boot=50)
        for m in fold_metrics:
            m["meta"]["split"] = metrics.split_meta(audit, 0)
        runs.append((fold_metrics, pooled))
        settings = trainkit.settings(init="imagenet", stage2_steps=stage2, max_number_of_steps=3000)
        path = tmp_path / "results" / "models" / task / "resnet_v1_50" / "fold0" / "settings.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"arch": "resnet_v1_50", "settings": {"init": settings.init},
                                    "stages": train.stage_plan(settings)}))
        models.append(path)
    return (*results(*runs), models)


def test_the_leaderboard_prints_the_published_rows_apart_from_ours(tmp_path):
    fold_metrics, pooled, models = eva_results(tmp_path)
    table = leaderboard.leaderboard_table(fold_metrics, pooled, models, {PROBE: "eva_breakhis",
                                                                         FINETUNE: "eva_breakhis"})
    ours = table[table["source"] == leaderboard.THIS_WORKFLOW]
    published = table[table["source"] == leaderboard.PUBLISHED]
    assert list(ours["task"]) == [FINETUNE, PROBE] and set(ours["split"]) == {LABEL}
    assert ours["training"].tolist() == [
        "fine-tuned from ImageNet (logits 3,000 steps then all_layers 3,000 steps)",
        "linear probe: ImageNet weights kept, logits trained (logits 3,000 steps)"]
    # Ours: eva's metric (balanced accuracy over images) from the pooled JSON, with its interval.
    by_task = {p["meta"]["task"]: p for p in pooled}
    for _, r in ours.iterrows():
        assert r["image_balanced_accuracy"] == by_task[r["task"]]["image_level"]["balanced_accuracy"]
        assert r["image_balanced_accuracy_ci_low"] <= r["image_balanced_accuracy"] <= r[
            "image_balanced_accuracy_ci_high"]
        assert (r["n_images"], r["n_patients"]) == (24, 8)
    # Theirs: every figure of eva's file, the figure alone, best first.
    board = yaml.safe_load((ROOT / "deepbc" / "results" / "eva_leaderboard.yaml").read_text())
    assert published["image_balanced_accuracy"].tolist() == sorted((f["value"] for f in board["figures"]),
                                                                  reverse=True)
    assert published["n_images"].isna().all() and published["image_balanced_accuracy_ci_low"].isna().all()
    uni2 = published[published["model"].str.startswith("UNI2-h")].iloc[0]
    assert uni2["image_balanced_accuracy"] == 0.859

    leaderboard.write_leaderboard(table, tmp_path / "l.csv", tmp_path / "l.md")
    md = (tmp_path / "l.md").read_text()
    assert "| published (other pipeline, not run here) |  | UNI2-h - DINOv2 ViT-H14 \\| 250k slides | frozen backbone, " \
           "linear head (eva) |" in md
    assert "| 0.859 (published) | – |" in md and "| 0.717 (published) | – |" in md
    assert f"| this workflow | {PROBE} | resnet_v1_50 | linear probe" in md
    assert "Published elsewhere, not run here: eva pathology leaderboard (kaiko.ai), https://github.com/kaiko-ai/eva, " \
           "file tools/data/leaderboards/pathology.csv (column breakhis) at commit " \
           "73b61a797bfda8daf232f6abea2bc87ac614589c (2026-04-29)" in md
    assert "Not a like-for-like comparison: the backbone" in md and leaderboard.PROBE_NOTE in md
    assert f"Split of {FINETUNE}, {PROBE}: {LABEL}: one split" in md
    csv = pd.read_csv(tmp_path / "l.csv")
    assert csv["source"].value_counts().to_dict() == {leaderboard.PUBLISHED: 15, leaderboard.THIS_WORKFLOW: 2}


def test_the_rules_script_writes_the_table_from_the_jobs_files(tmp_path):
    fold_metrics, pooled, models = eva_results(tmp_path)
    paths = {"metrics": [], "pooled": []}
    for kind, items in (("metrics", fold_metrics), ("pooled", pooled)):
        for i, item in enumerate(items):
            paths[kind].append(str(tmp_path / f"{kind}{i}.json"))
            write_json(paths[kind][-1], item)
    out = tmp_path / "tables" / "leaderboard"
    trainkit.script("make_leaderboard").main([
        "--metrics", *paths["metrics"], "--pooled", *paths["pooled"], "--models", *map(str, models),
        "--leaderboards", json.dumps({PROBE: "eva_breakhis", FINETUNE: "eva_breakhis"}),
        "--out-csv", f"{out}.csv", "--out-md", f"{out}.md"])
    assert pd.read_csv(f"{out}.csv")["task"].dropna().tolist() == [FINETUNE, PROBE]
    assert "| 0.859 (published) |" in Path(f"{out}.md").read_text()


def test_every_model_row_needs_its_settings(tmp_path):
    fold_metrics, pooled, models = eva_results(tmp_path)
    with pytest.raises(UserError, match=f"no model settings for {PROBE}/resnet_v1_50"):
        leaderboard.leaderboard_table(fold_metrics, pooled, models[1:], {PROBE: "eva_breakhis",
                                                                         FINETUNE: "eva_breakhis"})


def test_the_schema_offers_the_leaderboards_there_are():
    offered = schema.load()["properties"]["task_definitions"]["additionalProperties"]["properties"]["leaderboard"]
    assert offered["enum"] == sorted(leaderboard.LEADERBOARDS)


@pytest.mark.parametrize("name", sorted(leaderboard.LEADERBOARDS))
def test_a_leaderboards_split_is_the_file_it_names(name):
    board = leaderboard.load_leaderboard(name)
    assert hashlib.sha256((ROOT / board["split"]).read_bytes()).hexdigest() == board["split_sha256"]


@pytest.mark.parametrize("change, message", [
    ({"classes": ["TA", "MC", "F", "PT"]}, "whose figures are of classes ['TA', 'MC', 'F', 'DC'] at 40X"),
    ({"magnification": "100X"}, "magnification 100X) is compared with leaderboard 'eva_breakhis'"),
    ({"splits": {"predefined": ""}}, "is not split as its figures are"),
    ({"splits": {"predefined_key": "patient"}}, "is not split as its figures are"),
])
def test_a_task_compared_with_a_leaderboard_must_be_its_task(monkeypatch, tmp_path, change, message):
    monkeypatch.chdir(ROOT)  # the config's split path is relative to the repository
    config = validated_config("eva_breakhis.yaml")
    wfconfig.check(config)
    task = config["task_definitions"][PROBE]
    for key, value in change.items():
        task[key] = {**task.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(UserError) as err:
        wfconfig.check(config)
    assert message in str(err.value) and f"config key task_definitions.{PROBE}.leaderboard" in str(err.value)
    assert "splits.predefined config/splits/eva_breakhis_v2_40X.csv (predefined_key slide)" in str(err.value)


def test_another_file_than_the_published_split_is_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    edited = tmp_path / "edited.csv"
    edited.write_text((ROOT / "config" / "splits" / "eva_breakhis_v2_40X.csv").read_text().replace(
        "14-16184CD,test", "14-16184CD,train"))
    config = validated_config("eva_breakhis.yaml")
    config["task_definitions"][FINETUNE]["splits"] = {**config["splits"], "predefined": str(edited)}
    with pytest.raises(UserError, match=f"task '{FINETUNE}' is compared with leaderboard 'eva_breakhis' but is not "
                                        "split as its figures are"):
        wfconfig.check(config)
