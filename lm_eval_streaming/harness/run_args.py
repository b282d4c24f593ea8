"""What lm-eval derives from ``--model_args`` before any model loads, for ``--model streaming_hf``.

lm-eval reads the model args twice outside the model: tasks that generate their own data (RULER's
synthetic tasks) take a tokenizer from them (``tokenizer``, else ``pretrained``), and the results name
the run after ``pretrained`` (``model_name`` and the folder under ``--output_path``; without it a
random id). With the embedded default model ``pretrained`` is absent or an alias that no tokenizer
loader knows, so a streaming_hf run of the default model is given

- ``pretrained=smollm2-135m`` in the model args (its name in the results), and
- ``tokenizer=<the converted checkpoint>`` in the task metadata (the tokenizer the model uses),

unless the user named them. Another embedded model (``pretrained=gemma-3-270m``) is converted once if
needed and named by its checkpoint directory (the adapter loads that like any local checkpoint; the
records map the directory back to the model's name). A path or hub id is left as it is: tasks load the
same id the model does.
The start-up hook applies these (by name, like the model's registration) to lm-eval's CLI config and to
``simple_evaluate``; nothing here imports torch.
"""

from __future__ import annotations

import functools
import sys

from lm_eval_streaming import default_model

MODEL_NAME = "streaming_hf"


@functools.lru_cache(maxsize=None)
def _default_checkpoint() -> str | None:
    """The converted default checkpoint (converted once if needed); None when it cannot be had, so that
    the adapter, which loads it next, reports why in its own words."""
    try:
        return str(default_model.ensure_default_model(progress=False))
    except (default_model.DefaultModelUnavailable, default_model.ConversionError, OSError):
        return None


def _pretrained(model_args) -> str | None:
    if isinstance(model_args, dict):
        value = model_args.get("pretrained")
        return None if value is None else str(value)
    for part in (model_args or "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip() == "pretrained":
            return value.strip()
    return None


def _with_pretrained(model_args, name: str):
    """The model args with ``pretrained=name`` (string stays string, dict stays dict)."""
    if isinstance(model_args, dict):
        return {**model_args, "pretrained": name}
    parts = [p for p in (model_args or "").split(",") if p.strip()
             and p.partition("=")[0].strip() != "pretrained"]
    return ",".join([f"pretrained={name}", *parts])


def _has_key(args, key: str) -> bool:
    if isinstance(args, dict):
        return args.get(key) not in (None, "")
    return any(p.partition("=")[0].strip() == key and p.partition("=")[2].strip()
               for p in (args or "").split(","))


def default_model_args(model, model_args, metadata):
    """(model_args, metadata) for lm-eval: unchanged unless ``model`` is streaming_hf on an embedded model."""
    embedded = default_model.lookup(_pretrained(model_args)) if model == MODEL_NAME else None
    if embedded is None:
        return model_args, metadata
    if embedded.name != default_model.DEFAULT_MODEL_NAME:  # not found: the pip command, before any work
        checkpoint = str(default_model.ensure_model(embedded.name))
        model_args = _with_pretrained(model_args, checkpoint)
    else:
        model_args = _with_pretrained(model_args, embedded.name)
    metadata = dict(metadata or {})
    if not _has_key(model_args, "tokenizer") and not _has_key(metadata, "tokenizer"):
        # RULER sizes its documents with this tokenizer (lm-eval hands it the name the user typed)
        checkpoint = checkpoint if embedded.name != default_model.DEFAULT_MODEL_NAME else _default_checkpoint()
        if checkpoint is not None:
            metadata["tokenizer"] = checkpoint
    return model_args, metadata


def patch_evaluator(module) -> None:
    """Wrap ``lm_eval.evaluator.simple_evaluate`` (the CLI and the Python API both call it)."""
    original = module.simple_evaluate
    if getattr(original, "_lm_eval_streaming", False):
        return

    @functools.wraps(original)
    def simple_evaluate(*args, **kwargs):
        if not args and isinstance(kwargs.get("model"), str):
            kwargs["model_args"], metadata = default_model_args(kwargs["model"], kwargs.get("model_args"),
                                                                kwargs.get("metadata"))
            if metadata:
                kwargs["metadata"] = metadata
            manager = kwargs.get("task_manager")
            # The CLI builds its TaskManager before this call (from its config, patched below); one built
            # by a caller without the tokenizer gets it too, as lm-eval would have merged it.
            meta = getattr(getattr(manager, "_factory", None), "_meta", None)
            if isinstance(meta, dict) and metadata and "tokenizer" in metadata:
                meta.setdefault("tokenizer", metadata["tokenizer"])
        return original(*args, **kwargs)

    simple_evaluate._lm_eval_streaming = True
    module.simple_evaluate = simple_evaluate


def patch_config(module) -> None:
    """Wrap ``EvaluatorConfig._process_arguments`` (where lm-eval's CLI merges model args into the task
    metadata before it builds the TaskManager)."""
    cls = getattr(module, "EvaluatorConfig", None)
    original = getattr(cls, "_process_arguments", None)
    if original is None or getattr(original, "_lm_eval_streaming", False):
        return

    @functools.wraps(original)
    def _process_arguments(self):
        result = original(self)
        self.model_args, self.metadata = default_model_args(self.model, self.model_args, self.metadata)
        return result

    _process_arguments._lm_eval_streaming = True
    cls._process_arguments = _process_arguments
    _patch_default_device(cls)


def _patch_default_device(cls) -> None:
    """lm-eval's config fills ``device=cuda:0`` when neither ``--device`` nor the YAML config gave one; for
    streaming_hf that default becomes None (the best device here), so no warning names a device nobody asked for."""
    original = cls.__dict__.get("from_cli")
    if original is None or getattr(original.__func__, "_lm_eval_streaming", False):
        return

    def from_cli(klass, namespace):
        config = original.__func__(klass, namespace)
        asked = getattr(namespace, "device", None) or (
            getattr(namespace, "config", None) and klass.load_yaml_config(namespace.config).get("device"))
        if config.model == MODEL_NAME and not asked:
            config.device = None
        return config

    from_cli._lm_eval_streaming = True
    cls.from_cli = classmethod(from_cli)


def before_ruler_nltk(module_name: str) -> None:
    """RULER's ``prepare_niah`` downloads nltk's ``punkt_tab`` at import when it is missing. Only the
    essay-haystack tasks use it (they download their essays too); the synthetic ones do not. Offline the
    download can only fail (or hang until a connect timeout), so it is skipped with one line."""
    try:
        import nltk
    except ImportError:
        return  # prepare_niah reports the missing package itself
    try:
        nltk.data.find("tokenizers/punkt_tab")
        return
    except LookupError:
        pass
    original = nltk.download

    def download(resource=None, *args, **kwargs):
        sys.stderr.write(
            f"lm_eval_streaming: nltk {resource!r} is not installed and is not downloaded (offline); only "
            f"RULER's essay-haystack tasks need it: python -m nltk.downloader {resource}\n")
        return False

    download._lm_eval_streaming_original = original
    nltk.download = download


def after_ruler_nltk(module) -> None:
    import nltk

    original = getattr(nltk.download, "_lm_eval_streaming_original", None)
    if original is not None:
        nltk.download = original
