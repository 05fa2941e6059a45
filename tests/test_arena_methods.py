"""The arena's methods (Randomized Soft Thinking, MoI, ThinkRouter, Multiplex Thinking, SeLaR's
push_top) against independent float64 computations of their papers' formulas, on a batch of mixed
rows (confident, uncertain, outside the soft scope); their noise per row, independent of the batch;
their options checked at the door; and each run end to end on the transformers engine.

The reference recomputes p_t from the logits, the hashed uniforms (pure-Python splitmix64), the
Gumbel / Dirichlet (Marsaglia-Tsang) draws and the weights with Python floats, never the
methods' code."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from conftest import make_model, make_tokenizer

import selar
from selar.cli import main as cli_main
from selar.config import SamplingConfig
from selar.decode import step_context
from selar.engines.base import engines_with
from selar.errors import ConfigError
from selar.methods import METHODS, get_method_spec, make_config
from selar.methods.base import VocabInfo

V, T, TOP_K = 16, 0.7, 8
CFG = SamplingConfig(temperature=T, top_k=TOP_K, top_p=1.0, min_p=0.0)
SEEDS = [3, 11, 3, 12345]
STEPS = [0, 5, 7, 2]
IN_SCOPE = [True, True, True, False]


def batch_logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, V, generator=g)
    z[0, 5] += 9.0  # confident
    z[1] *= 0.2  # nearly flat: uncertain
    z[2, 2] += 1.2  # in between
    return z


def ctx_for(logits, seeds=SEEDS, steps=STEPS, scope=IN_SCOPE, cfg=CFG, need=11):
    return step_context(
        logits.clone(),
        cfg,
        need,
        seeds=torch.tensor(seeds),
        steps=torch.tensor(steps),
        in_scope=torch.tensor(scope),
        limit=torch.full((len(seeds),), 100),
    )


def make_method(name: str, **opts):
    cfg = make_config(name, **opts)
    return get_method_spec(name).factory(cfg.options, VocabInfo(size=V, think_end=15))


def run(name: str, logits=None, **opts):
    m = make_method(name, **opts)
    ctx = ctx_for(batch_logits() if logits is None else logits, need=m.num_candidates)
    return m, ctx, m.step(ctx, m.init_state(4, torch.device("cpu")))


def dense(mix) -> torch.Tensor:
    """(B, V) float64: the fed input as weights over the vocabulary (duplicate ids add up)."""
    return torch.zeros(mix.weights.shape[0], V, dtype=torch.float64).scatter_add_(1, mix.ids, mix.weights.double())


# -- the independent reference -----------------------------------------------------------------
M64 = (1 << 64) - 1
C1, C2, C3, GOLD, STREAM = (
    0x9E3779B97F4A7C15,
    0xBF58476D1CE4E5B9,
    0x94D049BB133111EB,
    0xD1B54A32D192ED03,
    0xA0761D6478BD642F,
)


def uniform(seed: int, step: int, col: int, stream: int = 0) -> float:
    x = (seed * C1 + (step + 1) * GOLD + col * C3 + C2 + stream * STREAM) & M64
    x = ((x ^ (x >> 30)) * C2) & M64
    x = ((x ^ (x >> 27)) * C3) & M64
    x ^= x >> 31
    return ((x >> 40) + 0.5) / float(1 << 24)


def gumbel(u: float) -> float:
    return -math.log(-math.log(u))


def ref_p(z: torch.Tensor) -> list[tuple[int, float]]:
    """p_t of one row as (id, prob), most probable first: softmax(z / T) on the top-k."""
    zs = sorted(((float(v), i) for i, v in enumerate(z.tolist())), reverse=True)[:TOP_K]
    m = zs[0][0]
    e = [math.exp((v - m) / T) for v, _ in zs]
    return [(i, x / sum(e)) for (_, i), x in zip(zs, e)]


def vec(pairs) -> torch.Tensor:
    out = torch.zeros(V, dtype=torch.float64)
    for i, w in pairs:
        out[i] += w
    return out


def log_gamma(a: float, seed: int, step: int, base: int, stream: int, attempts: int = 8) -> float:
    """log of a Gamma(a, 1) draw: Marsaglia-Tsang on a + 1 with the boost U^(1/a)."""
    if a == 0:
        return -math.inf
    d = a + 1 - 1 / 3
    c = 1 / math.sqrt(9 * d)
    val = d
    for t in range(attempts):
        u1, u2, u3 = (uniform(seed, step, base + 3 * t + j, stream) for j in range(3))
        x = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
        v = (1 + c * x) ** 3
        if v > 0 and math.log(u3) < 0.5 * x * x + d - d * v + d * math.log(v):
            val = d * v
            break
    return math.log(val) + math.log(uniform(seed, step, base + 3 * attempts, stream)) / a


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) if x > -math.inf else 0.0 for x in xs]
    return [x / sum(e) for x in e]


def check_rows(out, ctx, expected):
    """expected[b] = (token, dense input or None for the plain token, soft)."""
    got = dense(out.inputs)
    for b, (tok, inp, soft) in enumerate(expected):
        assert int(out.tokens[b]) == tok, f"row {b}"
        assert bool(out.soft[b]) == soft, f"row {b}"
        want = vec([(tok, 1.0)]) if inp is None else inp
        torch.testing.assert_close(got[b], want, atol=2e-6, rtol=0, msg=f"row {b}")
        err = float((got[b].double() - want.double()).abs().max() / want.double().abs().max())
        assert err <= 1e-6, f"row {b}: relative error {err:.2e} of the fed input"  # the bar


# -- the fed inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_randomized_soft_thinking_matches_reference(noise):
    tau_g, alpha, topk = 0.5, 2.0, 6
    _, ctx, out = run(f"soft-thinking-{noise}", max_topk=topk, mix_min_p=0.05, gumbel_temperature=tau_g,
                      dirichlet_concentration=alpha, cold_stop=False)  # fmt: skip
    expected = []
    for b, z in enumerate(batch_logits()):
        if not IN_SCOPE[b]:
            expected.append((int(ctx.sampled[b]), None, False))
            continue
        pairs = ref_p(z)[:topk]
        pairs = [(i, q if q >= 0.05 * pairs[0][1] else 0.0) for i, q in pairs]
        s = sum(q for _, q in pairs)
        pairs = [(i, q / s) for i, q in pairs]
        if noise == "gumbel":
            scores = [(math.log(q) if q > 0 else -math.inf) + gumbel(uniform(SEEDS[b], STEPS[b], j, 1))
                      for j, (_, q) in enumerate(pairs)]  # fmt: skip
            w = softmax([x / tau_g for x in scores])
        else:
            w = softmax([log_gamma(alpha * q, SEEDS[b], STEPS[b], j * 25, 1) for j, (_, q) in enumerate(pairs)])
        top = pairs[max(range(len(w)), key=w.__getitem__)][0]
        expected.append((top, vec((i, x) for (i, _), x in zip(pairs, w)), True))
    check_rows(out, ctx, expected)
    assert len({int(t) for t in out.tokens[:3]}) > 1


def test_moi_matches_reference():
    beta, k = 1.5, 5
    _, ctx, out = run("moi", beta=beta, k=k)
    expected = []
    for b, z in enumerate(batch_logits()):
        y = int(ctx.sampled[b])
        if not IN_SCOPE[b]:
            expected.append((y, None, False))
            continue
        pairs = ref_p(z)[:k]
        s = sum(q for _, q in pairs)
        h = -sum(q / s * math.log(q / s) for _, q in pairs) / math.log(k)
        w = [(i, h * q / s / (beta + 1)) for i, q in pairs] + [(y, (beta + 1 - h) / (beta + 1))]
        expected.append((y, vec(w), True))
    check_rows(out, ctx, expected)
    assert out.inputs.ids.shape[1] == k + 1


def test_thinkrouter_matches_reference():
    tau, topk = 0.5, 4
    _, ctx, out = run("thinkrouter", tau=tau, max_topk=topk, mix_min_p=0.0, cold_stop=False)
    expected, routes = [], []
    for b, z in enumerate(batch_logits()):
        pairs = ref_p(z)
        confident = pairs[0][1] >= tau
        routes.append(confident)
        if not IN_SCOPE[b] or not confident:  # discrete: the sampled token
            expected.append((int(ctx.sampled[b]), None, False))
            continue
        top = pairs[:topk]
        s = sum(q for _, q in top)
        expected.append((top[0][0], vec((i, q / s) for i, q in top), True))
    check_rows(out, ctx, expected)
    assert routes[0] and not routes[1]  # the batch holds both routes


@pytest.mark.parametrize("merge", ["weighted", "mean"])
def test_multiplex_matches_reference(merge):
    width = 4
    _, ctx, out = run("multiplex", width=width, merge=merge)
    c = ctx.cand_probs.shape[1]
    expected = []
    for b, z in enumerate(batch_logits()):
        y = int(ctx.sampled[b])
        if not IN_SCOPE[b]:
            expected.append((y, None, False))
            continue
        pairs = ref_p(z) + [(None, 0.0)] * (c - TOP_K)
        draws = [y]
        for j in range(width - 1):
            scores = [(math.log(q) if q > 0 else -math.inf) + gumbel(uniform(SEEDS[b], STEPS[b], j * c + col, 2))
                      for col, (_, q) in enumerate(pairs)]  # fmt: skip
            draws.append(pairs[max(range(c), key=scores.__getitem__)][0])
        prob = dict(pairs[:TOP_K])
        w = [prob[t] for t in draws] if merge == "weighted" else [1.0] * width
        expected.append((y, vec((t, x / sum(w)) for t, x in zip(draws, w)), len(set(draws)) > 1))
    check_rows(out, ctx, expected)


@pytest.mark.parametrize("push_top", [1, 2, 3])
def test_selar_push_top_matches_reference(push_top):
    k, lam = 4, 1.0
    _, ctx, out = run("selar", tau=0.0, k=k, push_weight=lam, push_top=push_top, protect_symbols=False)
    for b, z in enumerate(batch_logits()):
        if not IN_SCOPE[b]:
            continue
        pairs = ref_p(z)[:k]
        s = sum(q for _, q in pairs)
        p_hat = [(i, q / s) for i, q in pairs]
        h = -sum(q * math.log(q) for _, q in p_hat) / math.log(k)
        e = vec(p_hat)
        m = sum(q for _, q in p_hat[:push_top])
        anchor = vec((i, q / m) for i, q in p_hat[:push_top])
        want = e + lam * h * (e - anchor)
        torch.testing.assert_close(dense(out.inputs)[b], want, atol=2e-6, rtol=0)
        assert float((dense(out.inputs)[b].double() - want.double()).abs().max() / want.double().abs().max()) <= 1e-6


# -- the noise: its distribution, and per row independent of the batch --------------------------
def test_noise_follows_its_distribution():
    """Over many seeds: Gumbel soft thinking's token and multiplex's extra draws follow p; the
    Dirichlet weights have mean p and variance p(1 - p) / (alpha + 1)."""
    n, alpha = 4000, 3.0
    z = batch_logits()[2].expand(n, V)
    p = dict(ref_p(z[0]))
    seeds, steps, scope = list(range(n)), [1] * n, [True] * n
    for name, opts in (("soft-thinking-gumbel", {"max_topk": TOP_K, "mix_min_p": 0.0}), ("multiplex", {"width": 2})):
        m = make_method(name, cold_stop=False, **opts) if "soft" in name else make_method(name, **opts)
        ctx = ctx_for(z, seeds, steps, scope, need=m.num_candidates)
        out = m.step(ctx, m.init_state(n, torch.device("cpu")))
        drawn = out.tokens if "soft" in name else out.inputs.ids[:, 1]
        freq = torch.bincount(drawn, minlength=V).double() / n
        for i, q in p.items():
            assert abs(float(freq[i]) - q) < 4 * math.sqrt(q * (1 - q) / n) + 1e-3, (name, i)
    m = make_method("soft-thinking-dirichlet", max_topk=TOP_K, mix_min_p=0.0, dirichlet_concentration=alpha)
    out = m.step(ctx_for(z, seeds, steps, scope, need=m.num_candidates), m.init_state(n, torch.device("cpu")))
    w = dense(out.inputs)
    for i, q in p.items():
        var = q * (1 - q) / (alpha + 1)
        assert abs(float(w[:, i].mean()) - q) < 4 * math.sqrt(var / n), i
        assert abs(float(w[:, i].var()) / var - 1) < 0.15, i


@pytest.mark.parametrize("name", ["soft-thinking-gumbel", "soft-thinking-dirichlet", "multiplex", "moi"])
def test_a_rows_noise_does_not_depend_on_the_batch(name):
    m = make_method(name)
    z = batch_logits()
    full = m.step(ctx_for(z, need=m.num_candidates), m.init_state(4, torch.device("cpu")))
    order = [2, 0]  # a sub-batch, reordered
    part = m.step(
        ctx_for(z[order], [SEEDS[i] for i in order], [STEPS[i] for i in order], [IN_SCOPE[i] for i in order],
                need=m.num_candidates),
        m.init_state(2, torch.device("cpu")),
    )  # fmt: skip
    torch.testing.assert_close(dense(part.inputs), dense(full.inputs)[order], atol=1e-7, rtol=0)
    assert part.tokens.tolist() == full.tokens[order].tolist()
    if name != "moi":  # the same logits and seed at two steps: two draws of the noise
        same = ctx_for(z[[1, 1]], [3, 3], [0, 7], [True, True], need=m.num_candidates)
        o = m.step(same, m.init_state(2, torch.device("cpu")))
        assert not torch.equal(dense(o.inputs)[0], dense(o.inputs)[1])


# -- options at the door -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, opts, named",
    [
        ("soft-thinking", {"noise": "uniform"}, "noise"),
        ("soft-thinking", {"gumbel_temperature": 0.0}, "gumbel_temperature"),
        ("soft-thinking", {"dirichlet_concentration": -1.0}, "dirichlet_concentration"),
        ("soft-thinking", {"cold_stop": "yes"}, "cold_stop"),
        ("moi", {"beta": -0.5}, "beta"),
        ("moi", {"k": 1}, "k"),
        ("thinkrouter", {"tau": 1.5}, "tau"),
        ("thinkrouter", {"max_topk": 0}, "max_topk"),
        ("multiplex", {"width": 0}, "width"),
        ("multiplex", {"merge": "max"}, "merge"),
        ("selar", {"push_top": 0}, "push_top"),
        ("selar", {"push_top": 3, "k": 3}, "push_top"),
        ("selar", {"push_top": 1.5}, "push_top"),
    ],
)
def test_bad_options_are_refused_naming_the_fix(method, opts, named):
    with pytest.raises(ConfigError) as e:
        make_config(method, **opts)
    msg = str(e.value)
    assert msg.startswith(named + " must") and msg.count(". ") == 0, msg


def test_every_engine_that_feeds_sparse_mixtures_takes_them():
    """They feed tokens and sparse mixtures no wider than num_candidates (the vLLM plugin's
    buffer width), so every engine runs them; none is refused."""
    for name in ("soft-thinking-gumbel", "soft-thinking-dirichlet", "moi", "thinkrouter", "multiplex"):
        spec = METHODS[name]
        assert spec.inputs == {"token", "sparse"}
        assert set(engines_with("inputs", spec.inputs)) >= {"transformers", "llamacpp", "vllm"}
        m, _, out = run(name)
        assert out.inputs.ids.shape[1] <= m.num_candidates


# -- end to end ----------------------------------------------------------------------------------
ARENA = ["soft-thinking-gumbel", "soft-thinking-dirichlet", "moi", "thinkrouter", "multiplex"]


@pytest.mark.parametrize("name", ARENA + ["selar"])
def test_runs_end_to_end_on_transformers(tiny_thinking, name):
    opts = {"push_top": 2} if name == "selar" else {"tau": 0.0} if name == "thinkrouter" else {}
    prompts = ["2 + 3 =", "How many clips?"]
    res = selar.generate(tiny_thinking, prompts, name, max_new_tokens=6, temperature=0.8, seeds=[1, 2], **opts)
    assert [len(r.token_ids) for r in res] == [6, 6]
    assert sum(r.num_soft_steps for r in res) > 0
    again = selar.generate(tiny_thinking, prompts[1:], name, max_new_tokens=6, temperature=0.8, seeds=[2], **opts)
    assert again[0].token_ids == res[1].token_ids  # seeded per row, whatever the batch


def test_cli_takes_the_new_methods(tmp_path):
    tok = make_tokenizer(thinking=True)
    make_model(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    args = ["generate", "hi", "--model", str(tmp_path), "-n", "3", "--dtype", "float32", "--json"]
    for extra in (
        ["--method", "moi", "--set", "beta=2"],
        ["--method", "soft-thinking", "--set", "noise=gumbel"],
        ["--method", "multiplex", "--set", "merge=mean"],
        ["--method", "thinkrouter", "--tau", "0.3"],
    ):
        res = CliRunner().invoke(cli_main, args + extra)
        assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(cli_main, args + ["--method", "multiplex", "--set", "merge=max"])
    assert bad.exit_code != 0 and "merge must be one of" in bad.output


def test_the_decode_layer_gives_methods_the_rows_seeds(tiny_thinking):
    from selar.decode import new_session, run_to_end

    seen = []

    class Spy:
        def __init__(self, inner):
            self.inner, self.name, self.num_candidates = inner, inner.name, inner.num_candidates

        def init_state(self, n, device):
            return self.inner.init_state(n, device)

        def step(self, ctx, state):
            seen.append(ctx.seeds.tolist())
            return self.inner.step(ctx, state)

    s = new_session(tiny_thinking, make_config("multiplex", temperature=0, max_new_tokens=3))
    s.method = Spy(s.method)
    prompt = tiny_thinking.tokenizer.encode("2 + 3 =")
    run_to_end(s, [prompt, prompt], [5, 9])
    assert seen == [[5, 9]] * 3
    # greedy, one prompt, two seeds: the randomized weights (and so the recorded tokens) differ
    res = selar.generate(tiny_thinking, ["2 + 3 =", "2 + 3 ="], "soft-thinking-gumbel", temperature=0,
                         max_new_tokens=6, seeds=[1, 2])  # fmt: skip
    assert res[0].token_ids != res[1].token_ids
