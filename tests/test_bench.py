"""Every benchmark runs at a tiny size and prints its one result line. No timing is asserted: these
check that the measurements are made and reported, not how fast anything is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepbc.bench import common, end_to_end, sharding, training
from deepbc.training import precision
from tests.shared_data import breakhis_listing

BENCH = Path(__file__).resolve().parents[1] / "bench"
# A workflow run of a few seconds: one task, one fold, a handful of steps.
TINY_CONFIG = ["tasks=[cancer_types]", "folds=[0]"]
TINY_STEPS = "train:\n  defaults: {max_number_of_steps: 4, eval_every_steps: 2, save_every_steps: 2}\n"


@pytest.fixture(scope="module")
def tiny_steps(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("overlay") / "tiny_steps.yaml"
    path.write_text(TINY_STEPS)
    return path


def run_bench(script: str, *args, tmp_path: Path) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one machine-readable line, nothing else on stdout
    result = json.loads(lines[0])
    assert result["bench"] == script.removesuffix(".py")
    assert result["machine"]["cpus"] >= 1
    assert list(tmp_path.iterdir()) == [], "a benchmark left files behind"
    return result


def positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


@pytest.mark.slow
def test_train_throughput_tiny(tmp_path):
    # The variants new with mixed precision (the others are the same functions at fp32). --quick
    # runs them all in one process (one TensorFlow import) with Keras' VGG16, quick to trace.
    variants = ["trainer_mixed", "trainer_mixed_xla", "trainer_mixed_every_epoch", "in_memory_mixed",
                "keras_mixed_bfloat16"]
    r = run_bench("train_throughput.py", "--quick", "--variants", ",".join(variants), tmp_path=tmp_path)
    rates = r["images_per_s"]
    assert set(rates) == set(variants) and positive(*rates.values())
    pairs = [(a, b) for a, b in training.RATIOS if a in variants and b in variants]
    assert len(pairs) == 5
    for a, b in pairs:
        assert r[f"{a}_vs_{b}"] == pytest.approx(rates[a] / rates[b], rel=0.01)
        assert len(r["ratio_runs"][f"{a}_vs_{b}"]) == 1  # one repeat
    mixed = precision.for_this_machine("mixed").name  # what mixed means on this machine
    assert r["precision"] == {"trainer_mixed": mixed, "trainer_mixed_xla": mixed, "trainer_mixed_every_epoch": mixed,
                              "in_memory_mixed": mixed, "keras_mixed_bfloat16": "bf16"}


@pytest.mark.slow
def test_input_pipeline_tiny(tmp_path):
    r = run_bench("input_pipeline.py", "--images", 4, "--batches", 2, "--batch-size", 2, "--image-size", 32,
                  "--arch", "resnet_small", "--trainer-steps", 1, "--trainer-batch-size", 2, "--rounds", 1,
                  "--one-process", tmp_path=tmp_path)
    assert set(r["images_per_s"]) == {"shards", "shards_hed", "decoded", "memory", "trainer"}
    assert positive(*r["images_per_s"].values(), r["shards_vs_memory"], r["shards_vs_trainer"], r["hed_vs_without"],
                    r["decoded_vs_shards"], *r["cores_per_4000"].values())
    assert set(r["images_per_s_range"]) == {"shards", "shards_hed", "decoded"}
    assert r["shard_encoding"]["format"] == "jpeg"


@pytest.mark.slow
def test_sharding_tiny(tmp_path):
    r = run_bench("sharding.py", "--filelist", breakhis_listing(), "--every", 150, "--read-images", 16,
                  "--image-size", 32, "--one-process", tmp_path=tmp_path)
    assert r["images"] == len(sharding.listing(breakhis_listing(), 150)[0])
    assert set(r["steps"]) == {"copy", "check_dataset", "make_splits", "encode_and_index_jpeg", "encode_and_index_png"}
    assert positive(*(s["seconds"] for s in r["steps"].values()), r["pipeline_vs_copy"])
    disk = r["bytes_on_disk_mb"]
    assert disk["shards_jpeg95"] < disk["source_png"]  # re-encoding to JPEG shrinks BreakHis-like PNGs


def test_shard_encoding_tiny():
    proc = subprocess.run([sys.executable, str(BENCH / "shard_encoding.py"), "--images", "2", "--passes", "1",
                           "--image-size", "32", "--batch-size", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["bench"] == "shard_encoding"
    assert set(result["variants"]) == {"png_original", "jpeg95_full", "jpeg95_256", "raw_full"}
    assert positive(*(v["images_per_cpu_s"] for v in result["variants"].values()))
    assert result["variants"]["png_original"]["mean_abs_pixel_error"] == 0
    # The store's bytes per record: the train split (2 of the 4 images) shares its shard with val and test.
    raw = 700 * 460 * 3
    assert raw <= result["variants"]["raw_full"]["bytes_per_image"] < 1.05 * raw


def test_sharding_listing_pairs_the_duplicated_slide():
    rels, same_as = sharding.listing(breakhis_listing())
    assert len(rels) == 7909
    assert len(same_as) == 123  # slide 14-13412: every lobular copy repeats its ductal original
    assert all("SOB_M_LC" in k and "SOB_M_DC" in v and v in rels for k, v in same_as.items())


def test_synthetic_images_repeat_their_original(tmp_path):
    size = common.write_he_images(tmp_path, ["a.png", "b/c.png", "d.png"], seed=1, size=(46, 70),
                                  same_as={"d.png": "b/c.png"})
    assert (tmp_path / "d.png").read_bytes() == (tmp_path / "b/c.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b/c.png").read_bytes()
    assert size == sum((tmp_path / p).stat().st_size for p in ["a.png", "b/c.png", "d.png"])


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path, tiny_steps):
    # Up to the shards: no TensorFlow job (the whole default target runs in tests/test_workflow.py's
    # demo fixture); the overlay is passed all the same.
    target = "results/tfrecords/cancer_types/fold0/train.json"
    r = run_bench("end_to_end.py", "--config", *TINY_CONFIG, "--configfile", tiny_steps, "--targets", target,
                  tmp_path=tmp_path)
    assert positive(r["seconds"], r["peak_rss_mb"], r["noop_seconds"])
    assert r["jobs"] == sum(rule["jobs"] for rule in r["job_seconds_by_rule"].values())
    assert set(r["job_seconds_by_rule"]) == {"make_demo", "check_dataset", "make_splits", "encode_dataset",
                                             "write_shards"}
    assert r["targets"] == [target]
    assert r["images"] == {"tma": 96}


@pytest.mark.slow
def test_scaling_tiny(tmp_path):
    # The scaling arithmetic over two real runs; the dataset check alone scales with demo_scale, and
    # test_end_to_end_tiny already runs the whole workflow through the same run_once.
    r = run_bench("scaling.py", "--scales", 1, 2, "--config", *TINY_CONFIG, "--targets", "manifests",
                  tmp_path=tmp_path)
    assert r["images"] == {"1": 96, "2": 192}  # JSON keys are strings
    assert r["images_vs_base"]["2"] == 2.0
    assert set(r["exponent"]) == {"2"}
    assert r["targets"] == ["manifests"]
    assert {"make_demo", "check_dataset"} == set(r["job_seconds_by_rule"]["1"])
    assert r["seconds_vs_base"]["2"] == pytest.approx(r["seconds"]["2"] / r["seconds"]["1"], rel=0.01)


def test_rule_seconds_sums_the_usage_lines_of_job_logs(tmp_path):
    line = "2026-12-08 01:00:00 INFO job resources: wall {} s, CPU {} s (user 1.00, system 0.25), peak memory {} MB\n"
    for rel, text in [("train/a/fold0.log", "started\n" + line.format(2.5, 2.25, 300.5)),
                      # Two runs appended to one log (a script run twice by hand): both count, the larger peak.
                      ("train/b/fold0.log", line.format(1.0, 0.5, 500) + "ERROR x\n" + line.format(0.5, 1.0, 100)),
                      ("fit_stain.log", line.format(4, 3, 50))]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert end_to_end.rule_seconds(tmp_path) == {
        "train": {"jobs": 2, "seconds": 4.0, "cpu_seconds": 3.75, "max_process_rss_mb": 500.0},
        "fit_stain": {"jobs": 1, "seconds": 4.0, "cpu_seconds": 3.0, "max_process_rss_mb": 50.0}}
    (tmp_path / "train" / "c.log").write_text("started\n")
    with pytest.raises(RuntimeError, match="c.log has no 'job resources' line"):
        end_to_end.rule_seconds(tmp_path)


def test_benchmark_images_come_from_the_demo_painter():
    import numpy as np

    from deepbc.data import synthetic_he

    # Image 9: the second style (F) at the second magnification (100X), patient 0.
    expected = synthetic_he.paint("F", synthetic_he.MAG_SCALE[100], (70, 46), 1, "bench/9", "bench0", supersample=1)
    assert np.array_equal(common.he_image(1, 9, 46, 70), np.asarray(expected))


def test_trainer_benchmark_trains_as_the_workflow_does(tmp_path, monkeypatch):
    """The trainer variant logs and writes summaries as often as `rule train` (train_model.py
    passes no log_every), not every step: otherwise it times summaries the workflow never runs."""
    import inspect

    from deepbc.training import train

    workflow_default = inspect.signature(train.train).parameters["log_every"].default
    calls = []

    def recording_train(train_json, val_json, out_dir, state_dir, arch, settings, seed, **kwargs):
        calls.append(kwargs)
        out_dir.mkdir()
        (out_dir / "training.csv").write_text("step,images_per_sec\n1,8.0\n2,8.0\n3,8.0\n")
        return {"precision": "fp32"}

    monkeypatch.setattr(train, "train", recording_train)
    training.trainer_rate(tmp_path, tmp_path, "resnet_small", dict(training.SETTINGS, batch_size=4, max_number_of_steps=3), 0, 1,
                          warmup=1)
    assert calls[0].get("log_every", workflow_default) == workflow_default


def test_stain_tiny():
    proc = subprocess.run([sys.executable, str(BENCH / "stain.py"), "--images", "1", "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert set(result["methods"]) == {"none", "macenko", "reinhard"}
    assert positive(*(v["ms_per_image_median"] for v in result["methods"].values()))


def test_each_trainer_measurement_trains_afresh(tmp_path, monkeypatch):
    """A repeat in the same folder must train again: the trainer does not retrain a model already
    published with the same inputs, so a repeat would read the first measurement's curve."""
    from deepbc.training import train

    outs = []

    def recording_train(train_json, val_json, out_dir, state_dir, arch, settings, seed, **kwargs):
        assert not out_dir.exists(), "a measurement found the previous one's model"
        outs.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "training.csv").write_text("step,images_per_sec\n1,8.0\n2,8.0\n3,8.0\n")
        return {"precision": "fp32"}

    monkeypatch.setattr(train, "train", recording_train)
    values = dict(training.SETTINGS, batch_size=4, max_number_of_steps=3, eval_every_steps=3, save_every_steps=3)
    for _ in range(2):
        training.trainer_rate(tmp_path, tmp_path, "resnet_small", values, 0, 1, warmup=1)
    assert len(set(outs)) == 2


