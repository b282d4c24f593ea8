"""The conformance instrument (``benchmark/conformance.py``): every causal-LM type of the installed transformers
gives the model's own numbers through every path of the project, or is refused in one line.

The reference is each model's own plain forward (``model(input_ids)``), never the project's code.
"""

from __future__ import annotations

from pathlib import Path

from types import SimpleNamespace

import pytest
import torch

from lm_eval_streaming.benchmark import conformance as conf
from lm_eval_streaming.benchmark.tiny_models import WINDOW, causal_lm_types, tiny_config, tiny_model
from lm_eval_streaming.core.methods import STREAMING_METHODS, baseline_policy, policy_for
from lm_eval_streaming.errors import UserError


def test_types_come_from_transformers_registry():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = causal_lm_types()
    assert set(types) == set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and {"llama", "gemma3", "gpt_oss"} <= set(types)


def test_tiny_configs_keep_the_family_features_that_matter():
    mistral = tiny_config("mistral")
    assert (mistral.hidden_size, mistral.num_attention_heads, mistral.num_key_value_heads) == (64, 4, 2)
    assert mistral.sliding_window == WINDOW < conf.DOC_LEN  # the window bites on the documents
    gemma3 = tiny_config("gemma3_text")
    assert set(gemma3.layer_types) == {"sliding_attention", "full_attention"}  # both kinds kept
    assert len(gemma3.layer_types) == gemma3.num_hidden_layers
    assert tiny_config("gptj").rotary_dim <= 16  # fits the 16-dim head


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_check_reports_exact_wrong_and_refused(llama):
    docs = conf.documents()
    ref = conf.own_nll(llama, docs)
    assert conf.check(llama, docs, ref, baseline_policy(), "lm_eval_streaming").status == "exact"
    shifted = conf.check(llama, docs, ref + 1e-3, baseline_policy(), "lm_eval_streaming")
    assert shifted.status == "WRONG" and float(shifted.detail) == pytest.approx(1e-3, rel=0.01)
    # an evicting cache differs from dense: the instrument sees it
    small = conf.check(llama, docs, ref, policy_for("streaming_llm", 2, 8), None)
    assert small.status == "WRONG"
    refused = conf.check(SimpleNamespace(config=SimpleNamespace(model_type="gpt2"),
                                         register_forward_pre_hook=llama.register_forward_pre_hook),
                         docs, ref, policy_for("streaming_llm"), None)
    assert refused.status == "refused" and "gpt2" in refused.detail


def test_refusal_after_a_forward_or_over_several_lines_is_a_crash(llama, monkeypatch):
    docs = conf.documents()
    ref = conf.own_nll(llama, docs)

    def refuse_late(model, *args, **kwargs):
        model(input_ids=torch.tensor([[1, 2]]))
        raise UserError("too late")

    monkeypatch.setattr(conf, "score_sequences", refuse_late)
    assert conf.check(llama, docs, ref, baseline_policy(), None).status == "crash"
    monkeypatch.setattr(conf, "score_sequences", lambda *a, **k: (_ for _ in ()).throw(UserError("a\nb")))
    assert conf.check(llama, docs, ref, baseline_policy(), None).status == "crash"


def test_table_names_every_type_and_cell(llama):
    rows = [conf.conform("llama"), conf.Row("nosuch", not_built="ValueError: no")]
    text = conf.table(rows, "cmd")
    assert "| llama | exact |" in text and "nosuch: ValueError: no" in text
    assert all(m in text for m in STREAMING_METHODS) and "transformers " in text


def test_docs_table_lists_every_registered_type():
    """docs/conformance.md is regenerated when transformers changes (``lm-eval-streaming conformance``)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "conformance.md").read_text(encoding="utf-8")
    missing = [t for t in causal_lm_types() if f"| {t} |" not in text and f"- {t}: " not in text]
    assert not missing, f"docs/conformance.md lacks {missing}: regenerate it with lm-eval-streaming conformance"


def _failures(row):
    return {m: row.cells[m].short() + (f": {row.cells[m].detail}" if row.cells[m].status == "crash" else "")
            for m in row.failures}


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen3", "gemma2", "gemma3_text", "gpt_oss", "stablelm",
                                        "cohere", "gptj", "phi"])
def test_loaded_families_are_exact_or_refused(model_type):
    """The fast loop's share of the slow test below: the families people load."""
    row = conf.run_all([model_type])[0]
    assert not row.not_built, row.not_built
    assert not row.failures, _failures(row)


@pytest.mark.slow
def test_every_model_type_is_exact_or_refused():
    """No type gives a number different from its own forward, and none ends in a traceback."""
    rows = conf.run_all()
    bad = {r.model_type: _failures(r) for r in rows if r.failures}
    assert not bad, f"{len(bad)} model types WRONG or crash: {bad}"
