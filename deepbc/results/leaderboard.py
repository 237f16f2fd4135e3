"""A benchmark's published leaderboard beside this workflow's figures on the same task
(``results/tables/leaderboard.{csv,md}``, made for the tasks with ``leaderboard: <name>``).

The published figures live in a data file per leaderboard (LEADERBOARDS; eva_leaderboard.yaml:
kaiko-ai/eva's BreakHis column, with its file, commit and protocol). None is run here: they come
from another pipeline (eva: frozen foundation-model backbones with a linear head, eva's
preprocessing), so the table prints them in a block of their own, marked "published", and its
notes say what differs. This workflow's rows are the pooled figures of each (task, architecture)
in the leaderboard's metric and level (eva: balanced accuracy over images), with their interval,
beside the patient-level figure, the split that made them (its label: eva's list puts 4 patients
on two sides) and how the network was trained, read from the models' settings.json (a linear
probe trains the logits only).

``check_task`` refuses, before anything runs, a task that is not the leaderboard's (another class
list or magnification, or another split than its published one).
"""

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import yaml

from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError
from deepbc.results.tables import (LABELS, fold_frame, intervals_note, load_metrics, load_pooled, pooled_cell,
                                   pooled_frame, protocol_label, repeats_note, split_notes, spread_columns,
                                   to_markdown, with_pooled)
from deepbc.training.model_dir import retrain

# The leaderboards a task may name (config/schema.yaml's enum of task_definitions.<task>.leaderboard).
LEADERBOARDS = {"eva_breakhis": Path(__file__).parent / "eva_leaderboard.yaml"}
THIS_WORKFLOW = "this workflow"
PUBLISHED = "published (other pipeline, not run here)"
PROBE_NOTE = (
    "Linear probe here: the ImageNet weights are kept and only the logits layer is trained (the "
    "first training stage alone). TF-Slim's networks run batch norm in training mode throughout, "
    "as TF-Slim's own fine-tuning of the last layer does: the probe's backbone keeps its weights "
    "but normalises with statistics of this data (the moving averages follow it), while a frozen "
    "backbone computing embeddings once, as eva's do, keeps all of its own.")


def load_leaderboard(name: str) -> dict:
    if name not in LEADERBOARDS:
        raise UserError(f"unknown leaderboard {name!r}", "leaderboard", f"use one of {sorted(LEADERBOARDS)}")
    return yaml.safe_load(LEADERBOARDS[name].read_text(encoding="utf-8"))


def check_task(name: str, task: dict, split: dict) -> None:
    """A task compared with a leaderboard is its task: the same classes (any order), magnification
    and split (a predefined CSV of the same bytes as the leaderboard's published one)."""
    board = load_leaderboard(task["leaderboard"])
    where = f"config key task_definitions.{name}"
    fix = (f"define the task as the leaderboard's: classes {board['classes']}, magnification "
           f"{board['magnification']}, splits.predefined {board['split']} (predefined_key "
           f"{board['split_key']}), or remove {where}.leaderboard")
    if sorted(task["classes"]) != sorted(board["classes"]) or task["magnification"] != board["magnification"]:
        raise UserError(f"task {name!r} (classes {task['classes']}, magnification {task['magnification']}) is "
                        f"compared with leaderboard {task['leaderboard']!r}, whose figures are of classes "
                        f"{board['classes']} at {board['magnification']}", f"{where}.leaderboard", fix)
    same_split = split["predefined"] and split["predefined_key"] == board["split_key"] and (
        hashlib.sha256(Path(split["predefined"]).read_bytes()).hexdigest() == board["split_sha256"])
    if not same_split:
        raise UserError(f"task {name!r} is compared with leaderboard {task['leaderboard']!r} but is not split "
                        f"as its figures are (the published list {board['split']}, keyed by "
                        f"{board['split_key']})", f"{where}.leaderboard", fix)


def _training(settings_paths) -> pd.DataFrame:
    """(run, arch, training): what trained each model, from its settings.json's stages
    (``results/models/{run}/{arch}/fold{k}/settings.json``)."""
    rows = []
    for path in settings_paths:
        path = Path(path)
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            stages, init = summary["stages"], summary["settings"]["init"]
        except FileNotFoundError:
            raise UserError("model settings not found", str(path), "run the train rule for this model") from None
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"not a model's settings.json ({err!r})", str(path), retrain(path.parent)) from None
        steps = " then ".join(f"{s['name']} {s['steps']:,} steps" for s in stages)
        if init == "imagenet" and all(s["logits_only"] for s in stages):
            text = f"linear probe: ImageNet weights kept, logits trained ({steps})"
        elif init == "imagenet":
            text = f"fine-tuned from ImageNet ({steps})"
        else:
            text = f"trained from scratch ({steps})"
        rows.append({"run": path.parts[-4], "arch": path.parts[-3], "training": text})
    return pd.DataFrame(rows, columns=["run", "arch", "training"])


