"""The conda environments in envs/ pin exactly what requirements.txt pins."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Needed to develop and test, not to run the workflow: not in the conda environments
# ("pytest" also covers its plugins, pytest-xdist).
DEV_TOOLS = ("pytest", "snakefmt")


def _requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {l.strip() for l in lines if l.strip() and not l.startswith("#") and not l.startswith(DEV_TOOLS)}


def _pip_section(name):
    env = yaml.safe_load((ROOT / "envs" / name).read_text())
    return {d for dep in env["dependencies"] if isinstance(dep, dict) for d in dep["pip"]}


def test_cpu_env_matches_requirements():
    assert _pip_section("cpu.yaml") == _requirements()


def test_gpu_env_matches_requirements_with_cuda_tensorflow():
    expected = {r.replace("tensorflow==", "tensorflow[and-cuda]==") if r.startswith("tensorflow==") else r
                for r in _requirements()}
    assert _pip_section("gpu.yaml") == expected


def test_readme_gpu_install_line_has_the_requirements_pin():
    """The line README gives and the line a GPU job's error gives are one, with requirements.txt's pin."""
    from deepbc.jobs import gpu

    pin = next(r for r in _requirements() if r.startswith("tensorflow=="))
    assert f'"tensorflow[and-cuda]=={pin.split("==")[1]}"' in gpu.install_line()
    assert gpu.install_line() in (ROOT / "README.md").read_text()
