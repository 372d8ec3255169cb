import subprocess
import sys

import pytest

from ncn.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for stage in COMMANDS:
        assert stage in out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "ncn.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "stages:" in r.stdout


def test_unknown_stage_fails(capsys):
    with pytest.raises(SystemExit) as e:
        main(["nonsense"])
    assert e.value.code != 0
