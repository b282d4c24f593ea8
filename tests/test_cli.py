"""One error path for every ``lm-eval-streaming`` subcommand, through the real command.

A user error ends the run with one line ``lm-eval-streaming <cmd>: error: <message>`` naming the
value, exit code 2, no traceback; a bug keeps its traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lm_eval_streaming import cli


def run_cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


# (subcommand, arguments with one user mistake, text the message must contain)
MISTAKES = [
    pytest.param("benchmark", ["--method", "nosuch"], "method='nosuch'", marks=pytest.mark.slow, id="benchmark"),
    pytest.param("speed", ["--tokens", "-5"], "tokens=-5", marks=pytest.mark.slow, id="speed"),  # import torch
    ("experiment", ["{tmp}/missing.yaml"], "missing.yaml"),
    pytest.param("analyze", ["{tmp}/missing.jsonl"], "missing.jsonl", id="analyze"),
    pytest.param("plot", ["{tmp}/missing.jsonl"], "missing.jsonl", id="plot"),
    ("leaderboard", ["{tmp}/missing_dir"], "missing_dir"),
    ("leaderboard", ["{tmp}"], "no lm-eval results"),
    ("recall-report", ["{tmp}", "--trained_context", "-1"], "-1"),
    ("recall-report", ["{tmp}"], "no streaming_recall"),
    ("prepare-model", ["--gguf", "{tmp}/missing.gguf"], "missing.gguf"),
    pytest.param("conformance", ["--types", "nosuch"], "'nosuch'", marks=pytest.mark.slow, id="conformance"),
    ("doctor", ["--dtype", "float8"], "dtype='float8'"),
    ("doctor", ["--lengths", "512,x"], "lengths='x'"),
]


@pytest.mark.parametrize("command,args,needle", MISTAKES)
def test_user_error_is_one_line_with_exit_code_2(tmp_path, command, args, needle):
    proc = run_cli(command, *(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    prefix = f"lm-eval-streaming {command}: error: "
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lm-eval-streaming")]
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-2000:]
    if command != "prepare-model":  # its message goes on with how to fetch the model
        assert proc.stderr.rstrip("\n").splitlines()[-1] == lines[0]
    assert needle in proc.stderr


@pytest.mark.slow
def test_every_subcommand_is_registered():
    """``--help`` imports every subcommand module and lists it (a module that fails to import shows here)."""
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for command in cli.COMMANDS:
        assert command in proc.stdout, (command, proc.stdout)


def test_argparse_errors_use_the_same_form(tmp_path):
    proc = run_cli("leaderboard", "--no-such-option", tmp_path)
    assert proc.returncode == 2
    assert "lm-eval-streaming leaderboard: error: unrecognized arguments: --no-such-option" in proc.stderr


def test_bugs_keep_their_traceback(capsys):
    """Only user errors are shortened: a bug in a subcommand propagates with its traceback."""
    from lm_eval_streaming.errors import UserError

    def user_mistake(args):
        raise UserError("size=-1 is not allowed: expected an integer >= 0")

    def bug(args):
        return {}["missing"]

    assert cli.run_handler("lm-eval-streaming x", user_mistake, None) == 2
    assert capsys.readouterr().err == "lm-eval-streaming x: error: size=-1 is not allowed: expected an integer >= 0\n"
    with pytest.raises(KeyError):
        cli.run_handler("lm-eval-streaming x", bug, None)
    with pytest.raises(ZeroDivisionError):
        cli.run_handler("lm-eval-streaming x", lambda args: 1 / 0, None)


def test_missing_file_names_the_path(tmp_path, capsys):
    def reads(args):
        return open(tmp_path / "absent.json").read()

    assert cli.run_handler("lm-eval-streaming x", reads, None) == 2
    assert capsys.readouterr().err == f"lm-eval-streaming x: error: {tmp_path / 'absent.json'}: No such file or directory\n"
