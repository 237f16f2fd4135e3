"""Image- and patient-level metrics of one test fold, with 95% bootstrap CIs over patients.

Conventions (also written into every metrics JSON under ``conventions``):

- Image level: one unit per image (a row of the predictions: under the augment-then-split
  protocol each tested copy of an image); the prediction is the ``pred`` column.
- Patient level: one unit per patient and true class. BreakHis groups patients by the numeric slide
  id, and two such patients (14-29960: A and F; 14-21998: F and PT) carry images of two classes, so
  a single patient label would be wrong for some of their images; such a patient counts once per
  class it has (``n_patients_with_several_classes`` says how many did).
  - ``mean_probability``: the unit's class probabilities are the mean of its images'; the predicted
    class is the arg-max (ties go to the class listed first).
  - ``majority_vote``: the predicted class is the one most of the unit's images were predicted as;
    a tie goes to the tied class with the highest mean probability, then to the class listed first.
    Its AUC uses the vote shares (fraction of the unit's images predicted as each class) as scores.
- FP and FN, as the preprint counts them: for two classes, the second class is the positive one
  (malignant in benign_vs_malignant): FP = true first class predicted second, FN = the reverse. For
  more classes, one-vs-rest per class: FP_c = predicted c but truly another class, FN_c = truly c
  but predicted another; ``fp``/``fn`` are the sums over classes, which are equal (each error is an
  FP of one class and an FN of another) and equal the number of misclassified units.
- Specificity of class c: true negatives / all units not of class c (one-vs-rest).
- ``sensitivity`` and ``specificity``: for two classes, those of the positive (second) class; for
  more classes, the macro means (equal to ``macro_sensitivity`` and ``macro_specificity``).
- Macro averages are over the classes present in the fold's truth (balanced accuracy = macro
  sensitivity), so folds lacking different classes give figures over different classes: the
  tables use the pooled figures over every class (deepbc.evaluation.pooled). A value that is
  undefined (no unit of that kind) is None in the JSON.
- ROC AUC: binary, the second class's probability as score. More classes: one-vs-rest AUC per class,
  macro mean over the classes present in the truth; absent classes are listed in
  ``auc_absent_classes``. With fewer than two classes present, AUC is None.
- Bootstrap: ``n_boot`` draws of as many patients as the fold has, with replacement, each drawn
  patient bringing all of its images (image level) or all of its units (patient level); a metric
  undefined in a draw is left out of that metric's percentiles (``n_valid`` counts the rest). The
  95% CI is the 2.5th and 97.5th percentile. Each fold draws from its own random stream (seed,
  fold), so the folds' draws are independent; the image and mean-probability blocks keep their
  draws of the headline metrics (``bootstrap_values``), from which the calibration table builds
  the interval of the mean over folds (the other tables show the figures of all folds pooled,
  deepbc.evaluation.pooled, with their own intervals). On an external test (``meta.test_dataset``) every fold's model sees the
  same test patients, so all folds use stream 0: draw b resamples the same patients in every fold,
  and the mean over folds of draw b is one draw of the pooled figure.
- Patient recognition rate (``image_level.patient_recognition_rate``; Spanhol et al. 2016, IEEE
  TBME): for each test patient the fraction of its images classified right, then the mean over
  patients (every patient weighs the same, whatever its number of images). In a bootstrap draw a
  patient drawn m times weighs m.
- Calibration (image level and the mean-probability patient level): ``brier`` is the mean over
  units of the sum over classes of (probability - one-hot truth)^2 (Brier 1950; 0 to 2; for two
  classes twice the one-probability score); ``ece`` is the expected calibration error over
  ECE_BINS equal-width bins of the confidence (the highest class probability, bins (0, 1/15],
  ..., (14/15, 1]): the sum over bins of the bin's share of units times |accuracy - mean
  confidence| in it. Majority-vote shares are not probabilities and get neither.
- Per magnification (``by_magnification``, BreakHis only; a folder dataset's "NA" gives none):
  the image and mean-probability patient blocks of the test images of each magnification, with
  their own bootstrap over those images' patients, of the magnification table's figures only
  (accuracy and AUC; at image level the patient recognition rate too).
- Temperature scaling (``temperature_scaling``; Guo et al. 2017): one temperature T per model,
  fitted on that fold's validation images only (never on test) by minimising their negative
  log-likelihood; the test probabilities become softmax(log p / T) (the image predictions do not
  change; a patient's mean probability can). Its image and patient blocks hold the accuracy, ECE
  and Brier score of the scaled test probabilities, with CIs and draws of the calibration figures;
  its patient block is of the mean of each patient's scaled image probabilities (T is fitted on
  images, no temperature at patient level). No validation images: no temperature (null). Caveat
  (``TEMPERATURE_CAVEAT``, printed wherever the scaled figures are): the validation patients T is
  fitted on also chose the kept checkpoint and stopped training early. A split of them (half choose,
  half calibrate) would remove that, at the price of choosing on half; with the few validation
  patients of a fold (2 to 5 in the demo, about 13 on BreakHis) the caveat is the lesser harm.
- Grouping (``meta.grouping``): ``patient`` when the dataset maps images to patients (BreakHis, or a
  folder dataset with a patients CSV), ``image`` when each image is its own group (a folder dataset
  without one; manifest column ``patient_source``). An ``image``-grouped run is never called
  patient-wise: its "patient level" is the image level, and its split may put one patient's images
  on both sides.
"""

