"""Flags: --help of every entry point shows each flag's real default, once; a preset's flags
list the value of every preset instead of "None"."""
import re

import pytest

import evaluate
import sft
import train
from support import config


@pytest.mark.parametrize("main, presets", [(train.main, config.PRESETS),
                                           (sft.main, config.SFT_PRESETS),
                                           (evaluate.main, None)])
def test_help_shows_real_defaults(main, presets, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())   # undo the help's line wrapping
    assert "default: None" not in out and "run_defaults" not in out
    for block in re.findall(r"\(presets: [^)]*\)", out):
        assert block.count("presets:") == 1
    if presets is None:
        assert "(default: 1)" in out and "(default: 0.5)" in out   # --k, --gamma
        return
    steps = ", ".join(f"{name} {p['steps']}" for name, p in presets.items())
    assert f"(presets: {steps})" in out   # --steps, with every preset's value
    shown = len(re.findall(r"\(presets: ", out))
    assert shown == len(set.intersection(*(set(p) for p in presets.values())))
    assert "(default: 0)" in out   # a fixed default: --seed


def test_each_flag_help_is_one_short_line_of_source():
    """Flag help says what a flag does in one line; the why lives in the code and the README."""
    for parser in (config.build_parser(), config.sft_parser()):
        for action in parser._actions:
            text = re.sub(r" \(presets: .*\)$", "", action.help or "")
            assert len(text) <= 160, (action.dest, text)
