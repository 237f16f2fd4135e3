"""Every workflow script and benchmark runs alone, from anywhere, with --help."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepbc.jobs.logs import USAGE
from tests import trainkit

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "workflow_scripts").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[f"{s.parent.name}/{s.name}" for s in SCRIPTS])
def test_script_help(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


FAILING_MAIN = """
import errno, sys
sys.path.insert(0, {root!r})
from tests import trainkit
from deepbc.jobs import logs
from deepbc.jobs.errors import UserError

def main(argv):
    if {before_setup!r} == "no":
        logs.setup({log!r})
    raise {error}

sys.exit(logs.run_main(main, ["--log", {log!r}]))
"""


@pytest.mark.parametrize("error, before_setup, expected", [
    ("RuntimeError('boom')", "no", ["ERROR unexpected error", "Traceback (most recent call last)",
                                    "RuntimeError: boom"]),
    ("KeyError('shards')", "yes", ["Traceback (most recent call last)", "KeyError: 'shards'"]),
    ("UserError('bad thing', 'a/b.csv', 'fix it')", "yes", ["bad thing", "where: a/b.csv", "what to do: fix it"]),
    ("OSError(errno.ENOSPC, 'No space left on device', 'results/x.parquet')", "no",
     ["no space left on device", "where: results/x.parquet", "free disk space"]),
    # A file name that is not UTF-8 (its byte 0xE9 held by Python as a surrogate), shown as the CSVs show it.
    ("UserError('cannot use it', 'data/zero_\\udce9.png', 'rename it')", "yes",
     ["cannot use it", "where: data/zero_\\xe9.png", "what to do: rename it"]),
    ("RuntimeError('bad name data/zero_\\udce9.png')", "no", ["RuntimeError: bad name data/zero_\\xe9.png"]),
], ids=["unexpected", "before_setup", "user_error", "disk_full", "name_not_utf8", "name_not_utf8_traceback"])
def test_failures_reach_the_log_file(tmp_path, error, before_setup, expected):
    log = tmp_path / "job.log"
    code = FAILING_MAIN.format(root=str(ROOT), log=str(log), error=error, before_setup=before_setup)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    for text in expected:
        assert text in log.read_text() and text in proc.stderr, (text, log.read_text(), proc.stderr)


NOISY_SCRIPT = """
import logging, os, sys, warnings
sys.path.insert(0, {root!r})
from deepbc.jobs import cli, logs

def body(args):
    logs.LOG.info("a detail for the log")
    logs.LOG.info("step 1/9 loss=1.0", extra=logs.PROGRESS)
    logs.LOG.info("step 2/9 loss=0.9", extra=logs.PROGRESS)  # within CONSOLE_PROGRESS_EVERY of the first
    warnings.warn("layer.apply is deprecated", DeprecationWarning)
    logging.getLogger("tensorflow").warning("a TensorFlow warning")
    os.write(2, b"I tensorflow/core/util/port.cc: oneDNN custom operations are on\\n")
    logs.LOG.warning("a warning of the workflow")

cli.run(cli.script("A noisy job.", lambda p: None, body))
"""


def test_a_jobs_console_shows_warnings_and_progress_and_its_log_everything(tmp_path):
    """The demo printed 1,402 lines, TensorFlow's deprecation warnings among them: a job's console
    gets the workflow's warnings, errors and progress; the rest goes to its log file alone."""
    log = tmp_path / "job.log"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", NOISY_SCRIPT.format(root=str(ROOT)),
                           "--log", str(log)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    console = proc.stderr.splitlines()
    assert len(console) == 2, proc.stderr
    assert "step 1/9" in console[0] and "WARNING a warning of the workflow" in console[1]
    text = log.read_text()
    for line in ("a detail for the log", "step 1/9", "step 2/9", "layer.apply is deprecated", "a TensorFlow warning",
                 "oneDNN custom operations are on", "a warning of the workflow"):
        assert line in text, (line, text)