@pytest.mark.slow
def test_host_overhead_tiny(tmp_path):
    r = run_bench("host_overhead.py", "--quick", tmp_path=tmp_path)
    assert positive(r["trainer_steps_per_s"], r["bare_steps_per_s"], r["trainer_vs_bare"],
                    r["predict_images_per_s"], r["bare_predict_images_per_s"], r["predict_vs_bare"])
    assert set(r["ms_per_step"]) == {"trainer", "bare_train"} and set(r["ms_per_image"]) == {"predict", "bare_predict"}
    assert r["trainer_overhead_ms"] == pytest.approx(r["ms_per_step"]["trainer"] - r["ms_per_step"]["bare_train"],
                                                     abs=1e-3)
    assert len(r["trainer_vs_bare_runs"]) == 1
    assert len(r["loop_runs_ms"]["loop"]) == len(r["loop_overhead_ms_runs"]) == 2  # two blocks each, alternating
    assert positive(r["loop_steps_per_s"], r["loop_vs_bare"], *r["loop_ms_per_step"].values(),
                    *r["thread_cpu_ms_per_step"].values())


@pytest.mark.slow
def test_parity_tiny(tmp_path):
    r = run_bench("parity.py", "--quick", tmp_path=tmp_path)
    assert r["runs"] == ["cancer_types"] and r["seeds"] == [1, 2]
    assert [(x["seed"], x["requested"]) for x in r["results"]] == [(1, "fp32"), (1, "mixed"), (2, "fp32"), (2, "mixed")]
    mixed = precision.for_this_machine("mixed").name
    assert r["summary"]["cancer_types"]["computed_in"] == {"fp32": ["fp32"], "mixed": [mixed]}
    loss = r["summary"]["cancer_types"]["val_loss_last"]
    assert loss["mixed_minus_fp32"] == pytest.approx(loss["mixed"]["mean"] - loss["fp32"]["mean"], abs=1e-3)
    assert len(loss["fp32"]["values"]) == 2 and positive(*loss["fp32"]["values"])


