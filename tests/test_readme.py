"""The README's commands are the ones CI runs."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme, ci = read("README.md"), read(".ci/run")
    test_cmd = next(l for l in readme.splitlines() if l.startswith("pip install") and "pytest" in l)
    assert test_cmd in ci.splitlines()
    assert "python sft.py && python train.py" in readme
