"""Score-based eviction (h2o, tova, knorm) against an independent token-by-token float64 reference.

The reference shares no code with ``lm_eval_streaming``: it runs the unchanged Hugging Face model in
float64 one token at a time with its own DynamicCache (every key, rotated at its true position) and
an attention function written here, which attends only to the keys its own bookkeeping keeps alive
(per layer and KV head), re-rotates keys to their cache slots itself when ``position_shift`` is on,
records the probabilities and, after every E tokens, evicts with plain Python sorting.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from conftest import make_model
from transformers import AttentionInterface, DynamicCache

from lm_eval_streaming.core.eviction import keep_top
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.scoring import score_sequences
from lm_eval_streaming.options import StreamingArgError

ARCHS = ("gpt_neox", "llama")  # NeoX: partial rotary (25 %); Llama: 4 query heads over 2 KV heads
VOCAB = 1000
REF = "test_eviction_reference"


def _inv_freq(config):
    head_dim = config.hidden_size // config.num_attention_heads
    rope = config.rope_parameters
    rot = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    return 1.0 / (rope["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))


def _rotate(x, inv_freq, shift: float):
    """Rotate the rotary dims of one vector x [D] by ``shift`` positions (rotate-half convention)."""
    rot = 2 * len(inv_freq)
    ang = shift * inv_freq
    cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    half = rot // 2
    r = x[:rot]
    turned = torch.cat([-r[half:], r[:half]])
    return torch.cat([r * cos + turned * sin, x[rot:]])


class Reference:
    """Bookkeeping of one stream: alive positions, H2O sums and TOVA's last probabilities."""

    def __init__(self, method, sinks, recent, every, shift, config):
        self.method, self.sinks, self.recent, self.every, self.shift = method, sinks, recent, every, shift
        self.inv_freq = _inv_freq(config)
        layers = config.num_hidden_layers
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.alive = [[[] for _ in range(self.kv_heads)] for _ in range(layers)]
        self.h2o = [[{} for _ in range(self.kv_heads)] for _ in range(layers)]
        self.last = [{} for _ in range(layers)]

    def attend(self, layer, query, key, value, scaling):
        heads, group = query.shape[1], query.shape[1] // self.kv_heads
        t = key.shape[2] - 1
        out = torch.zeros(query.shape[1], query.shape[-1], dtype=torch.float64)
        tova = {}
        for g in range(self.kv_heads):
            visible = self.alive[layer][g] + [t]
            keys = [key[0, g, p] for p in visible]
            if self.shift:  # slot i for the i-th alive key, the query (and its own key) at the last slot
                keys = [_rotate(k, self.inv_freq, i - p) for i, (k, p) in enumerate(zip(keys, visible))]
            keys = torch.stack(keys)
            values = value[0, g, visible]
            for h in range(g * group, (g + 1) * group):
                q = query[0, h, 0]
                if self.shift:
                    q = _rotate(q, self.inv_freq, len(visible) - 1 - t)
                p = torch.softmax(keys @ q * scaling, dim=0)
                out[h] = p @ values
                for pos, w in zip(visible, p.tolist()):
                    self.h2o[layer][g][pos] = self.h2o[layer][g].get(pos, 0.0) + w
                    tova[pos] = tova.get(pos, 0.0) + w / heads
            self.alive[layer][g].append(t)
        self.last[layer] = tova
        return out[None, :, None, :].transpose(1, 2)

    def prune(self, t, cache):
        budget = self.sinks + self.recent
        for layer, heads in enumerate(self.alive):
            for g, alive in enumerate(heads):
                if len(alive) <= budget:
                    continue
                forced = {p for p in alive if p < self.sinks}
                if self.method == "h2o":
                    window = self.recent - self.recent // 2
                    forced |= {p for p in alive if p > t - window}
                    score = self.h2o[layer][g]
                elif self.method == "tova":
                    score = self.last[layer]
                else:
                    keys = cache.layers[layer].keys[0, g]
                    score = {p: -knorm_rounded(float(keys[p].norm())) for p in alive}
                rest = sorted((p for p in alive if p not in forced), key=lambda p: (score[p], p), reverse=True)
                heads[g] = sorted(forced | set(rest[: budget - len(forced)]))


