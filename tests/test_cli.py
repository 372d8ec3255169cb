import io
import subprocess
import sys
from pathlib import Path

import pytest

from ncn.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for stage in COMMANDS:
        assert stage in out


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_each_stage_help_names_itself(stage, capsys):
    """`ncn <stage> --help` explains that stage under its own name (the usage line a person copies)."""
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ncn {stage}") and len(out.splitlines()) > 3, out[:200]


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "ncn.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "stages:" in r.stdout


def test_unknown_stage_fails(capsys):
    with pytest.raises(SystemExit) as e:
        main(["nonsense"])
    assert e.value.code != 0


def test_bare_ncn_lists_the_stages(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    for stage, (_, help_) in COMMANDS.items():
        assert f"  {stage:<12} {help_}" in err
    assert "required" not in err and "args" not in err


# ---- progress: a tqdm on a terminal, summary lines in a log ------------------------------------


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_tqdm_on_a_terminal_and_plain_lines_in_a_log():
    from tqdm import tqdm

    from ncn.progress import LogBar, bar

    assert isinstance(bar(total=3, file=Tty()), tqdm)
    log = io.StringIO()
    b = bar(total=100, desc="train x", file=log, unit="step")
    assert isinstance(b, LogBar)
    for i in range(100):
        b.update(1)
        b.set_postfix(loss=f"{i:.1f}")
    b.close()
    b.close()  # a second close prints nothing
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10  # every tenth of the total: 9 on the way, the last at close
    assert lines[0].startswith("train x: 10/100 step (10%), ") and lines[0].endswith(", loss=9.0")
    assert lines[-1].startswith("train x: 100/100 step (100%), ") and lines[-1].endswith(", loss=99.0")


def test_progress_log_lines_every_n_iterable_bytes_and_initial():
    from ncn.progress import bar

    log = io.StringIO()
    assert list(bar(range(7), desc="rounds", file=log, every=3)) == list(range(7))
    assert [ln.split(",")[0] for ln in log.getvalue().splitlines()] == ["rounds: 3/7 it (43%)", "rounds: 6/7 it (86%)",
                                                                       "rounds: 7/7 it (100%)"]
    log = io.StringIO()
    with bar(total=3_000_000, desc="tokenize", file=log, unit="B", unit_scale=True, mininterval=1.0) as b:
        b.update(1_500_000)
        b.update(b.total - b.n)
    assert log.getvalue().splitlines()[0].startswith("tokenize: 1.50M/3.00M B (50%)")
    assert len(log.getvalue().splitlines()) == 2
    log = io.StringIO()  # a resumed bar counts from `initial`: a tenth of the remaining steps
    b = bar(total=30, initial=10, desc="train", file=log, unit="step")
    for _ in range(20):
        b.update()
    b.close()
    assert log.getvalue().splitlines()[0].startswith("train: 12/30 step")
    log = io.StringIO()  # no total: a line per interval_s seconds, and one at the end
    with bar(desc="valid", file=log, interval_s=0.0) as b:
        b.update(5)
        b.update(3)
    assert [ln.split(",")[0] for ln in log.getvalue().splitlines()] == ["valid: 5 it", "valid: 8 it"]


def test_the_console_script_exits_fast_but_runs_exit_handlers_and_flushes(tmp_path):
    """run() (the `ncn` script) skips the interpreter's teardown (os._exit) but not what a normal
    exit does: the atexit handlers run, buffered stdout (a file, as under Snakemake's `> log`)
    reaches the file, and the exit code is main()'s."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
            "from ncn.cli import run\n"
            "sys.argv = ['ncn', 'config', '--config', sys.argv[1]]\n"
            "run()\n")
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        r = subprocess.run([sys.executable, "-c", code, "config/smoke.yaml"], stdout=f, stderr=subprocess.PIPE,
                           text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "handler ran" in r.stderr
    assert "profile: smoke" in out.read_text()  # the resolved config, flushed before os._exit
    r = subprocess.run([sys.executable, "-c", code.replace("sys.argv[1]]", "'no/such.yaml']"), "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "handler ran" in r.stderr and "no/such.yaml" in r.stderr
