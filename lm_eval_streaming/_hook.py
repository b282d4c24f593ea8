"""Start-up hook (run by ``lm_eval_streaming.pth``) for lm-eval releases without plugin discovery.

At interpreter start it only appends a finder to ``sys.meta_path``: nothing heavy
is imported. When lm-eval's registry or TaskManager module is imported, the
plugin registers ``streaming_hf`` (after lm-eval's built-ins) and adds its task
folder to the TaskManager's search paths (before ``--include_path``, so a user
task of the same name wins). It steps aside when lm-eval discovers entry-point
plugins itself. Errors go to stderr; start-up never fails because of it.
"""

import sys

MODEL_TARGET = "lm_eval_streaming.model:StreamingHFLM"


def _report(exc):
    sys.stderr.write(f"lm_eval_streaming: start-up hook disabled: {exc!r}\n")


def _discovers_plugins(module) -> bool:
    """True when this lm-eval loads ``lm_eval.models`` / ``lm_eval.tasks`` entry points itself."""
    try:
        with open(module.__file__, encoding="utf-8") as fh:
            source = fh.read()
    except (OSError, TypeError):
        return False
    return "entry_points" in source and ('"lm_eval.models"' in source or '"lm_eval.tasks"' in source)


def _after_registry(module):
    if _discovers_plugins(module):
        return
    import lm_eval.models  # noqa: F401  (registers the built-ins first: get_model skips them otherwise)

    if "streaming_hf" not in module.model_registry:
        module.model_registry.register("streaming_hf", target=MODEL_TARGET)


def tasks_dir():
    import importlib.util

    spec = importlib.util.find_spec("lm_eval_streaming.tasks")
    return list(spec.submodule_search_locations)[0]


def _after_manager(module):
    if _discovers_plugins(module):
        return
    cls = module.TaskManager
    original = cls.__init__
    if getattr(original, "_lm_eval_streaming", False):
        return

    def __init__(self, *args, include_path=None, **kwargs):
        ours = tasks_dir()
        if include_path is None:
            paths = [ours]
        elif isinstance(include_path, (list, tuple)):
            paths = [ours, *include_path]
        else:
            paths = [ours, include_path]
        original(self, *args, include_path=paths, **kwargs)

    __init__._lm_eval_streaming = True
    __init__.__wrapped__ = original
    cls.__init__ = __init__


# Named by string and imported only when lm-eval imports the module (like MODEL_TARGET): what lm-eval derives
# from --model_args for streaming_hf on the default model (task tokenizer, run name), and RULER's nltk download.
RUN_ARGS = "lm_eval_streaming.harness.run_args"


def _late(function):
    def call(module):
        import importlib

        return getattr(importlib.import_module(RUN_ARGS), function)(module)

    return call


# module -> (before it runs or None, after it ran)
HOOKS = {
    "lm_eval.api.registry": (None, _after_registry),
    "lm_eval.tasks.manager": (None, _after_manager),
    "lm_eval.evaluator": (None, _late("patch_evaluator")),
    "lm_eval.config.evaluate_config": (None, _late("patch_config")),
    "lm_eval.tasks.ruler.prepare_niah": (_late("before_ruler_nltk"), _late("after_ruler_nltk")),
}


class _Loader:
    def __init__(self, loader, hooks):
        self._loader, (self._before, self._after) = loader, hooks

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self._before is not None:
            try:
                self._before(module.__name__)
            except Exception as exc:  # never break the user's import of lm-eval
                _report(exc)
        try:
            self._loader.exec_module(module)
        except BaseException:
            if self._before is not None:  # undo what ran before, even when the module failed
                self._after(module)
            raise
        try:
            self._after(module)
        except Exception as exc:
            _report(exc)


class _Finder:
    def find_spec(self, name, path=None, target=None):
        hooks = HOOKS.get(name)
        if hooks is None:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, hooks)
        return spec


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    # lm-eval imported before us (rare): apply directly.
    for name, (_, after) in HOOKS.items():
        if name in sys.modules:
            after(sys.modules[name])


try:
    install()
except Exception as exc:
    _report(exc)