@pytest.mark.slow
def test_corrupt_shard_is_named_in_the_job_log(tmp_path):
    from tests import trainkit

    shard_dir = trainkit.make_shards(tmp_path / "images", tmp_path / "shards", per_split=(32, 8, 8))
    from deepbc.shards import reader as shard_reader

    shard = Path(shard_reader.read_index(shard_dir / "train.json")["paths"][0])  # a shard of the dataset's store
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside a record: its checksum no longer matches
    shard.write_bytes(bytes(data))
    settings = trainkit.settings_values(max_number_of_steps=2, eval_every_steps=2, save_every_steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "train.log"
    proc = subprocess.run([sys.executable, str(ROOT / "workflow_scripts" / "train_model.py"),
                           "--train-index", str(shard_dir / "train.json"), "--val-index",
                           str(shard_dir / "val.json"), "--arch", "resnet_small", "--settings-json",
                           json.dumps(settings), "--out-dir", str(tmp_path / "model"), "--state-dir",
                           str(tmp_path / "state"), "--seed", "1", "--threads", "1", "--memory-mb", "1000", "--gpus", "0",
                           "--log", str(log)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    text = log.read_text()
    assert "corrupt shard: corrupted record at" in text and f"where: {shard}" in text, text[-3000:]
    assert f"delete the folder {shard.parent}/ and rerun" in text
    assert not (tmp_path / "model" / "settings.json").exists()


WORKFLOW_SCRIPTS = sorted((ROOT / "workflow_scripts").glob("*.py"))


@pytest.mark.parametrize("script", WORKFLOW_SCRIPTS, ids=[s.name for s in WORKFLOW_SCRIPTS])
def test_every_script_starts_through_the_shared_cli(script):
    """Parser, logging and exit code come from deepbc.jobs.cli, not from a copy in each script."""
    text = script.read_text()
    assert "main = cli.script(__doc__, arguments, run)" in text and "cli.run(main)" in text
    assert "ArgumentParser" not in text and "logs.setup" not in text and "run_main" not in text




def _options_passed_by_rules():
    """{script: options} that a rule's shell command always passes (not those inside a param)."""
    import re

    passed = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for rule in re.split(r"(?m)^rule ", smk.read_text())[1:]:
            name = re.search(r'script\("([\w.]+)"\)', rule)
            shell = rule.split("shell:", 1)[1] if "shell:" in rule else ""
            if name:
                passed.setdefault(name.group(1), set()).update(re.findall(r"(--[a-z][a-z-]*) \{", shell))
    return passed


def test_values_the_rules_always_pass_have_no_script_default():
    import argparse

    passed = _options_passed_by_rules()
    assert {"write_shards.py", "train_model.py", "compute_metrics.py"} <= set(passed)
    for script, options in passed.items():
        parser = argparse.ArgumentParser()
        trainkit.script(Path(script).stem).arguments(parser)
        actions = {o: a for a in parser._actions for o in a.option_strings}
        for option in options - {"--log"}:  # the log file is optional when a script runs by hand
            assert actions[option].required and actions[option].default is None, (script, option)


def test_cli_main_parses_logs_and_runs(tmp_path, capsys):
    from deepbc.jobs import cli

    seen = []
    main = cli.script("A test script.", lambda p: p.add_argument("--n", type=cli.positive_int, required=True),
                      lambda args: seen.append(args.n))
    log = tmp_path / "job.log"
    main(["--n", "3", "--log", str(log)])
    assert seen == [3] and log.exists()
    # A bad argument is a UserError, which run_main writes to the job's log file, not only stderr.
    from deepbc.jobs import logs

    assert logs.run_main(main, ["--n", "0", "--log", str(log)]) == 1
    assert "bad command line: argument --n: must be at least 1, got 0" in log.read_text()


@pytest.mark.parametrize("script, option, section", [
    ("encode_dataset.py", "--shards-json", "shards"),
    ("fit_stain.py", "--shards-json", "shards"),
    ("make_splits.py", "--splits-json", "splits"),
    ("compute_metrics.py", "--evaluation-json", "evaluation"),
])
def test_a_script_gets_its_whole_config_section_from_the_schema(script, option, section):
    """A rule passes the section as one JSON; run alone with a part of it, the script gets the rest
    from the schema's defaults: no script keeps a default or a list of keys of its own."""
    import argparse

    import yaml

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    parser = argparse.ArgumentParser()
    trainkit.script(Path(script).stem).arguments(parser)
    action = next(a for a in parser._actions if option in a.option_strings)
    assert action.type.section == section
    defaults = {k: v["default"] for k, v in schema["properties"][section]["properties"].items() if "default" in v}
    assert action.type("{}") == defaults


def test_config_section_option_names_what_is_wrong():
    import argparse

    from deepbc.jobs import cli

    parse = cli.config_section("shards")
    assert parse('{"format": "png", "jpeg_quality": 90}')["images_per_shard"] == 256
    for text, said in [("{not json", "not valid JSON"), ("[1]", "must be a JSON object"),
                       ('{"format": "gif"}', "'gif' is not one of ['jpeg', 'png', 'raw']"),
                       ('{"jpeg_quality": 101}', "101 is greater than the maximum of 100")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(said)):
            parse(text)


def test_a_job_log_ends_with_what_the_job_used(tmp_path):
    log = tmp_path / "job.log"
    # A real job script, failing on a bad argument: the usage line still ends its log.
    subprocess.run([sys.executable, str(ROOT / "workflow_scripts" / "make_splits.py"), "--bogus", "--log", str(log)],
                   cwd=ROOT, check=False, capture_output=True)
    lines = log.read_text().splitlines()
    assert "bad command line" in log.read_text()
    usage = USAGE.search(lines[-1])
    assert usage and float(usage["wall"]) > 0 and float(usage["cpu"]) > 0 and float(usage["rss"]) > 10