import numpy as np
import pandas as pd

from deepbc.data.runs import model_fold, model_label, parse_run
from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError, delete_and_rerun
from deepbc.jobs.logs import LOG

CONFIDENCE = 0.95
# Scalar metrics that get a bootstrap CI.
CI_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "macro_sensitivity",
              "macro_specificity", "macro_precision", "macro_f1", "auc")
# Headline metrics whose bootstrap draws are kept, for the tables' intervals over folds.
KEPT_DRAWS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")
# Figures of the probabilities (not of the confusion matrix), with CIs and kept draws; the patient
# recognition rate only at image level (it is made of the images' predictions).
CALIBRATION_METRICS = ("ece", "brier")
IMAGE_EXTRA = ("patient_recognition_rate",) + CALIBRATION_METRICS
PATIENT_EXTRA = CALIBRATION_METRICS
ECE_BINS = 15
# The temperature is searched in [1/20, 20], on a log scale.
TEMPERATURE_RANGE = (0.05, 20.0)
# Predictions of a dataset without magnifications (folder datasets) carry this value.
NO_MAGNIFICATION = "NA"
# Softmax outputs sum to 1; mixed precision can be a little off, a wrong column far more.
_PROB_SUM_TOLERANCE = 1e-2

# How results name a run's grouping; a patient-protocol run without a patient mapping is not
# patient-wise.
GROUPING_LABELS = {"patient": "patient-wise", "image": "image-grouped (no patient mapping)"}

TEMPERATURE_CAVEAT = (
    "Caveat: T is fitted on the validation patients that also chose the kept checkpoint "
    "(keep_best_by) and stopped training early, on which the kept model looks better than on new "
    "patients; so T is not independent of the model choice (it tends to soften too little), and the "
    "scaled figures are not those of an independent calibration set. Scaled patient level: the mean of "
    "a patient's temperature-scaled image probabilities (T is fitted on images; none at patient level).")

CONVENTIONS = {
    "patient_unit": "one unit per (patient, true class); a patient with images of several classes "
                    "counts once per class",
    "mean_probability": "unit probabilities = mean of its images' probabilities; prediction = "
                        "arg-max, ties to the class listed first",
    "majority_vote": "prediction = most frequent image prediction; ties to the highest mean "
                     "probability, then to the class listed first; AUC from vote shares",
    "fp_fn": "binary: positive = second class; FP = first class predicted as second, FN = second "
             "predicted as first. Multiclass: per class one-vs-rest, fp/fn = sums over classes "
             "(equal, = misclassified units)",
    "sensitivity_specificity": "binary: of the positive (second) class; multiclass: macro means",
    "macro": "mean over classes present in the truth; undefined values are null",
    "auc": "binary: score = probability of the second class; multiclass: one-vs-rest per class, "
           "macro mean over classes present in the truth",
    "bootstrap": "resample patients with replacement (all images/units of each drawn patient); "
                 "percentile 95% CI over draws where the metric is defined",
    "patient_recognition_rate": "image level: per patient the fraction of its images predicted "
                                "right, mean over patients (Spanhol et al. 2016)",
    "brier": "mean over units of sum over classes of (probability - one-hot truth)^2, 0 to 2",
    "ece": f"{ECE_BINS} equal-width bins of the confidence (highest class probability); sum over "
           "bins of share of units x |accuracy - mean confidence|",
    "by_magnification": "the image and patient (mean probability) blocks of each magnification's "
                        "test images, bootstrap over their patients",
    "temperature_scaling": "T fitted on the fold's validation images (negative log-likelihood), "
                           "test probabilities softmax(log p / T). " + TEMPERATURE_CAVEAT,
}


def prob_column(cls: str) -> str:
    return f"prob_{cls}"


