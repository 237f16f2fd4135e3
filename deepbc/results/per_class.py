"""The per-class table of a task (``results/tables/{task}_per_class.{csv,md}``), from the pooled JSONs.

One row per architecture, protocol and class: the class's test patients and images, and at patient
and image level its sensitivity, precision and one-vs-rest AUC over the test predictions pooled
over folds (deepbc.evaluation.pooled), each with its 95 % interval (Wilson with k/n for the
patient-level proportions, the patient bootstrap for the rest; tables.intervals_note). The task
tables' macro figures are means of these. For two classes each class's one-vs-rest AUC is the
task's AUC (one class's probability is 1 minus the other's).
"""

import pandas as pd

from deepbc.data.runs import PROTOCOLS
from deepbc.jobs.errors import UserError
from deepbc.results.tables import (EXTERNAL_NOTE, IMAGE_GROUPED_NOTE, IMAGE_GROUPED, IN_MEMORY, LABELS, LEVELS,
                                   ZERO_WIDTH_NOTE, has_zero_width, intervals_note, load_pooled, pooled_cell,
                                   pooled_row, protocol_label, repeats_note, test_label, write_formats)

PER_CLASS_METRICS = ("sensitivity", "specificity", "precision", "auc")
# Shown in the Markdown; the CSV has the specificity too.
SHOWN = ("sensitivity", "precision", "auc")


def per_class_table(pooled, task: str) -> pd.DataFrame:
    """Columns: task, architecture, protocol, test, class, n_patients, n_images, n_patient_units,
    n_boot, and ``tables.pooled_row``'s columns of PER_CLASS_METRICS at both levels; with repeats,
    n_repeats and the spread between them."""
    pooled = [p for p in load_pooled(pooled) if p["meta"]["task"] == task]
    if not pooled:
        raise UserError(f"no pooled metrics of task {task!r} among the files given", "--pooled",
                        f"pass results/metrics/{{run}}/{{arch}}/pooled.json of task {task}'s runs")
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    rows = []
    for m in sorted(pooled, key=lambda p: (p["meta"]["arch"], order[p["meta"]["protocol"]])):
        meta, counts = m["meta"], m["class_counts"]
        blocks = {"patient": m["patient_level"]["mean_probability"], "image": m["image_level"]}
        for c in m["classes"]:
            row = {"task": task, "architecture": meta["arch"],
                   "protocol": protocol_label(meta["protocol"], meta["grouping"]),
                   "test": test_label(meta.get("test_dataset")), "class": c,
                   "n_patients": counts["patients"][c], "n_images": counts["images"][c],
                   "n_patient_units": counts["patient_units"][c],
                   "n_boot": (m.get("bootstrap") or {}).get("n_boot", 0)}
            if "repeats" in meta:
                row["n_repeats"] = len(meta["repeats"])
            for level in LEVELS:
                block = dict(blocks[level]["per_class"][c])
                if len(m["classes"]) == 2:
                    block.update({"auc": blocks[level]["auc"]})
                    # The task's AUC's interval (and its spread between repeats, when it has them).
                    for part in ("ci95", "ci_method", "spread"):
                        if part in blocks[level]:
                            block[part] = {**(block.get(part) or {}), "auc": (blocks[level][part] or {}).get("auc")}
                row.update(pooled_row(block, level, PER_CLASS_METRICS))
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop(columns=[c for c in table.columns if c.endswith(IN_MEMORY)])


def write_per_class_table(table: pd.DataFrame, out_csv=None, out_md=None) -> None:
    header = ["architecture", "protocol", "test", "class", "patients", "images"]
    header += [f"{lv} {LABELS[m]}" for lv in LEVELS for m in SHOWN]
    rows = [[r["architecture"], r["protocol"], r["test"], r["class"], str(r["n_patients"]), str(r["n_images"])]
            + [pooled_cell(r, lv, m) for lv in LEVELS for m in SHOWN] for _, r in table.iterrows()]
    footnotes = [
        "Per class, over the test predictions of all folds pooled (one confusion matrix over all "
        "the task's classes). Sensitivity: the class's units predicted as it; precision: the "
        "units predicted as the class that are of it (– when none was); AUC: one-vs-rest, the "
        "class's probability against all other units' (for two classes, each class's equals the "
        "task's AUC). Patients and images: the class's distinct test patients and images.",
        intervals_note(table["n_boot"].max() if len(table) else 0),
        *repeats_note(table),
    ]
    if has_zero_width(table, [f"{lv}_{m}" for lv in LEVELS for m in SHOWN]):
        footnotes.append(ZERO_WIDTH_NOTE)
    if len(table) and (table["protocol"] == IMAGE_GROUPED).any():
        footnotes.insert(0, IMAGE_GROUPED_NOTE)
    if len(table) and table["test"].str.startswith("external").any():
        footnotes.insert(0, EXTERNAL_NOTE)
    task = table["task"].iloc[0] if len(table) else ""
    write_formats(table, header, rows, footnotes, f"Per class: {task}", out_csv, out_md)
