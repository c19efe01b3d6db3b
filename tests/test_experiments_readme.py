"""experiments/README.md lists every script in experiments/ and nothing that is not there."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "experiments")


def test_every_script_is_listed_and_every_listed_script_exists():
    text = open(os.path.join(EXP, "README.md")).read()
    listed = set(re.findall(r"`([A-Za-z0-9_]+\.(?:py|sh))`", text))
    present = {f for f in os.listdir(EXP) if f.endswith((".py", ".sh"))}
    assert present - listed == set(), f"not in experiments/README.md: {present - listed}"
    assert listed - present == set(), f"listed but not in experiments/: {listed - present}"
