"""What a newcomer meets first: an unreachable hub, --help, option spellings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from lm_eval_streaming.options import StreamingArgError

UNREACHABLE = "http://127.0.0.1:9"
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")  # the probe steps aside behind a proxy  # the discard port: connection refused at once, whatever the network


def _unreachable(monkeypatch, cache):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for key in ("HF_HUB_OFFLINE", *PROXIES):
        monkeypatch.delenv(key, raising=False)


def test_unreachable_hub_fails_in_seconds_naming_the_way_out(monkeypatch, tmp_path):
    from lm_eval_streaming.core.loading import check_hub_access

    _unreachable(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(StreamingArgError) as err:
        check_hub_access("EleutherAI/pythia-6.9b")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "EleutherAI/pythia-6.9b" in msg and "HF_HUB_OFFLINE=1" in msg and "smollm2-135m" in msg


def test_unreachable_hub_with_the_model_cached_loads_it_offline(monkeypatch, tmp_path, tiny_model_dirs):
    """A hub id in the local cache (the hub's own layout) is loaded from there, offline, without waiting."""
    import shutil

    from huggingface_hub import constants

    from lm_eval_streaming.core.loading import load_tokenizer

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dirs["llama"], snapshot)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    _unreachable(monkeypatch, tmp_path)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the offline switch stays inside this test
    start = time.perf_counter()
    tok = load_tokenizer("org/tiny")
    assert time.perf_counter() - start < 10
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert tok("the king").input_ids == load_tokenizer(str(snapshot))("the king").input_ids


def test_benchmark_with_an_unreachable_hub_id_exits_2_in_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXIES)}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HUB_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "benchmark", "--model_id",
                          "EleutherAI/pythia-6.9b"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stderr and "smollm2-135m" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ --help
def _parser(name):
    from lm_eval_streaming import cli

    parser = cli.build_parser((name,))
    return next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[name]


def _commands():
    from lm_eval_streaming import cli

    return list(cli.COMMANDS)


HELP_CODE = """
import resource, sys
from lm_eval_streaming.cli import main
try:
    main(sys.argv[1:] + ["--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
usage = resource.getrusage(resource.RUSAGE_SELF)
print("torch" in sys.modules, usage.ru_utime + usage.ru_stime)
"""


@pytest.mark.parametrize("command", ["", *_commands()])
def test_help_imports_no_torch_and_takes_under_a_second(command):
    """CPU seconds of the whole process (interpreter start included): wall time on a machine shared by many
    jobs says more about the others than about us."""
    out = subprocess.run([sys.executable, "-c", HELP_CODE, *([command] if command else [])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    imported, cpu = out.stdout.splitlines()[-1].split()
    assert imported == "False"
    assert float(cpu) < 1.0


@pytest.mark.parametrize("command", _commands())
def test_help_is_plain_text_every_option_described_each_default_once(command):
    parser = _parser(command)
    text = parser.format_help()
    for markup in ("``", ":mod:", ":func:", ":class:", "`"):
        assert markup not in text, (command, markup)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, (command, action.option_strings)
        shown = formatter._get_help_string(action) % {**vars(action), "default": action.default}
        # "(default: X)", "(default X)", "default: X": at most one statement of the option's default
        assert len(re.findall(r"\(default[: ]|default: ", shown)) <= 1, (command, action.option_strings, shown)


@pytest.mark.parametrize("command", _commands())
def test_every_long_option_takes_both_spellings(command):
    parser = _parser(command)
    for action in parser._actions:
        for name in action.option_strings:
            if name.startswith("--") and ("_" in name or "-" in name[2:]):
                for spelling in (name.replace("-", "_").replace("__", "--", 1), "--" + name[2:].replace("_", "-")):
                    assert parser._option_string_actions[spelling] is action, (command, spelling)


def test_both_spellings_parse_to_the_same_value():
    parser = _parser("benchmark")
    assert parser.parse_args(["--max-tokens", "64"]).max_tokens == parser.parse_args(["--max_tokens", "64"]).max_tokens
    assert parser.parse_args(["--no-kernel-error"]).no_kernel_error is True
    exp = _parser("experiment")
    assert exp.parse_args(["c.yaml", "--dry-run"]).dry_run is exp.parse_args(["c.yaml", "--dry_run"]).dry_run is True
    # the help shows one spelling (lm-eval's underscores)
    assert "--dry_run" in exp.format_help() and "--dry-run" not in exp.format_help()