def knorm_rounded(norm: float, bits: int = 20) -> float:
    """The documented knorm rule, by hand: the norm rounded half to even to ``bits`` significant bits."""
    mantissa, exp = math.frexp(norm)  # norm = mantissa * 2**exp, 0.5 <= mantissa < 1
    return math.ldexp(round(mantissa * 2**bits), exp - bits)


STATE: dict = {}


def _reference_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    return STATE["ref"].attend(module.layer_idx, query, key, value, scaling), None


AttentionInterface.register(REF, _reference_attention)


@torch.no_grad()
def reference_nll(model64, ids, method, sinks, recent, every, shift):
    model64.set_attn_implementation(REF)
    ref = STATE["ref"] = Reference(method, sinks, recent, every, shift, model64.config)
    cache = DynamicCache(config=model64.config)
    nll = []
    for t in range(len(ids) - 1):
        out = model64(input_ids=torch.tensor([[ids[t]]]), position_ids=torch.tensor([[t]]), cache=cache,
                      use_cache=True)
        nll.append(-torch.log_softmax(out.logits[0, -1], -1)[ids[t + 1]])
        if (t + 1) % every == 0:
            ref.prune(t, cache)
    return torch.stack(nll)


def ours(model, ids, policy, chunk):
    return score_sequences(model, [ids], policy, chunk_size=chunk)[0].nll.double()


@pytest.fixture(scope="module")
def models():
    out = {}
    for arch in ARCHS:
        model = make_model(arch, vocab=VOCAB)
        out[arch] = (model, copy.deepcopy(model).double())
    return out


def _ids(n, seed=0):
    g = random.Random(seed)
    return [g.randrange(VOCAB) for _ in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["h2o", "tova", "knorm"])
