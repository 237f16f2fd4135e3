"""Training variance: a run and architecture's repeats (train.repeats), their pooled figures combined.

Each fold's model can be trained n times on the same split with different seeds
(deepbc.workflow.plan.repeat_seed); each repeat's test predictions are pooled over the folds into a
JSON of its own (deepbc.evaluation.pooled: pooled.json, pooled_r1.json, ...). ``combine`` makes of a
run and architecture's n pooled JSONs one of the same shape, which the tables read as they read a
single one (a run of one repeat passes unchanged):

- Every figure is the mean over the repeats of that repeat's pooled figure (None when a repeat
  leaves it undefined). ``spread`` beside it, in each block and each class's entry, holds the n
  values, their sample sd (ddof=1), min and max: the training variance (the seed's initialisation
  of the new layers, input order, augmentation draws) on the same test patients.
- Every interval is the test-patient interval of that mean, the trained models held fixed:
  ``wilson``: the Wilson score interval of the mean proportion p with n the patient units (the
  repeats test the same units, so n is not multiplied by the repeats; where n differs between
  repeats, as a precision's predicted units do, the smallest). Each unit's share of right calls
  over the repeats lies in [0, 1] with mean p, so its variance is at most p(1 - p): the binomial
  interval is, if anything, wide. ``counts`` holds [p n, n]. ``mover_wilson``: those Wilson
  intervals of the per-class sensitivities combined by MOVER, as for one repeat. ``bootstrap``:
  the percentile interval of the draw-by-draw mean over the repeats, which is a draw of the mean
  since draw b weighs each patient alike in every repeat (seeded by the patient's id); a figure
  whose draws the pooled JSONs do not keep gets no interval. The leakage table's paired
  differences use these mean draws.
- The repeats must hold the same classes, folds, test images and patients, and bootstrap settings;
  anything else is refused.
"""

import math
from pathlib import Path

import numpy as np

from deepbc.evaluation import intervals
from deepbc.evaluation.metrics import CONFIDENCE
from deepbc.jobs.errors import UserError, delete_and_rerun

# What the repeats of one run and architecture must share, by what the message calls it.
SAME = {
    "classes": lambda p: p["classes"],
    "folds": lambda p: p["meta"]["folds"],
    "test images": lambda p: p["meta"].get("test_images_sha256"),
    "test patients": lambda p: p.get("test_patients"),
    "bootstrap settings": lambda p: p.get("bootstrap"),
}


def repeat_of(pooled: dict) -> int:
    """The repeat of a pooled JSON (0 for one written before repeats existed)."""
    return int(pooled["meta"].get("repeat", 0))


def combine(pooled: list[dict]) -> list[dict]:
    """One pooled dict per (task, protocol, arch) of ``pooled`` (as deepbc.evaluation.pooled writes
    them, with an optional ``_where``: the file), in the order first seen: ``over_repeats``."""
    groups: dict[tuple, list[dict]] = {}
    for p in pooled:
        meta = p["meta"]
        groups.setdefault((meta["task"], meta["protocol"], meta["arch"]), []).append(p)
    return [over_repeats(group) for group in groups.values()]


def over_repeats(group: list[dict]) -> dict:
    """The repeats of one run and architecture as one pooled dict (the module's conventions), with
    ``meta.repeats`` (their indices, for ``meta.repeat``) and ``repeats`` (how they were combined).
    One repeat is returned as it is."""
    if len(group) == 1:
        return group[0]
    group = sorted(group, key=repeat_of)
    indices = [repeat_of(p) for p in group]
    first = group[0]
    if len(set(indices)) != len(indices):
        raise UserError(f"repeat {next(r for r in indices if indices.count(r) > 1)} given twice for "
                        f"{first['meta']['run']} / {first['meta']['arch']}", _where(group),
                        "pass each repeat's pooled metrics once")
    for p in group[1:]:
        for what, get in SAME.items():
            if get(p) != get(first):
                raise UserError(f"repeat {repeat_of(p)} of {first['meta']['run']} / {first['meta']['arch']} "
                                f"was pooled over other {what} than repeat {indices[0]}", _where(group),
                                _fix(group))
    classes = list(first["classes"])
    out = {**first, **_pool_part(group, classes)}
    meta = {k: v for k, v in first["meta"].items() if k != "repeat"}
    meta["repeats"] = indices
    meta["predictions"] = [where for p in group for where in p["meta"].get("predictions", [])]
    out["meta"] = meta
    out["by_magnification"] = {mag: {**block, **_pool_part([p["by_magnification"][mag] for p in group], classes)}
                               for mag, block in (first.get("by_magnification") or {}).items()}
    out["repeats"] = {"n": len(group), "repeats": indices,
                      "figures": "mean over the repeats; spread: values, sd (ddof=1), min, max",
                      "intervals": "test patients for the mean over the repeats, models held fixed "
                                   "(deepbc/evaluation/repeats.py)"}
    return out