def compute_metrics(pred_df: pd.DataFrame, classes: list[str], n_boot: int = 1000,
                    seed: int = 0, where: str = "predictions", stream: int = 0) -> dict:
    """All metrics of one predictions table (see the module docstring for the conventions).

    ``where`` names the input in error messages; ``stream`` (the fold) gives each fold its own
    independent bootstrap draws under one seed. Returns a JSON-serialisable dict.
    """
    y, pred, prob, patient_codes, patients = _validated(pred_df, list(classes), where)
    classes = list(classes)
    k = len(classes)
    units = _patient_units(y, pred, prob, patient_codes, k)

    image_extra = {"patient_recognition_rate": _recognition_rate(y, pred, patient_codes),
                   **_calibration(y, prob)}
    patient_extra = _calibration(units["y"], units["prob_mean"])
    image = _full_block(y, pred, prob, classes)
    image.update({m: f(None) for m, f in image_extra.items()})
    pat_mean = _full_block(units["y"], units["pred_mean"], units["prob_mean"], classes)
    pat_mean.update({m: f(None) for m, f in patient_extra.items()})
    pat_vote = _full_block(units["y"], units["pred_vote"], units["vote_share"], classes)

    boot = {"n_boot": int(n_boot), "seed": int(seed), "stream": int(stream), "unit": "patient",
            "confidence": CONFIDENCE, "method": "percentile"}
    if n_boot > 0:
        draws = draw_patients(np.random.default_rng([seed, stream]), len(patients), n_boot)
        image["ci95"], image["ci_n_valid"], values = _bootstrap(
            draws, patient_codes, y, pred, prob, k, image_extra)
        image["bootstrap_values"] = _kept_draws(values, KEPT_DRAWS + IMAGE_EXTRA)
        pat_mean["ci95"], pat_mean["ci_n_valid"], values = _bootstrap(
            draws, units["patient"], units["y"], units["pred_mean"], units["prob_mean"], k,
            patient_extra)
        pat_mean["bootstrap_values"] = _kept_draws(values, KEPT_DRAWS + PATIENT_EXTRA)
        pat_vote["ci95"], pat_vote["ci_n_valid"], _ = _bootstrap(
            draws, units["patient"], units["y"], units["pred_vote"], units["vote_share"], k)

    several = np.bincount(units["patient"], minlength=len(patients)) > 1
    return {
        "classes": classes,
        "positive_class": classes[1] if k == 2 else None,
        "n_images": int(len(y)),
        "n_patients": int(len(patients)),
        "n_patient_units": int(len(units["y"])),
        "n_patients_with_several_classes": int(several.sum()),
        "class_counts": {
            "images": {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=k))},
            "patient_units": {c: int(n) for c, n in zip(classes, np.bincount(units["y"], minlength=k))},
        },
        "image_level": image,
        "patient_level": {"mean_probability": pat_mean, "majority_vote": pat_vote},
        "bootstrap": boot,
        "conventions": CONVENTIONS,
    }


def by_magnification(pred_df: pd.DataFrame, classes: list[str], n_boot: int = 1000,
                     seed: int = 0, where: str = "predictions", stream: int = 0) -> dict:
    """{magnification: metrics of its test images}, for the per-magnification (BreakHis) protocol.

    Empty when the predictions carry no magnification (folder datasets). Each magnification keeps
    its image and mean-probability patient blocks; their bootstrap covers the magnification
    table's figures only (accuracy and AUC, and the image-level recognition rate): four full
    bootstraps would cost four times the fold's, and their draws would multiply the JSON's size.
    """
    if "magnification" not in pred_df.columns:
        return {}
    present = set(pred_df["magnification"].astype(str)) - {NO_MAGNIFICATION}
    out = {}
    for mag in magnification_order(present):
        sub_df = pred_df[pred_df["magnification"].astype(str) == mag]
        sub_where = f"{where} ({mag} images)"
        sub = compute_metrics(sub_df, classes, n_boot=0, where=sub_where)
        image, patient = sub["image_level"], sub["patient_level"]["mean_probability"]
        if n_boot > 0:
            y, pred, prob, codes, patients = _validated(sub_df, list(classes), sub_where)
            k = len(classes)
            units = _patient_units(y, pred, prob, codes, k)
            draws = draw_patients(np.random.default_rng([seed, stream]), len(patients), n_boot)
            image_extra = {"accuracy": _accuracy(y, pred), "auc": _auc(y, prob, k),
                           "patient_recognition_rate": _recognition_rate(y, pred, codes)}
            patient_extra = {"accuracy": _accuracy(units["y"], units["pred_mean"]),
                             "auc": _auc(units["y"], units["prob_mean"], k)}
            for block, owner, by, bpred, bscore, extra in (
                    (image, codes, y, pred, prob, image_extra),
                    (patient, units["patient"], units["y"], units["pred_mean"], units["prob_mean"],
                     patient_extra)):
                block["ci95"], block["ci_n_valid"], values = _bootstrap(
                    draws, owner, by, bpred, bscore, k, extra, confusion=False)
                block["bootstrap_values"] = _kept_draws(values, extra)
        out[mag] = {"n_images": sub["n_images"], "n_patients": sub["n_patients"],
                    "image_level": image, "patient_level": {"mean_probability": patient}}
    return out