@pytest.mark.parametrize("every", [1, 5])
@pytest.mark.parametrize("shift", [False, True])
def test_matches_token_by_token_float64_reference(models, arch, method, every, shift):
    model, model64 = models[arch]
    ids = _ids(46, seed=len(method) + every)
    sinks, recent = 2, 9
    ref = reference_nll(model64, ids, method, sinks, recent, every, shift)
    policy = policy_for(method, sinks, recent, evict_every=every, position_shift=shift)
    for chunk in (1, 7, 64):
        got = ours(model, ids, policy, chunk)
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (chunk, (got - ref).abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_eviction_changes_the_result(models, arch):
    """The reference comparison can fail: the methods keep different tokens from each other,
    from streaming_llm, and at different E (and the shift moves the kept keys)."""
    model, _ = models[arch]
    ids = _ids(60, seed=11)
    runs = {m: ours(model, ids, policy_for(m, 2, 9), 16) for m in ("streaming_llm", "h2o", "tova", "knorm")}
    runs["h2o-e8"] = ours(model, ids, policy_for("h2o", 2, 9, evict_every=8), 16)
    runs["tova-shift"] = ours(model, ids, policy_for("tova", 2, 9, position_shift=True), 16)
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (runs[a] - runs[b]).abs().max() > 1e-3, (a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_larger_than_document_is_dense(models, arch):
    model, _ = models[arch]
    ids = _ids(30, seed=3)
    dense = ours(model, ids, policy_for("dense"), 64)
    for method in ("h2o", "tova", "knorm"):
        for every in (1, 4):
            got = ours(model, ids, policy_for(method, 4, 30, evict_every=every, position_shift=True), 8)
            assert torch.allclose(got, dense, atol=1e-5, rtol=0), (method, every)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_of_unequal_lengths_equals_one_by_one(models, arch):
    """Each sequence of a batch keeps its own entries (the choice depends on its data)."""
    model, _ = models[arch]
    seqs = [_ids(n, seed=n) for n in (44, 21, 35)]
    for method in ("h2o", "tova", "knorm"):
        policy = policy_for(method, 2, 7, evict_every=3)
        batched = score_sequences(model, seqs, policy, chunk_size=16)
        for seq, got in zip(seqs, batched):
            alone = score_sequences(model, [seq], policy, chunk_size=5)[0]
            assert torch.allclose(got.nll, alone.nll, atol=1e-5, rtol=0), method


def test_peak_cache_is_budget_plus_e_flat_in_length(models):
    model, _ = models["llama"]
    cfg = model.config
    per_entry = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    for every in (1, 6):
        peaks = []
        for n in (40, 90):
            diag = Diagnostics()
            score_sequences(model, [_ids(n, seed=n)], policy_for("h2o", 2, 9, evict_every=every), chunk_size=16,
                            diagnostics=diag)
            peaks.append(diag.peak_kv_bytes)
        assert peaks == [per_entry * (11 + every)] * 2, (every, peaks)


def test_only_probability_methods_observe(models, monkeypatch):
    """knorm and the position-only methods never receive attention probabilities."""
    from lm_eval_streaming.core import eviction

    calls = []
    original = eviction.ScoredLayer.observe
    monkeypatch.setattr(eviction.ScoredLayer, "observe", lambda self, p: (calls.append(p.shape), original(self, p)))
    model, _ = models["llama"]
    ids = _ids(30, seed=5)
    for method in ("knorm", "streaming_llm", "window", "dense"):
        ours(model, ids, policy_for(method, 2, 9), 8)
    assert calls == []
    ours(model, ids, policy_for("h2o", 2, 9), 8)
    assert len(calls) == 29 * model.config.num_hidden_layers  # one per fed token (all but the last) per layer


def _keys_with_norms(norms, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(len(norms), dim, generator=g, dtype=torch.float64)
    return (keys / keys.norm(dim=-1, keepdim=True) * torch.tensor(norms, dtype=torch.float64)[:, None]).float()


def _knorm_kept(keys, budget):
    """What a knorm pruning keeps of keys [K, D] (the two calls ScoredLayer.prune makes)."""
    policy = policy_for("knorm", 0, budget)
    return keep_top(policy.prune_score(None, keys[None, None]), budget)[0, 0].tolist()


def test_knorm_keeps_the_smallest_norms_not_a_grid():
    """SmolLM2's case: norms 16.62472 (earlier) and 16.62521 (later), relative gap 2.9e-5, beside a key of norm 32:
    the smaller one is kept, as a brute-force sort of the norms (float64) says."""
    norms = [32.0, 16.62472, 16.62521, 5.0, 6.0, 16.7]
    keys = _keys_with_norms(norms)
    for budget in range(1, len(norms)):
        brute = sorted(range(len(norms)), key=lambda i: (keys[i].double().norm().item(), -i))[:budget]
        assert _knorm_kept(keys, budget) == sorted(brute), budget


def test_knorm_ties_only_at_rounding_and_keeps_the_later_key():
    """The same key rotated (a repeated token): norms equal but for float32 rounding tie, so the later is kept
    whichever rounds smaller; the documented rule (20 significant bits) computed by hand agrees on every pair."""
    key = _keys_with_norms([3.3])[0]
    angle = torch.tensor(0.7)
    turned = key.clone()
    turned[0], turned[1] = key[0] * angle.cos() - key[1] * angle.sin(), key[0] * angle.sin() + key[1] * angle.cos()
    for a, b in ((key, turned), (turned, key)):
        keys = torch.stack([a, b, key * 2])
        assert _knorm_kept(keys, 1) == [1]
    for n in (16.62472, 16.62521, 0.1234567, 3.3, 1e-3):
        x = torch.tensor([n], dtype=torch.float32)
        from lm_eval_streaming.core.methods.knorm import rounded_norm

        assert rounded_norm(torch.stack([x, torch.zeros(1)], -1)).item() == knorm_rounded(float(x)), n


def test_keep_top_breaks_ties_towards_the_later_position():
    g = random.Random(0)
    for _ in range(200):
        n, keep = g.randint(1, 12), None
        keep = g.randint(0, n)
        scores = [float(g.choice([0, 1, 2, float("inf")])) for _ in range(n)]
        want = sorted(sorted(range(n), key=lambda i: (scores[i], i), reverse=True)[:keep])
        assert keep_top(torch.tensor([scores]), keep)[0].tolist() == want


@pytest.mark.parametrize("bad,message", [
    ({"evict_every": 0}, "evict_every=0"),
    ({"evict_every": "x"}, "evict_every='x'"),
    ({"position_shift": "maybe"}, "position_shift='maybe'"),
    ({"heavy": 3}, "heavy=3"),
])
def test_bad_options_name_the_value(bad, message):
    with pytest.raises(StreamingArgError, match=message):
        policy_for("h2o", 4, 252, **bad)


def test_evict_every_is_refused_by_position_methods():
    with pytest.raises(StreamingArgError, match="evict_every=16 does not apply to method=streaming_llm"):
        policy_for("streaming_llm", 4, 252, evict_every=16)


# ------------------------------------------------------------------ the compression verdict over every method
def _run(rows, max_tokens=4000):
    from lm_eval_streaming.records import Row, Run

    dense = Row(method="dense", start_size=0, recent_size=None, attn_implementation="sdpa", ppl=30.0, nll_mean=3.4,
                exceeded_trained_context=False)
    cached = [Row(method=m, start_size=4, recent_size=252, attn_implementation="lm_eval_streaming", ppl=30.0,
                  nll_mean=3.4, evict_every=e, delta_nll_vs_dense=delta, delta_nll_ci=ci, delta_reference="sdpa")
              for m, e, delta, ci in rows]
    return Run(model_id="smollm2-135m", max_tokens=max_tokens, num_samples=2, dtype="float32", device="cpu",
               chunk_size=512, rows=[dense, *cached], trained_context=8192)


def _criterion(runs):
    from lm_eval_streaming.analysis.data import Data
    from lm_eval_streaming.analysis.hypotheses.compression import compression

    h = compression(Data(runs, 0.01))
    return next(c for c in h.criteria if c.name.startswith("some compression method beats dense"))


def test_compression_verdict_reads_every_method():
    from lm_eval_streaming.analysis.base import FAIL, PASS, UNDECIDED
    from lm_eval_streaming.records import Interval

    worse = lambda d: (d, Interval(d - 0.01, d + 0.01))  # noqa: E731
    all_worse = _run([("streaming_llm", None, *worse(0.09)), ("h2o", 64, *worse(0.05)), ("knorm", 64, *worse(0.2))])
    c = _criterion([all_worse])
    assert c.status == FAIL and c.key and "h2o E64 4+252" in c.evidence and "knorm E64 4+252" in c.evidence
    one_beats = _run([("streaming_llm", None, *worse(0.09)), ("tova", 64, -0.03, Interval(-0.05, -0.01))])
    c = _criterion([one_beats])
    assert c.status == PASS and "beats dense: tova E64 4+252" in c.evidence
    open_ = _run([("h2o", 64, *worse(0.05)), ("tova", 64, 0.01, Interval(-0.02, 0.04))])
    assert _criterion([open_]).status == UNDECIDED
    # past the trained context dense extrapolates: those rows do not count here
    long = _run([("h2o", 64, -0.5, Interval(-0.6, -0.4))], max_tokens=20000)
    long.rows[0].exceeded_trained_context = True
    assert _criterion([long]).status == UNDECIDED


def test_leaderboard_identity_tells_e_and_shift_apart():
    """Two lm-eval runs that differ only in evict_every or position_shift are two leaderboard rows."""
    from lm_eval_streaming.records.identity import run_identity

    def ident(args):
        return run_identity({"config": {"model": "streaming_hf", "model_args": args}})

    base = ident("method=h2o,start_size=4,recent_size=252,evict_every=16")
    for other in ("method=h2o,start_size=4,recent_size=252,evict_every=64",
                  "method=h2o,start_size=4,recent_size=252,evict_every=16,position_shift=True",
                  "method=tova,start_size=4,recent_size=252,evict_every=16"):
        assert ident(other)["key"] != base["key"], other
    assert ident("method=h2o,start_size=4,recent_size=252,evict_every=16")["key"] == base["key"]


@pytest.mark.parametrize("args,fragment", [
    ("method=h2o,evict_every=0", "evict_every=0"),
    ("method=tova,position_shift=maybe", "position_shift='maybe'"),
    ("method=streaming_llm,evict_every=16", "evict_every=16 does not apply to method=streaming_llm"),
])
def test_lm_eval_model_args_checked_before_loading(args, fragment):
    from lm_eval.api.registry import get_model
    from lm_eval.utils import simple_parse_args_string

    with pytest.raises(StreamingArgError, match=fragment):
        get_model("streaming_hf")(pretrained="/nonexistent/model/never/loaded", **simple_parse_args_string(args))