def test_parity_refuses_to_emulate_bfloat16_where_onednn_cannot(tmp_path, monkeypatch):
    """On an AVX2-only CPU, --emulate compared float32 with float32 (Grappler skips the rewrite)."""
    from deepbc.bench import parity

    monkeypatch.setattr(precision, "onednn_bfloat16", lambda: False)
    with pytest.raises(RuntimeError, match="cannot compute bfloat16 on this CPU"):
        parity.run(emulate=True, workdir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow
def test_paper_rehearsal_tiny(tmp_path):
    r = run_bench("paper_rehearsal.py", "--quick", tmp_path=tmp_path)
    assert r["fractions"] == ["1/128", "1/64"] and r["targets"] == ["manifests"]
    assert r["image_sizes"] == {"breakhis": [46, 70], "tma": [32, 32]}
    small, large = (r["images"][f] for f in r["fractions"])
    assert small["breakhis"] < large["breakhis"] and small["tma"] <= large["tma"]
    for run in r["runs"].values():
        assert positive(run["seconds"], run["dry_run_seconds"], run["noop_seconds"], run["snakemake_cpu_seconds"])
        assert set(run["rules"]) == {"check_dataset"} and run["jobs"] == 2  # BreakHis and the TMA folder set
    assert set(r["growth_exponent"]) == {"check_dataset"}


def test_growth_exponent_is_the_log_log_slope():
    from deepbc.bench import rehearsal

    assert rehearsal.exponent([1, 2, 4, 8], [3, 6, 12, 24]) == 1.0
    assert rehearsal.exponent([1, 2, 4], [1, 4, 16]) == 2.0
    assert rehearsal.exponent([1, 2], [0, 5]) is None  # a rule that took no time at one size
