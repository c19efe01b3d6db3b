"""Progress without a terminal: with the output sent to a file, a run still says where it is,
in lines (step, seconds per step, time left), at the first step, every EVERY_SECONDS, at the end."""
import re

from support import progress


def test_lines_without_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(progress, "EVERY_SECONDS", 1e9)   # only the first and the last step
    bar = progress.bar(range(3, 7), "lanpo", 6, initial=2)   # a run resumed at step 2
    assert isinstance(bar, progress.Lines)   # pytest's stderr is not a terminal
    for step in bar:
        bar.set_postfix(reward=f"{step / 10:.2f}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"lanpo: step 3/6, \d+\.\d\d s/step, \d+ s left; reward 0\.30", lines[0])
    assert lines[1].startswith("lanpo: step 6/6") and "0 s left" in lines[1]
    monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)   # every step
    list(progress.bar(range(4), "sft", 4))
    assert len(capsys.readouterr().err.strip().splitlines()) == 4
    monkeypatch.setenv("TQDM_DISABLE", "1")
    list(progress.bar(range(4), "sft", 4))
    assert capsys.readouterr().err == ""


def test_durations_read_as_a_person_writes_them():
    assert progress._duration(42) == "42 s"
    assert progress._duration(125) == "2 min 05 s"
    assert progress._duration(3 * 3600 + 60) == "3 h 01 min"