def _where(group) -> str:
    places = [p.get("_where") for p in group]
    return ", ".join(places) if all(places) else "pooled metrics passed in memory"


def _fix(group) -> str:
    places = [p.get("_where") for p in group]
    if not all(places):
        return "pass the pooled metrics of one run's repeats, made with the same folds and bootstrap"
    return delete_and_rerun(Path(places[0]).parent, folder=True,
                            remakes="the metrics and pooled_metrics rules compute every repeat's again")


def _pool_part(parts: list[dict], classes) -> dict:
    """The image- and patient-level blocks of one pooled part (the whole, or one magnification)."""
    return {"image_level": _block([p["image_level"] for p in parts], classes),
            "patient_level": {"mean_probability": _block(
                [p["patient_level"]["mean_probability"] for p in parts], classes)}}


def _block(blocks: list[dict], classes) -> dict:
    """One level's block (deepbc.evaluation.pooled._level) over the repeats."""
    out = _figures(blocks)
    first = blocks[0]
    out["per_class"] = {c: _figures([b["per_class"][c] for b in blocks]) for c in classes}
    matrices = np.array([b["confusion_matrix"]["matrix"] for b in blocks], dtype=np.float64)
    out["confusion_matrix"] = {**first["confusion_matrix"], "matrix": matrices.mean(axis=0).tolist(),
                               "mean_over_repeats": True}
    out["ci95"], n_valid = _intervals(out, first.get("ci_method") or {})
    out["ci_n_valid"] = n_valid or None
    for c in classes:
        entry = out["per_class"][c]
        entry["ci95"], _ = _intervals(entry, entry.get("ci_method") or {})
    present = [c for c in classes if first["per_class"][c]["support"] > 0]
    balanced = None
    if present and all((out["per_class"][c]["ci95"] or {}).get("sensitivity") for c in present):
        balanced = intervals.mover_mean([out["per_class"][c]["sensitivity"] for c in present],
                                        [out["per_class"][c]["ci95"]["sensitivity"] for c in present])
    for m, method in (first.get("ci_method") or {}).items():
        if method == "mover_wilson":
            out["ci95"][m] = balanced
    out["ci95"] = out["ci95"] or None
    return out


def _figures(entries: list[dict]) -> dict:
    """Means of the numbers of ``entries`` (a block, or a class's entry) with their ``spread``; counts
    as [p n, n]; the bootstrap draws averaged draw by draw. Other keys are the first entry's."""
    first = entries[0]
    out, spread = dict(first), {}
    for key, value in first.items():
        if _is_number(value):
            values = [e.get(key) for e in entries]
            out[key], spread[key] = _mean(values), _spread(values)
    out["spread"] = spread
    out["counts"] = {}
    for m, (_, n) in (first.get("counts") or {}).items():
        n = min(e["counts"][m][1] for e in entries)
        p = out.get(m)
        out["counts"][m] = [None if p is None else p * n, n]
    draws = first.get("bootstrap_values")
    if draws is not None:
        out["bootstrap_values"] = {m: _mean_draws([e["bootstrap_values"][m] for e in entries]) for m in draws}
    return out


def _intervals(entry: dict, methods: dict) -> tuple[dict, dict]:
    """The ``wilson`` and ``bootstrap`` intervals of a combined entry (``mover_wilson``: ``_block``)."""
    ci, n_valid = {}, {}
    draws = entry.get("bootstrap_values") or {}
    for m, method in methods.items():
        if method == "wilson":
            k, n = entry["counts"].get(m, (None, 0))
            ci[m] = None if k is None else intervals.wilson(k, n, CONFIDENCE)
        elif method == "bootstrap":
            ci[m], n_valid[m] = intervals.percentile(draws[m], CONFIDENCE) if m in draws else (None, 0)
    return ci, n_valid


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values):
    return None if any(v is None for v in values) else float(np.mean(values))


def _spread(values) -> dict:
    if any(v is None for v in values):
        return {"values": list(values), "sd": None, "min": None, "max": None}
    return {"values": [float(v) for v in values], "sd": float(np.std(values, ddof=1)),
            "min": float(min(values)), "max": float(max(values))}


def _mean_draws(draws: list[list]) -> list:
    """Draw b's mean over the repeats (None where a repeat leaves draw b undefined)."""
    means = np.array(draws, dtype=np.float64).mean(axis=0)
    return [None if math.isnan(v) else round(float(v), 6) for v in means]