def magnification_order(magnifications) -> list[str]:
    """Magnifications in their optical order (a text sort puts 400X before 40X), unknown ones last."""
    from deepbc.data.breakhis import MAGNIFICATIONS

    return sorted(magnifications, key=lambda m: (MAGNIFICATIONS.index(m) if m in MAGNIFICATIONS
                                                 else len(MAGNIFICATIONS), m))


def grouping_of(manifest) -> str:
    """``image`` if the manifest has images that are their own group (``patient_source`` image), else
    ``patient``. A folder dataset's CSV must list every image, so a manifest is never mixed."""
    from deepbc.data.splits import read_table

    table = read_table(manifest, "manifest")
    if "patient_source" in table.columns and (table["patient_source"] == "image").any():
        return "image"
    return "patient"


def fit_temperature(prob: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of softmax(log prob / T) for the
    true classes ``y`` (validation images)."""
    from scipy.optimize import minimize_scalar

    log_p = _log_prob(prob)

    def nll(log_t):
        z = log_p / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    z = _log_prob(prob) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _log_prob(prob):
    # The logits up to a per-row constant, which softmax ignores. A float32 softmax can underflow
    # to 0; such a class stays negligible at any temperature in TEMPERATURE_RANGE.
    return np.log(np.clip(prob, 1e-30, None))


def temperature_scaling(test_df: pd.DataFrame, val_df: pd.DataFrame, classes: list[str],
                        n_boot: int, seed: int, where: str, stream: int) -> dict:
    """The temperature fitted on ``val_df`` and the calibration of ``test_df`` scaled by it."""
    cols = [prob_column(c) for c in classes]
    y_val, _, prob_val, _, _ = _validated(val_df, classes, f"{where} (validation)")
    temperature = fit_temperature(prob_val, y_val)
    scaled = test_df.copy()
    scaled[cols] = apply_temperature(test_df[cols].to_numpy(dtype=np.float64), temperature)
    scaled["pred"] = [classes[i] for i in scaled[cols].to_numpy().argmax(axis=1)]
    scaled = scaled.drop(columns=[c for c in ("pred_index",) if c in scaled.columns])
    result = compute_metrics(scaled, classes, n_boot=0, where=where)
    out = {"temperature": temperature, "n_validation_images": int(len(val_df)),
           "n_validation_patients": int(val_df["patient"].nunique())}
    y, pred, prob, codes, patients = _validated(scaled, classes, where)
    units = _patient_units(y, pred, prob, codes, len(classes))
    draws = (draw_patients(np.random.default_rng([seed, stream]), len(patients), n_boot)
             if n_boot > 0 else None)
    for name, block, owner, by, score in (
            ("image_level", result["image_level"], codes, y, prob),
            ("patient_level", result["patient_level"]["mean_probability"], units["patient"],
             units["y"], units["prob_mean"])):
        kept = {m: block[m] for m in ("accuracy", *CALIBRATION_METRICS)}
        if draws is not None:
            # Only the calibration figures: the scaled predictions' other figures are not shown.
            extra = _calibration(by, score)
            kept["ci95"], kept["ci_n_valid"], values = _bootstrap(
                draws, owner, by, score.argmax(axis=1), score, len(classes), extra, confusion=False)
            kept["bootstrap_values"] = _kept_draws(values, extra)
        out[name] = kept
    out["patient_level"] = {"mean_probability": out["patient_level"]}
    return out


def metrics_file(predictions, classes: list[str], out, run: str, arch: str, fold: int, manifest,
                 magnification: str, *, n_boot: int, seed: int,
                 validation_predictions=None, test_dataset: str | None = None, split_audit=None,
                 repeat: int = 0) -> dict:
    """Metrics of one predictions parquet, written as JSON with ``meta`` naming what they are of.

    ``meta`` (run, task, protocol, grouping, arch, fold, repeat: which of the fold's trainings
    (train.repeats), magnification: the one the task trained on, or all) lets the tables group
    files without parsing paths; ``grouping`` comes from the test dataset's ``manifest`` (see ``grouping_of``); ``test_dataset`` names an external test
    dataset (None: held-out folds of the task's dataset). ``validation_predictions`` (the same
    model's validation split) adds ``temperature_scaling``. ``precision`` is what the probabilities
    were computed in (the predictions' ``precision`` column; None in predictions written before it).
    ``split_audit`` (the run's results/splits/{run}.audit.json) adds ``meta.split`` (``split_meta``).
    """
    try:
        df = pd.read_parquet(predictions)
    except FileNotFoundError:
        raise UserError("predictions file not found", str(predictions),
                        "run the evaluate rule for this run, architecture and fold") from None
    task, protocol = parse_run(run)
    grouping = grouping_of(manifest)
    if grouping == "image":
        LOG.warning("%s: the dataset has no patient mapping, so each image is its own group; the "
                    "results are labelled %r, not patient-wise", run, GROUPING_LABELS["image"])
    # An external test set is the same for every fold: one stream resamples its patients jointly.
    # A fold's training repeats test the same patients with the same stream: their draws are paired.
    stream = 0 if test_dataset else int(fold)
    result = compute_metrics(df, classes, n_boot=n_boot, seed=seed, where=str(predictions),
                             stream=stream)
    result["by_magnification"] = by_magnification(df, classes, n_boot=n_boot, seed=seed,
                                                  where=str(predictions), stream=stream)
    if validation_predictions is not None:
        try:
            val = pd.read_parquet(validation_predictions)
        except FileNotFoundError:
            raise UserError("validation predictions file not found", str(validation_predictions),
                            "run the evaluate rule for this run, architecture and fold") from None
        result["temperature_scaling"] = temperature_scaling(
            df, val, list(classes), n_boot, seed, str(predictions), stream)
    result["meta"] = {"run": run, "task": task, "protocol": protocol, "grouping": grouping,
                      "test_dataset": test_dataset or None, "arch": arch, "fold": int(fold),
                      "repeat": int(repeat), "magnification": magnification,
                      "precision": (",".join(sorted(set(df["precision"]))) if "precision" in df.columns
                                    else None),
                      "predictions": str(predictions)}
    if split_audit is not None:
        result["meta"]["split"] = split_meta(split_audit, int(fold))
    atomic.write_json(out, result)
    img, pat = result["image_level"], result["patient_level"]["mean_probability"]
    LOG.info("%s %s %s: %d images, %d patients; accuracy image %.3f, patient %.3f; "
             "balanced accuracy image %.3f, patient %.3f (%d bootstrap draws)", run, arch,
             model_label(model_fold(fold, repeat)),
             result["n_images"], result["n_patients"], img["accuracy"], pat["accuracy"],
             img["balanced_accuracy"], pat["balanced_accuracy"], n_boot)
    return result


def split_meta(split_audit, fold: int) -> dict:
    """What split a fold's figures come from, for the tables (deepbc.data.splits.audit): ``scheme``
    (kfold, repeated_holdout or predefined), ``unit`` (fold, repeat or split), ``label`` (e.g.
    "5 repeated patient-wise 70/30 holdouts", "predefined split, 4 patients on two sides"),
    ``note`` (what a mean ± sd and interval over such folds are), ``patients_on_two_sides`` and
    ``validation_absent_classes`` (the task's classes this fold's validation set has no image of:
    its checkpoint choice, early stopping and temperature used the others' validation loss)."""
    from deepbc.data.splits import read_audit

    summary = read_audit(split_audit)
    entry = summary["folds"].get(str(fold))
    if entry is None:
        raise UserError(f"fold {fold} is not in the split audit (folds {sorted(summary['folds'])})", str(split_audit),
                        delete_and_rerun(split_audit, remakes="make_splits writes it again"))
    return {"scheme": summary["scheme"], "unit": summary["unit"], "label": summary["label"], "note": summary["note"],
            "patients_on_two_sides": summary["patients_on_two_sides"],
            "validation_absent_classes": entry["val"]["absent_classes"]}


def draw_patients(rng: np.random.Generator, n_patients: int, n_boot: int) -> np.ndarray:
    """Bootstrap draws: an (n_boot, n_patients) array of patient indices, with replacement."""
    return rng.integers(0, n_patients, size=(n_boot, n_patients))


def patient_table(pred_df: pd.DataFrame, classes: list[str], where: str = "predictions") -> pd.DataFrame:
    """One row per patient unit: patient, label, pred (mean probability), pred_vote, prob_<class>.

    Used by the figures, so that their patient-level curves aggregate exactly as the metrics do.
    """
    y, pred, prob, codes, patients = _validated(pred_df, list(classes), where)
    units = _patient_units(y, pred, prob, codes, len(classes))
    out = pd.DataFrame({
        "patient": np.asarray(patients)[units["patient"]],
        "label": [classes[i] for i in units["y"]],
        "pred": [classes[i] for i in units["pred_mean"]],
        "pred_vote": [classes[i] for i in units["pred_vote"]],
    })
    for j, c in enumerate(classes):
        out[prob_column(c)] = units["prob_mean"][:, j]
    return out


def _validated(df: pd.DataFrame, classes: list[str], where: str):
    """Check the predictions table against the class list; return integer-coded arrays."""
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UserError(f"need at least two distinct classes, got {classes}", where,
                        "pass the task's classes list in order")
    prob_cols = [prob_column(c) for c in classes]
    missing = [c for c in ["patient", "label", "pred", *prob_cols] if c not in df.columns]
    if missing:
        have = [c for c in df.columns if c.startswith("prob_")]
        raise UserError(f"predictions lack column(s) {missing} (probability columns present: {have})",
                        where, "pass the task's classes in the order used for training, or "
                               "regenerate the predictions")
    if len(df) == 0:
        raise UserError("the predictions table is empty", where,
                        "check that the test split of this fold has images")
    index = {c: i for i, c in enumerate(classes)}
    codes = {}
    for col in ("label", "pred"):
        values = df[col].astype(str)
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise UserError(f"column {col!r} has value(s) {unknown} not among the classes {classes}",
                            where, "pass the task's classes list")
        codes[col] = values.map(index).to_numpy(dtype=np.int64)
        if f"{col}_index" in df.columns:
            given = df[f"{col}_index"].to_numpy()
            if not np.array_equal(given, codes[col]):
                raise UserError(f"column {col}_index disagrees with the order of the classes {classes}",
                                where, "pass the classes in the order used for training")
    prob = df[prob_cols].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prob).all(axis=1) | (prob < 0).any(axis=1) | (prob > 1).any(axis=1)
    bad |= np.abs(prob.sum(axis=1) - 1.0) > _PROB_SUM_TOLERANCE
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{int(bad.sum())} row(s) have probabilities that are not a distribution "
                        f"(first: row {row}, {prob[row].tolist()})", where,
                        "regenerate the predictions; prob_* must be softmax outputs")
    if df["patient"].isna().any():
        raise UserError("column 'patient' has missing values", where,
                        "every image needs a patient id (a folder dataset without a patient CSV "
                        "uses the image itself)")
    patient_codes, patients = pd.factorize(df["patient"].astype(str), sort=True)
    return codes["label"], codes["pred"], prob, patient_codes.astype(np.int64), list(patients)


def _patient_units(y, pred, prob, patient, k):
    """Aggregate images into (patient, true class) units, in sorted (patient, class) order."""
    unit_key = patient * k + y
    keys, unit_of_image = np.unique(unit_key, return_inverse=True)
    n_units = len(keys)
    counts = np.bincount(unit_of_image, minlength=n_units).astype(np.float64)
    prob_mean = np.zeros((n_units, k))
    np.add.at(prob_mean, unit_of_image, prob)
    prob_mean /= counts[:, None]
    votes = np.zeros((n_units, k))
    np.add.at(votes, (unit_of_image, pred), 1.0)
    vote_share = votes / counts[:, None]
    # Lexicographic (votes, mean probability, earlier class): lexsort's last key is the primary one.
    pred_vote = np.empty(n_units, dtype=np.int64)
    for u in range(n_units):
        order = np.lexsort((-np.arange(k), prob_mean[u], votes[u]))
        pred_vote[u] = order[-1]
    return {
        "patient": keys // k, "y": keys % k,
        "prob_mean": prob_mean, "pred_mean": np.argmax(prob_mean, axis=1),
        "vote_share": vote_share, "pred_vote": pred_vote,
    }


def _none_if_nan(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _scalars(cm: np.ndarray, auc: np.ndarray) -> tuple[dict, dict]:
    """Scalar metrics from a (weighted) confusion matrix and per-class AUCs, plus per-class parts.

    A stack of draws works too: ``cm`` (..., k, k) and ``auc`` (..., k) give arrays (...)."""
    k = cm.shape[-1]
    total = cm.sum(axis=(-2, -1))[..., None]
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn = support - tp
    fp = predicted - tp
    tn = total - tp - fn - fp
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(present, tp / support, np.nan)
        spec = np.where(total - support > 0, tn / (total - support), np.nan)
        prec = np.where(predicted > 0, tp / predicted, np.nan)
        f1 = np.where(present & (predicted > 0), 2 * tp / (support + predicted), np.nan)
        accuracy = tp.sum(axis=-1) / total[..., 0]
    macro = {
        "accuracy": accuracy,
        "balanced_accuracy": _nanmean(sens),
        # Binary: of the positive (second) class, as usual; more classes: the macro means.
        "sensitivity": sens[..., 1] if k == 2 else _nanmean(sens),
        "specificity": spec[..., 1] if k == 2 else _nanmean(spec),
        "macro_sensitivity": _nanmean(sens),
        "macro_specificity": _nanmean(spec),
        "macro_precision": _nanmean(np.where(present, prec, np.nan)),
        "macro_f1": _nanmean(np.where(present, f1, np.nan)),
        "auc": auc[..., 1] if k == 2 else _nanmean(auc),
    }
    if k == 2:
        fp_total, fn_total = cm[..., 0, 1], cm[..., 1, 0]
    else:
        fp_total, fn_total = fp.sum(axis=-1), fn.sum(axis=-1)
    parts = {"sens": sens, "spec": spec, "prec": prec, "f1": f1, "support": support,
             "fp": fp, "fn": fn, "auc": auc, "fp_total": fp_total, "fn_total": fn_total,
             "present": present}
    return macro, parts


def _auc_classes(k: int) -> list[int]:
    """Classes whose one-vs-rest AUC is computed: only the positive class when binary."""
    return list(range(k)) if k > 2 else [1]


def _sklearn_auc(y, score, k) -> np.ndarray:
    # scikit-learn is imported where it is used: its import costs about 1.5 s of CPU, in every
    # table job that imports this module for its constants.
    from sklearn.metrics import roc_auc_score

    auc = np.full(k, np.nan)
    present = np.bincount(y, minlength=k) > 0
    if present.sum() >= 2:
        for c in _auc_classes(k):
            if present[c]:
                auc[c] = roc_auc_score(y == c, score[:, c])
    return auc


class _WeightedAuc:
    """One-vs-rest ROC AUC under integer unit weights, for the bootstrap.

    Equal to scikit-learn's roc_auc_score with sample_weight (ties count one half), but the scores
    are ranked once, so a draw costs a few sums instead of a sort. ``w``: one draw's unit weights
    (n,), giving (k,) AUCs, or a stack of draws (b, n), giving (b, k).
    """

    def __init__(self, y, score, k):
        self.y, self.k = y, k
        self.onehot = np.eye(k)[y]
        self.groups = {}
        for c in _auc_classes(k):
            # Units in order of their score; ``starts``: where each group of tied scores begins.
            _, inverse = np.unique(score[:, c], return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
            self.groups[c] = (order, starts, y[order] == c)

    def __call__(self, w) -> np.ndarray:
        draws = np.atleast_2d(np.asarray(w, dtype=np.float64))
        auc = np.full((len(draws), self.k), np.nan)
        present = draws @ self.onehot > 0
        defined = present.sum(axis=1) >= 2
        for c, (order, starts, is_pos) in self.groups.items():
            ranked = draws[:, order]
            pos = np.add.reduceat(ranked * is_pos, starts, axis=1)
            neg = np.add.reduceat(ranked * ~is_pos, starts, axis=1)
            neg_below = np.cumsum(neg, axis=1) - neg
            with np.errstate(divide="ignore", invalid="ignore"):
                value = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))
            auc[:, c] = np.where(defined & present[:, c], value, np.nan)
        return auc if np.ndim(w) == 2 else auc[0]


def _nanmean(a):
    """The mean over the last axis of the finite values; NaN where there is none."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    n = finite.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.where(finite, a, 0.0).sum(axis=-1) / n, np.nan)[()]


def _full_block(y, pred, score, classes) -> dict:
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    macro, parts = _scalars(cm, _sklearn_auc(y, score, k))
    per_class = {}
    for j, c in enumerate(classes):
        per_class[c] = {
            "support": int(parts["support"][j]),
            "sensitivity": _none_if_nan(parts["sens"][j]),
            "specificity": _none_if_nan(parts["spec"][j]),
            "precision": _none_if_nan(parts["prec"][j]),
            "f1": _none_if_nan(parts["f1"][j]),
            "fp": int(parts["fp"][j]),
            "fn": int(parts["fn"][j]),
            "auc": _none_if_nan(parts["auc"][j]) if k > 2 else None,
        }
    present = parts["present"]
    auc_classes = [c for j, c in enumerate(classes) if present[j]] if present.sum() >= 2 else []
    block = {"n": int(len(y))}
    block.update({m: _none_if_nan(v) for m, v in macro.items()})
    block.update({
        "fp": int(parts["fp_total"]),
        "fn": int(parts["fn_total"]),
        "auc_classes": auc_classes,
        "auc_absent_classes": [c for j, c in enumerate(classes) if not present[j]],
        "per_class": per_class,
        "confusion_matrix": {"rows": "true", "columns": "predicted", "classes": list(classes),
                             "matrix": cm.astype(int).tolist()},
        "ci95": None,
        "ci_n_valid": None,
    })
    return block


def _kept_draws(values: dict, names) -> dict:
    """The draws of ``names``, rounded (a 1000-draw JSON stays small), undefined ones as None."""
    return {m: [None if not np.isfinite(v) else round(float(v), 6) for v in values[m]]
            for m in names}


def _recognition_rate(y, pred, patient):
    """Patient recognition rate under unit weights ``w`` (None: each image once; or a stack of
    draws): per patient the share of its images predicted right, averaged over patients weighted
    by how often each was drawn. An image weighs w / (its patient's number of images), so each
    drawn patient weighs 1."""
    share = 1.0 / np.bincount(patient)[patient]
    correct = (y == pred).astype(np.float64)

    def rate(w):
        w = share if w is None else w * share
        with np.errstate(divide="ignore", invalid="ignore"):
            return ((w * correct).sum(axis=-1) / w.sum(axis=-1))[()]
    return rate


def confidence_bin(confidence: np.ndarray) -> np.ndarray:
    """The ECE bin (0 to ECE_BINS - 1) of each confidence: bin b holds (b/B, (b+1)/B]."""
    # Rounded first: a mean of probabilities carries float noise ((0.8 + 0.4) / 2 is
    # 0.6000000000000001), which must not cross the 9/15 edge.
    return np.digitize(np.round(confidence, 9), np.arange(1, ECE_BINS) / ECE_BINS, right=True)


def _calibration(y, prob):
    """Brier score and ECE (see the module docstring) as functions of unit weights (None: 1)."""
    k = prob.shape[1]
    brier = ((prob - np.eye(k)[y]) ** 2).sum(axis=1)
    confidence = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == y).astype(np.float64)
    bins = confidence_bin(confidence)
    gap = correct - confidence

    def ece(w):
        w = np.ones(len(y)) if w is None else w
        per_bin = np.bincount(bins, weights=w * gap, minlength=ECE_BINS)
        return float(np.abs(per_bin).sum() / w.sum())

    def mean_brier(w):
        return float(brier.mean() if w is None else (w * brier).sum() / w.sum())
    return {"ece": ece, "brier": mean_brier}


def _accuracy(y, pred):
    """Accuracy as a function of unit weights, for a bootstrap without the confusion figures."""
    correct = (y == pred).astype(np.float64)
    return lambda w: float((w * correct).sum() / w.sum())


def _auc(y, score, k):
    """The table's AUC (binary: of the second class; else the macro mean) under unit weights."""
    weighted_auc = _WeightedAuc(y, score, k)

    def auc(w):
        per_class = weighted_auc(w)
        return per_class[1] if k == 2 else _nanmean(per_class)
    return auc


def _bootstrap(draws, owner, y, pred, score, k, extra=None, confusion=True):
    """Percentile CIs of CI_METRICS (unless ``confusion`` is False) and of ``extra`` ({name:
    function of the unit weights}), their numbers of defined draws, and the draws themselves;
    ``owner[i]`` is the patient index of unit/image i."""
    extra = extra or {}
    n_patients = draws.shape[1]
    weighted_auc = _WeightedAuc(y, score, k) if confusion else None
    cell = y * k + pred
    values = {m: [] for m in (*(CI_METRICS if confusion else ()), *extra)}
    for draw in draws:
        # A patient drawn m times brings each of its images (units) m times.
        w = np.bincount(draw, minlength=n_patients)[owner].astype(np.float64)
        if confusion:
            cm = np.bincount(cell, weights=w, minlength=k * k).reshape(k, k)
            macro, _ = _scalars(cm, weighted_auc(w))
            for m in CI_METRICS:
                values[m].append(macro[m])
        for m, f in extra.items():
            values[m].append(f(w))
    ci, n_valid = {}, {}
    alpha = (1 - CONFIDENCE) / 2 * 100
    for m, vals in values.items():
        v = np.asarray(vals, dtype=np.float64)
        v = v[np.isfinite(v)]
        n_valid[m] = int(len(v))
        ci[m] = ([float(np.percentile(v, alpha)), float(np.percentile(v, 100 - alpha))]
                 if len(v) >= 2 else None)
    return ci, n_valid, values
