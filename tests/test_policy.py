"""Cache policies: the registry, and adding a method as one new class (written here, not in the package)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from conftest import make_model

from lm_eval_streaming.core.methods.streaming_llm import StreamingLLM
from lm_eval_streaming.core.methods import STREAMING_METHODS, baseline_policy, method_names, policy_for
from lm_eval_streaming.options import StreamingArgError
from lm_eval_streaming.core.policy import \
    register_policy
from lm_eval_streaming.core.scoring import score_sequences

VOCAB = 1000


@register_policy
@dataclass(frozen=True)
class SinksAtTruePositions(StreamingLLM):
    """Sinks + window with keys at their ORIGINAL positions (no positional shift): the mistake of several
    re-implementations, as a method of its own. One class is all a new method needs."""

    method = "test_sinks_no_shift"

    @property
    def needs_rotary(self) -> bool:
        return False

    def sink_query_position(self, q_pos):
        return None


@torch.no_grad()
def masked_reference(model, ids, sinks, recent):
    """One plain eager forward with an explicit 4D mask: key k visible to query t iff k <= t and
    (k < sinks or k >= t - recent), all at true positions."""
    model.set_attn_implementation("eager")
    n = len(ids)
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = (k <= q) & ((k < sinks) | (k >= q - recent))
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, float("-inf"))
    logits = model(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


def test_registry_knows_the_methods_and_the_baseline():
    assert {"streaming_llm", "dense", "window", "sliding_recompute"} <= set(method_names())
    assert "dense" not in STREAMING_METHODS and baseline_policy().full_attention
    assert policy_for("dense").record_sizes() == (0, None)
    assert policy_for("streaming_llm", 4, 252).record_sizes() == (4, 252)
    with pytest.raises(StreamingArgError, match="method='sinks' is unknown"):
        policy_for("sinks")
    with pytest.raises(StreamingArgError, match="recent_size=0"):
        policy_for("streaming_llm", 4, 0)
    with pytest.raises(StreamingArgError, match="start_size \\+ recent_size = 0"):
        policy_for("window", 0, 0)


@pytest.mark.parametrize("arch", ("gpt_neox", "llama"))
def test_a_new_method_is_one_class(arch):
    model = make_model(arch, vocab=VOCAB)
    g = random.Random(3)
    ids = [g.randrange(VOCAB) for _ in range(70)]
    policy = policy_for("test_sinks_no_shift", 3, 10)
    assert "test_sinks_no_shift" in method_names()  # the registry is read when asked
    ref = masked_reference(model, ids, 3, 10)
    for chunk in (1, 9, 64):
        got = score_sequences(model, [ids], policy, chunk)[0].nll.double()
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), chunk
    shifted = score_sequences(model, [ids], policy_for("streaming_llm", 3, 10), 16)[0].nll.double()
    assert (shifted - ref).abs().max() > 1e-3  # the positional shift is a different method