def leaderboard_table(metrics, pooled, models, leaderboards: dict) -> pd.DataFrame:
    """This workflow's rows (per task and architecture of the patient protocol, the tasks of
    ``leaderboards``, {task: leaderboard name}), then each leaderboard's published rows.

    Columns: leaderboard, source (THIS_WORKFLOW or PUBLISHED), task, model, training, split,
    n_images, n_patients, n_boot, then ``tables.pooled_row``'s columns of the leaderboard's metric
    at image and patient level (``image_balanced_accuracy``, its ``_ci_low``, ``_ci_high``, ``_ci_method``, ...);
    with training repeats, n_repeats and the spread between them (``tables.spread_columns``);
    a published row has the figure alone (no interval, no n). ``attrs``: the split notes and the
    leaderboards' sources."""
    folds = fold_frame(load_metrics(metrics))
    folds = folds[(folds["protocol"] == "patient") & folds["task"].isin(list(leaderboards))]
    if folds.empty:
        raise UserError(f"no patient-wise metrics of the leaderboard tasks {sorted(leaderboards)}", "--metrics",
                        "pass the metrics JSONs of those tasks' runs")
    frame = pooled_frame([p for p in load_pooled(pooled) if p["meta"]["protocol"] == "patient"])
    ours = with_pooled(folds, frame, ["task", "protocol", "arch", "run", "grouping"])
    training = _training(models)
    # The split's label (meta.split, absent from metrics written before it).
    labels = {}
    for run, meta in zip(folds["run"], folds["split"] if "split" in folds.columns else [None] * len(folds)):
        if isinstance(meta, dict):
            labels.setdefault(run, meta["label"])
    boards = {name: load_leaderboard(name) for name in sorted(set(leaderboards.values()))}
    rows = []
    for name, board in boards.items():
        metric = board["metric"]
        shown = [f"{lv}_{metric}{s}" for lv in ("image", "patient")
                 for s in ("", "_ci_low", "_ci_high", "_ci_method", "_k", "_n")]
        # With training repeats: their number and the spread between them (tables.pooled_cell shows it).
        shown += spread_columns(ours, [f"{lv}_{metric}" for lv in ("image", "patient")])
        for _, r in ours[ours["task"].map(leaderboards) == name].sort_values(["task", "arch"]).iterrows():
            trained = training[(training["run"] == r["run"]) & (training["arch"] == r["arch"])]["training"]
            if trained.empty:
                raise UserError(f"no model settings for {r['run']}/{r['arch']}", "--models",
                                "pass results/models/{run}/{arch}/fold{k}/settings.json of every run and "
                                "architecture in --metrics")
            how = "; ".join(dict.fromkeys(trained))
            rows.append({"leaderboard": name, "source": THIS_WORKFLOW, "task": r["task"], "model": r["arch"],
                         "training": how, "split": labels.get(r["run"]) or protocol_label("patient", r["grouping"]),
                         "n_images": r["n_images"], "n_patients": r["n_patients"], "n_boot": r["n_boot"],
                         **{c: r.get(c, math.nan) for c in shown}})
        for fig in sorted(board["figures"], key=lambda f: -f["value"]):
            rows.append({"leaderboard": name, "source": PUBLISHED, "task": "", "model": fig["name"],
                         "training": board["training"], "split": board["split_label"],
                         f"{board['level']}_{metric}": fig["value"]})
    table = pd.DataFrame(rows)
    for col in ("n_images", "n_patients", "n_boot"):
        table[col] = table[col].astype("Int64")
    table.attrs["split_notes"] = split_notes(folds)
    table.attrs["leaderboards"] = boards
    return table


def write_leaderboard(table: pd.DataFrame, out_csv=None, out_md=None) -> None:
    """CSV (numbers) and Markdown: this workflow's rows, then the published ones, per leaderboard;
    notes on each block, the published figures' source, and what differs."""
    boards = table.attrs["leaderboards"]
    blocks, footnotes = [], []
    for name, board in boards.items():
        metric, level = board["metric"], board["level"]
        other = "patient" if level == "image" else "image"
        header = ["source", "task", "model", "training", "split", "test images (patients)",
                  f"{level}-level {LABELS[metric]} [95 % interval]", f"{other}-level {LABELS[metric]}"]
        rows = []
        for _, r in table[table["leaderboard"] == name].iterrows():
            n = "" if pd.isna(r["n_images"]) else f"{r['n_images']} ({r['n_patients']})"
            if r["source"] == PUBLISHED:
                figures = [f"{r[f'{level}_{metric}']:.3f} (published)", "–"]
            else:
                figures = [pooled_cell(r, level, metric), pooled_cell(r, other, metric)]
            rows.append([r["source"], r["task"], r["model"], r["training"], r["split"], n, *figures])
        blocks.append(to_markdown(header, rows, [], f"Leaderboard: {board['task_title']}; this workflow beside "
                                                    f"the {board['source']['title']} (published)"))
        source = board["source"]
        footnotes += [
            f"{THIS_WORKFLOW.capitalize()}: {level}-level {LABELS[metric]} is the leaderboard's metric "
            f"({board['metric_note']}), computed once on the test predictions pooled; the "
            f"{other}-level figure beside it averages each patient's image probabilities first. "
            + " ".join(board["this_workflow_note"].split()),
            f"Published elsewhere, not run here: {source['title']}, {source['repository']}, file "
            f"{source['file']} (column {source['column']}) at commit {source['commit']} ({source['date']}); "
            f"first published {source['first_published']}. " + " ".join(board["protocol_note"].split()),
            "Not a like-for-like comparison: " + " ".join(" ".join(d.split()) for d in board["differences"]),
        ]
    if table["training"].str.startswith("linear probe").any():
        footnotes.append(PROBE_NOTE)
    footnotes.append(intervals_note(table["n_boot"].dropna().max() if table["n_boot"].notna().any() else 0))
    footnotes += repeats_note(table)
    footnotes += list(table.attrs.get("split_notes", []))
    if out_csv:
        atomic.write_csv(out_csv, table)
    if out_md:
        text = "\n".join(blocks)
        atomic.write_text(out_md, text + "\n" + "\n".join(f"- {' '.join(f.split())}" for f in footnotes) + "\n")
