"""Packaging and the start-up hook: wheel contents, install/uninstall, never breaking Python."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                 "-w", str(out)])
    assert proc.returncode == 0, proc.stderr
    return next(out.glob("lm_eval_streaming-*.whl"))


def test_wheel_ships_hook_tasks_and_entry_points(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "lm_eval_streaming.pth" in names
    for n in (500, 5000, 20000):
        assert f"lm_eval_streaming/tasks/streaming_ppl/streaming_ppl_{n}.yaml" in names
        assert f"lm_eval_streaming/tasks/streaming_ppl/data/streaming_ppl_{n}.jsonl" in names
        assert f"lm_eval_streaming/tasks/streaming_pg19/streaming_pg19_{n}.yaml" in names
    # every module of every subpackage (methods/, default_model/, ...), not only the top level
    for source in (REPO / "lm_eval_streaming").rglob("*.py"):
        if "__pycache__" not in source.parts:
            assert source.relative_to(REPO).as_posix() in names, source
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[lm_eval.models]" in text and "streaming_hf = lm_eval_streaming.model:StreamingHFLM" in text
    assert "[lm_eval.tasks]" in text


def _site_dirs() -> list[str]:
    """The site-packages directories the running interpreter imports from (a venv's or the system's)."""
    import site

    dirs = [p for p in sys.path if os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages")]
    dirs += [p for p in site.getsitepackages() if p not in dirs]
    return [p for p in dirs if os.path.isdir(p)]


@pytest.mark.slow
def test_regular_install_registers_and_uninstall_removes_hook(wheel, tmp_path):
    """A fresh venv with our wheel installed non-editable, which sees lm-eval and torch wherever the
    running interpreter has them (also when the suite itself runs in a virtualenv): a .pth file lists
    the running interpreter's site-packages as plain paths, so their own .pth files (our editable
    install among them) are not processed and the venv's copy of the package is the one imported."""
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_outer_site_packages.pth").write_text("".join(f"{d}\n" for d in _site_dirs()))
    proc = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    assert proc.returncode == 0, proc.stderr
    assert (site / "lm_eval_streaming.pth").exists()
    code = ("import lm_eval_streaming, lm_eval.api.registry as r; "
            "print(lm_eval_streaming.__file__); print(r.get_model('streaming_hf').__name__)")
    proc = _run([str(py), "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(site) in proc.stdout and "StreamingHFLM" in proc.stdout
    tasks = _run([str(py), "-c", "from lm_eval.tasks import TaskManager; "
                  "print('streaming_ppl_5000' in TaskManager().all_tasks)"], cwd=tmp_path)
    assert tasks.stdout.strip().endswith("True"), tasks.stderr
    assert _run([str(py), "-m", "pip", "uninstall", "-y", "-q", "lm-eval-streaming"]).returncode == 0
    assert not (site / "lm_eval_streaming.pth").exists()
    assert not (site / "lm_eval_streaming").exists()


def test_startup_imports_nothing_heavy():
    proc = _run([sys.executable, "-c", "import sys; print(sorted(m for m in ('torch', 'lm_eval', 'datasets', "
                                       "'transformers') if m in sys.modules))"])
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("registry_source,expect_hook_message", [
    ("raise RuntimeError('lm-eval is broken')\n", False),
    ("x = 1  # no model_registry at all\n", True),
])
def test_broken_lm_eval_never_breaks_python(tmp_path, registry_source, expect_hook_message):
    fake = tmp_path / "fake"
    (fake / "lm_eval" / "api").mkdir(parents=True)
    (fake / "lm_eval" / "__init__.py").write_text("")
    (fake / "lm_eval" / "api" / "__init__.py").write_text("")
    (fake / "lm_eval" / "api" / "registry.py").write_text(registry_source)
    env = {**os.environ, "PYTHONPATH": str(fake)}
    assert _run([sys.executable, "-c", "pass"], env=env).returncode == 0
    assert _run([sys.executable, "-m", "pip", "--version"], env=env).returncode == 0
    proc = _run([sys.executable, "-c", "import lm_eval.api.registry"], env=env)
    if expect_hook_message:
        assert proc.returncode == 0
        assert "lm_eval_streaming: start-up hook disabled" in proc.stderr
    else:
        assert "lm-eval is broken" in proc.stderr  # lm-eval's own error, not ours


def test_steps_aside_when_lm_eval_discovers_plugins(tmp_path):
    from lm_eval_streaming import _hook

    newer = tmp_path / "registry.py"
    newer.write_text('for ep in entry_points(group="lm_eval.models"): ...\n')
    older = tmp_path / "old.py"
    older.write_text("model_registry = {}\n")
    mod = type(sys)("m")
    mod.__file__ = str(newer)
    assert _hook._discovers_plugins(mod)
    mod.__file__ = str(older)
    assert not _hook._discovers_plugins(mod)


@pytest.mark.slow
def test_include_path_overrides_a_task_of_the_same_name(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "task: streaming_ppl_500\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: /x.jsonl\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n")
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tmp_path))
    assert "streaming_ppl_5000" in tm.all_tasks  # ours, found with no include path for them
    entry = tm._index["streaming_ppl_500"]
    assert str(tmp_path) in str(entry.yaml_path)
