"""Grad-CAM's seeded sample of test images (the maps themselves: tests/test_evaluate.py, on its trained model)."""

import pandas as pd

from deepbc.evaluation.gradcam import select_samples

CLASSES = ["benign", "malignant", "normal"]


def predictions() -> pd.DataFrame:
    """Benign: 5 right, 3 wrong; malignant: 1 right, 0 wrong; normal: none; in no particular order."""
    rows = [("b", "benign", "benign")] * 5 + [("b", "benign", "malignant")] * 3 + [("m", "malignant", "malignant")]
    df = pd.DataFrame([{"path": f"{p}{i}.png", "label": label, "pred": pred,
                        "prob_benign": 0.7 if pred == "benign" else 0.2,
                        "prob_malignant": 0.7 if pred == "malignant" else 0.2, "prob_normal": 0.1}
                       for i, (p, label, pred) in enumerate(rows)])
    return df.sample(frac=1, random_state=1)


def test_picks_up_to_two_correct_and_two_wrong_per_class():
    sample = select_samples(predictions(), CLASSES, seed=42)
    counts = sample.groupby(["label", "correct"]).size().to_dict()
    assert counts == {("benign", True): 2, ("benign", False): 2, ("malignant", True): 1}
    assert (sample["correct"] == (sample["label"] == sample["pred"])).all()
    assert list(sample["label"]) == ["benign"] * 4 + ["malignant"]
    assert list(sample["correct"]) == [True, True, False, False, True]
    wrong = sample[~sample["correct"]]
    assert (wrong["pred"] == "malignant").all() and (wrong["prob"] == 0.7).all()  # the predicted class's


def test_sample_is_fixed_by_the_seed_whatever_the_row_order():
    a = select_samples(predictions(), CLASSES, seed=42)
    shuffled = predictions().sample(frac=1, random_state=7)
    pd.testing.assert_frame_equal(a, select_samples(shuffled, CLASSES, seed=42))
    draws = {tuple(select_samples(predictions(), CLASSES, seed=s)["path"]) for s in range(10)}
    assert len(draws) > 1  # the seed, not the order, chooses among the 5 correct benign images


def test_class_names_need_not_be_identifiers():
    names = {"benign": "benign tumour", "malignant": "malignant-1", "normal": "normal"}
    df = predictions().rename(columns={f"prob_{k}": f"prob_{v}" for k, v in names.items()})
    df[["label", "pred"]] = df[["label", "pred"]].replace(names)
    sample = select_samples(df, list(names.values()), seed=42)
    assert list(sample["prob"]) == list(select_samples(predictions(), CLASSES, seed=42)["prob"])


def test_copies_of_one_image_are_told_apart():
    """Augment-then-split predictions (issue 23.5) hold a row per copy of a path: the sample keeps
    each row's copy id, so two copies of one image are two images of the figure."""
    df = predictions().iloc[:1]
    copies = pd.concat([df.assign(copy=c) for c in range(8)], ignore_index=True)
    sample = select_samples(copies, CLASSES, seed=0)
    assert list(sample.columns[:2]) == ["path", "copy"] and sample["path"].nunique() == 1
    assert len(sample) == 2 and sample["copy"].is_unique
    assert list(select_samples(df, CLASSES, seed=0)["copy"]) == [0]  # no copies: the image as stored
