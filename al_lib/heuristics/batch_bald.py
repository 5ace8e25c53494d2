"""BatchBALD (Kirsch, van Amersfoort & Gal 2019): greedy batch acquisition by joint mutual info.

The batch ``S`` is grown one sample at a time, each time adding the candidate ``x`` that maximises

    a(S ∪ {x}) = I(y_S, y_x; w) = H(y_S, y_x) - Σ_{i ∈ S ∪ {x}} E_w H(y_i | w),

where the model is the empirical mixture over the T MC samples ``w_t`` (uniform prior on t).
Since ``a(S)`` is the same for every candidate, the greedy step maximises the gain

    I(y_x; w | y_S) = Σ_m p(m) [ H(Σ_t P_mt p(y_x | w_t)) - Σ_t P_mt H(y_x | w_t) ],

over label configurations ``m`` of the batch so far, with posteriors ``P_mt = p(w_t | y_S = m)``.
Each bracket is a Jensen-Shannon divergence: ``0 <= JS_m(x) <= H(w | m)``, and it is exactly 0 for
a configuration whose posterior is certain.

**Configurations.** While the batch has at most ``max_exact_configs`` configurations (default
``num_samples``) they are enumerated exactly, as an ``[R, T]`` table of ``log p(y_S = m | w_t)``
extended by one Kronecker factor per pick. Configurations impossible under every ``w_t`` are
removed, and so are the nearly certain ones up to a total ``Σ p(m) H(w | m)`` of 1e-12 nats (the
most any gain is ever underestimated by it: conditioning on later picks does not raise ``E H``).

Beyond, ``num_samples`` configurations are drawn from the joint (mixture component ``t``
stratified: ``num_samples / T`` draws per MC sample, then each label given ``w_t``) and from then on
extended by drawing only the new pick's label given the same component, so a step re-uses the
previous step's table. The gain estimate is unbiased and uses the same draws for every candidate
(common random numbers). As the batch grows most posteriors become certain and contribute ~0, so
the sampled table is *thinned* after each pick (Russian roulette): a configuration with posterior
entropy ``h`` below a threshold ``τ`` survives with probability ``h / τ`` and its weight is divided
by that probability, which keeps every gain estimate unbiased and adds at most ``w² h (τ - h)`` of
variance; ``τ`` is the largest threshold whose added variance stays within 5% of ``Σ w² h²``. The
table shrinks from ``num_samples`` rows to the ones that still carry information.

**Candidates.** One evaluation is a matrix product ``[R, T] @ [T, B·C]`` (the posterior-predictive
of every configuration for a block of B candidates), an elementwise entropy and a weighted sum
over configurations; blocks are sized so the ``[R, B·C]`` work tensor stays within
``max_work_bytes`` (configurations are chunked too). The gain is submodular, so a candidate's
previous gain (BALD at the first step) bounds its current gain: candidates are evaluated in blocks
of decreasing bound (64, 128, ...) and a step stops once no unevaluated bound can reach the best
gain found ("lazy greedy": the same picks as evaluating every candidate, up to rounding). With
sampled configurations the previous gains are estimates, so this holds up to the estimate's noise.

**Precision.** A step whose full work ``R · N · C`` is small (<= 2^22 elements) computes in float64;
larger steps compute the matrix product and entropies in float32, accumulated in float64 (the
configuration tables, weights and gains stay float64). Gains within 1e-10 (float64) or 2e-6 nats
(float32) of the best count as ties and go to the lower index.

Complexity per greedy step with ``R`` configurations: ``O(N_eval · R · C · T)`` time for the
``N_eval <= N`` candidates evaluated, ``O(N · C · T + R · T)`` memory plus the ``max_work_bytes``
work buffer; never ``[N, C^n, T]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from al_lib.device import resolve_device
from al_lib.heuristics._arrays import check_k, prepare_probs, to_kind
from al_lib.heuristics.scores import _bald, _expected_entropy
from al_lib.heuristics.selection import _top_k
from al_lib.seeding import SeedLike, torch_generator

__all__ = ["batch_bald", "estimate_joint_mutual_information", "joint_mutual_information"]

# Default working memory for one block of candidates (the [configs, block·C] predictive).
_WORK_BYTES = 256 * 2**20
_FLOAT64_BYTES = 8
# A step computes in float64 while configs · N · C stays within this many elements.
_FLOAT64_WORK = 2**22
# Gains this close to the best are ties (rounding noise of sums over many configurations).
_TIE_ATOL = {torch.float64: 1e-10, torch.float32: 2e-6}
# Exact tables leave out nearly certain configurations up to this total Σ p(m) H(w | m) (nats).
_EXACT_DROP = 1e-12
# Thinning of sampled tables may add this fraction of the gain estimates' variance scale per step.
_THIN_VARIANCE = 0.05
# Candidates in the first block of a lazy step (doubled for each further block).
_FIRST_BLOCK = 64
# Configurations drawn per chunk by the estimator (fixed, so a seed gives the same draws always).
_SAMPLE_CHUNK = 2**16


def _prepare(probs, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate ``probs``; return it as given (C >= 2), as float64 on the compute device, and
    whether the input was numpy."""
    p, was_numpy = prepare_probs(probs)
    if p.ndim != 3:
        raise ValueError(f"BatchBALD needs probs of shape [N, C, T], got shape {tuple(p.shape)}")
    if (p < 0).any():
        raise ValueError("probs must be probabilities (>= 0)")
    if device is None and not was_numpy:
        device = p.device
    return p, p.to(resolve_device(device), torch.float64), was_numpy


def _check_indices(p: torch.Tensor, indices) -> list[int]:
    indices = [int(i) for i in indices]
    n = p.shape[0]
    if any(not -n <= i < n for i in indices):
        raise IndexError(f"indices out of range for N={n}: {indices}")
    return indices


def _softmax_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax and log-sum-exp of each row of ``[R, T]`` (no row all -inf).

    Spelt out: ``torch.softmax`` parallelises even tiny inputs, which stalls on busy CPUs.
    """
    top = x.amax(dim=1, keepdim=True)
    e = (x - top).exp()
    total = e.sum(dim=1, keepdim=True)
    return e / total, (top + total.log()).squeeze(1)


def _entropy_rows(prob: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of ``[R, T]`` (nats)."""
    return torch.special.entr(prob).sum(dim=1)


# --- configuration tables ------------------------------------------------------------------------


def _extend(log_joint: torch.Tensor, p_i: torch.Tensor) -> torch.Tensor:
    """Kronecker step: ``[R, T]`` log p(m | w_t), ``[C, T]`` p(y | w_t) -> ``[R·C, T]`` log joint.

    Configurations impossible under every w_t (log p = -inf throughout) are dropped.
    """
    t = log_joint.shape[-1]
    joint = (log_joint[:, None, :] + p_i.log()[None, :, :]).reshape(-1, t)
    return joint[(joint > -math.inf).any(dim=1)]


def _enumerate(p: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Exact ``[C^n, T]`` table of log p(y_indices = m | w_t), from ``p [N, C, T]``."""
    joint = torch.zeros((1, p.shape[-1]), dtype=p.dtype, device=p.device)
    for i in indices:
        joint = _extend(joint, p[i])
    return joint


def _components(num_samples: int, t: int, gen: torch.Generator) -> torch.Tensor:
    """Mixture components of ``num_samples`` draws, stratified: each of the T MC samples gets
    ``num_samples // T`` draws, the remainder goes to distinct random ones (so still unbiased)."""
    full = (num_samples // t) * t
    rest = torch.randperm(t, generator=gen)[: num_samples - full]
    return torch.cat([torch.arange(full) % t, rest])


def _draw_labels(p_i: torch.Tensor, components: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per draw from ``p(y | w_component)``; ``p_i [C, T]`` on the CPU -> int64 ``[M]``.

    Inverse CDF; a class of probability 0 is never drawn.
    """
    cdf = p_i.T.cumsum(dim=1)  # [T, C]
    u = torch.rand(components.shape[0], 1, generator=gen, dtype=p_i.dtype)
    u *= (cdf[:, -1] * (1 - 2.0**-40))[components, None]  # strictly below the total mass
    # The label is the number of classes whose cumulative mass is <= u.
    return torch.searchsorted(cdf[components], u, right=True).squeeze(1)


@dataclass
class _Configs:
    """Label configurations m of the batch so far.

    log_joint : ``[R, T]`` float64 log p(y_S = m | w_t).
    weight : None while enumerated exactly (the weight is p(m)); once sampled, ``[R]`` float64
        importance weights (1 / number drawn, divided by the survival probabilities of thinning).
    components : once sampled, the CPU ``[R]`` mixture component each configuration was drawn from.
    dropped : exact tables: total ``Σ p(m) H(w | m)`` of the configurations left out so far.
    """

    log_joint: torch.Tensor
    weight: torch.Tensor | None = None
    components: torch.Tensor | None = None
    dropped: float = 0.0

    @property
    def exact(self) -> bool:
        return self.weight is None

    @cached_property
    def _normalised(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _softmax_rows(self.log_joint)

    @property
    def posterior(self) -> torch.Tensor:
        """``[R, T]`` p(w_t | m)."""
        return self._normalised[0]

    def weights(self) -> torch.Tensor:
        """``[R]`` p(m) (exact) or importance weights (sampled)."""
        if self.exact:
            return (self._normalised[1] - math.log(self.log_joint.shape[1])).exp()
        return self.weight

    def subset(self, keep: torch.Tensor, weight=None, dropped: float | None = None) -> _Configs:
        """The configurations where ``keep [R]`` is set (computed posteriors carry over)."""
        w = weight if weight is not None else (None if self.exact else self.weight[keep])
        comp = None if self.components is None else self.components[keep.cpu()]
        out = _Configs(self.log_joint[keep], w, comp, self.dropped if dropped is None else dropped)
        if "_normalised" in self.__dict__:
            posterior, log_norm = self._normalised
            out.__dict__["_normalised"] = (posterior[keep], log_norm[keep])
        return out


def _drop(configs: _Configs, budget: float) -> _Configs:
    """Exact tables: leave out the configurations whose posterior over w is (nearly) certain.

    A configuration contributes ``p(m) · JS_m(x)`` to the gain of x, ``0 <= JS_m(x) <= H(w|m)``;
    conditioning on later picks does not raise ``E H(w | m)``. So leaving out configurations of
    total ``Σ p(m) H(w | m) <= budget`` (now and for the rest of the selection: their descendants
    are never created) lowers every gain by at most ``budget``, ever.
    """
    budget -= configs.dropped
    if budget < 0 or configs.log_joint.shape[0] == 0:
        return configs
    cost = configs.weights() * _entropy_rows(configs.posterior)
    order = torch.argsort(cost)
    cum = torch.cumsum(cost[order], dim=0)
    n_drop = int((cum <= budget).sum())
    if n_drop == 0:
        return configs
    keep = torch.ones(len(cost), dtype=torch.bool, device=cost.device)
    keep[order[:n_drop]] = False
    return configs.subset(keep, dropped=configs.dropped + float(cum[n_drop - 1]))


def _thin(configs: _Configs, gen: torch.Generator) -> _Configs:
    """Sampled tables: unbiased thinning by posterior entropy ``h`` (Russian roulette).

    A configuration with ``h < τ`` survives with probability ``h / τ`` and its weight is divided
    by it; ``h >= τ`` are kept. Its contribution ``w · JS(x)`` (``0 <= JS <= h``) keeps its
    expectation and gains variance at most ``w² h (τ - h)``. ``τ`` is the largest threshold whose
    added variance stays within ``_THIN_VARIANCE`` times ``Σ w² h²`` (the variance scale of the
    gain estimates), so thinning removes the many nearly certain configurations and little else.
    """
    r = configs.log_joint.shape[0]
    if r == 0 or _THIN_VARIANCE <= 0:
        return configs
    h = _entropy_rows(configs.posterior)
    w2 = configs.weight.square()
    order = torch.argsort(h)
    hs, w2s = h[order], w2[order]
    s1 = torch.cumsum(w2s * hs, dim=0)  # Σ_{h_j <= h_i} w² h
    s2 = torch.cumsum(w2s * hs * hs, dim=0)
    budget = _THIN_VARIANCE * float(s2[-1])
    u = torch.rand(r, generator=gen, dtype=torch.float64).to(h.device)
    if budget <= 0:  # every posterior is certain: every gain is exactly 0
        return configs.subset(torch.zeros(r, dtype=torch.bool, device=h.device))
    # Added variance with τ just above h_i (rows 0..i thinned): τ S1_i - S2_i, increasing in τ.
    # The largest τ within budget lies in [h_i, h_{i+1}) for the last i with h_i S1_i - S2_i <= B.
    ok = hs * s1 - s2 <= budget
    i = int(ok.sum()) - 1  # ok is monotone: a prefix
    if i < 0:
        return configs
    tau = (budget + float(s2[i])) / float(s1[i]) if float(s1[i]) > 0 else math.inf
    if i + 1 < r:
        tau = min(tau, float(hs[i + 1]))
    survive = (h / tau).clamp(max=1.0)
    keep = u < survive
    return configs.subset(keep, weight=configs.weight[keep] / survive[keep])


def _sample_configs(
    p: torch.Tensor, indices: list[int], num_samples: int, gen: torch.Generator
) -> _Configs:
    """Draw ``num_samples`` configurations of ``y_indices`` from the joint (mixture over w_t).

    Drawn on the CPU (``gen`` is a CPU generator) so a seed gives the same draws on every device.
    """
    components = _components(num_samples, p.shape[-1], gen)
    log_joint = torch.zeros((num_samples, p.shape[-1]), dtype=p.dtype, device=p.device)
    weight = torch.full((num_samples,), 1.0 / num_samples, dtype=p.dtype, device=p.device)
    configs = _Configs(log_joint, weight, components)
    for i in indices:
        configs = _add_sampled(configs, p[i], gen)
    return configs


def _add_sampled(configs: _Configs, p_i: torch.Tensor, gen: torch.Generator) -> _Configs:
    """Extend sampled configurations by a label of ``p_i [C, T]`` drawn given each component."""
    labels = _draw_labels(p_i.cpu(), configs.components, gen).to(p_i.device)
    log_joint = configs.log_joint + p_i.log()[labels]
    return _Configs(log_joint, configs.weight, configs.components)


def _add(configs: _Configs, p: torch.Tensor, selected: list[int], opts: _Options) -> _Configs:
    """The configurations after the last pick ``selected[-1]``: exact while at most
    ``max_exact_configs`` (after dropping), else (from then on) drawn and thinned."""
    p_i = p[selected[-1]]
    if configs.exact:
        extended = _Configs(_extend(configs.log_joint, p_i), dropped=configs.dropped)
        configs = _drop(extended, _EXACT_DROP)
        if configs.log_joint.shape[0] <= opts.max_exact_configs:
            return configs
        configs = _sample_configs(p, selected, opts.num_samples, opts.gen)
    else:
        configs = _add_sampled(configs, p_i, opts.gen)
    return _thin(configs, opts.gen)


# --- gains ---------------------------------------------------------------------------------------


def _gains(
    configs: _Configs,
    p_t: torch.Tensor,
    ent: torch.Tensor,
    candidates: torch.Tensor,
    work_bytes: int,
) -> torch.Tensor:
    """Gains ``I(y_x; w | y_S)`` of ``candidates [B]`` -> float64 ``[B]``.

    ``p_t [T, N, C]`` (in the compute dtype), ``ent [N, T]`` float64 H(y | w_t). Computed as
    ``Σ_m w_m [H(Σ_t P_mt p(y_x | w_t)) - Σ_t P_mt H(y_x | w_t)]`` (module docstring), chunked so
    the ``[rows, chunk·C]`` predictive stays within ``work_bytes``.
    """
    t, _, c = p_t.shape
    posterior64 = configs.posterior
    weight64 = configs.weights()
    out = -(ent[candidates] @ (weight64 @ posterior64))
    r = posterior64.shape[0]
    if r == 0 or len(candidates) == 0:
        return out
    posterior, weight = posterior64.to(p_t.dtype), weight64.to(p_t.dtype)
    size = p_t.element_size()
    chunk = max(1, work_bytes // (size * r * c))
    rows = max(1, work_bytes // (size * min(chunk, len(candidates)) * c))
    for start in range(0, len(candidates), chunk):
        block = candidates[start : start + chunk]
        x = p_t[:, block, :].reshape(t, -1)  # [T, B·C]
        acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for r0 in range(0, r, rows):
            q = posterior[r0 : r0 + rows] @ x  # [rows, B·C] predictive p(y_x | m)
            torch.special.entr(q, out=q)
            acc += weight[r0 : r0 + rows] @ q
        out[start : start + chunk] += acc.view(-1, c).sum(dim=1)
    return out


def _pick(gains: torch.Tensor, available: torch.Tensor, tie_atol: float) -> int:
    """Best available candidate; gains within ``tie_atol`` of the best -> lower index."""
    gains = torch.where(available, gains, -math.inf)
    best = gains.max()
    return int(torch.nonzero(gains >= best - tie_atol)[0, 0])


def _lazy_step(bounds: torch.Tensor, n_available: int, evaluate, tie_atol: float, max_block: int):
    """One greedy step by lazy evaluation -> the winner's index.

    ``bounds [N]`` (float64, -inf = taken) holds each candidate's last gain; it is updated in place
    with the gains evaluated now. ``evaluate(candidates [B]) -> gains [B]``.
    """
    remaining = bounds.clone()
    cands, gains = [], []
    best = -math.inf
    block, done = _FIRST_BLOCK, 0
    while done < n_available:
        size = min(block, max_block, n_available - done)
        cand = _top_k(remaining, size)  # highest bounds, ties -> lower index
        g = evaluate(cand)
        remaining[cand] = -math.inf
        bounds[cand] = g
        cands.append(cand)
        gains.append(g)
        done += size
        best = max(best, float(g.max()))
        # Unevaluated gains are <= their bounds (submodularity; up to rounding / sampling noise).
        if done == n_available or float(remaining.max()) < best - 2 * tie_atol:
            break
        block *= 2
    cand, g = torch.cat(cands), torch.cat(gains)
    return int(cand[g >= best - tie_atol].min())


@dataclass
class _Options:
    num_samples: int
    max_exact_configs: int
    work_bytes: int
    gen: torch.Generator


def _greedy(p: torch.Tensor, first_gains: torch.Tensor, k: int, opts: _Options) -> tuple[list[int], list[float]]:
    """Greedy picks ``[k]`` and the gain ``I(y_x; w | y_S)`` of each at its step."""
    n, c, t = p.shape
    ent = -torch.xlogy(p, p).sum(dim=1)  # [N, T] H(y | w_t)
    available = torch.ones(n, dtype=torch.bool, device=p.device)
    cache: dict[torch.dtype, torch.Tensor] = {}

    def p_t(dtype):  # [T, N, C] in the compute dtype, made once per dtype
        if dtype not in cache:
            cache[dtype] = p.to(dtype).permute(2, 0, 1).contiguous()
        return cache[dtype]

    selected: list[int] = []
    step_gains: list[float] = []
    configs = _Configs(torch.zeros((1, t), dtype=p.dtype, device=p.device))
    # Step 1 ranks exactly like top_k(bald); a({x}) = BALD is also every candidate's first bound.
    bounds = first_gains.clone()
    for step in range(k):
        if step == 0:
            winner = _pick(first_gains, available, 0.0)
        else:
            configs = _add(configs, p, selected, opts)
            r = configs.log_joint.shape[0]
            dtype = torch.float64 if r * n * c <= _FLOAT64_WORK else torch.float32
            x = p_t(dtype)
            max_block = max(1, opts.work_bytes // (x.element_size() * max(r, 1) * c))

            def evaluate(cand, configs=configs, x=x):
                return _gains(configs, x, ent, cand, opts.work_bytes)

            winner = _lazy_step(bounds, n - step, evaluate, _TIE_ATOL[dtype], max_block)
        selected.append(winner)
        step_gains.append(float(bounds[winner]))  # the winner's gain was evaluated at this step
        available[winner] = False
        bounds[winner] = -math.inf
    return selected, step_gains


def batch_bald(
    probs,
    k: int,
    *,
    num_samples: int = 10_000,
    max_exact_configs: int | None = None,
    seed: SeedLike = None,
    device=None,
    max_work_bytes: int | None = None,
    return_gains: bool = False,
):
    """Select a batch of ``k`` samples greedily by BatchBALD joint mutual information.

    Parameters
    ----------
    probs : array or tensor ``[N, C, T]`` (``C == 1``: sigmoid output, expanded to two classes)
    k : int, ``0 <= k <= N``
    num_samples : int
        Configurations of the batch drawn from the joint once exact enumeration stops (then
        extended by one label per pick and thinned as posteriors become certain). A gain
        estimate's noise shrinks as ``1 / sqrt(num_samples)``; time per step grows at most
        linearly.
    max_exact_configs : int, optional
        Enumerate the batch's label configurations exactly while there are at most this many
        (at most ``C^n`` for ``n`` picks; fewer where classes have probability 0 or posteriors
        are certain); beyond, sample. Default ``num_samples``: exact while no dearer than sampling.
    seed : int, numpy Generator or None
        Only used once sampling starts.
    device : str or torch.device, optional
        Compute device; default the tensor's device, or ``resolve_device(None)`` for numpy input.
    max_work_bytes : int, optional
        Working-memory budget of one block of candidates (default 256 MiB).
    return_gains : bool
        Also return each pick's gain.

    Returns
    -------
    indices : int64 ``[k]`` in acquisition order, same kind as ``probs`` (torch on its device).
        The first is exactly ``top_k(bald(probs), 1)``; at later steps gains within 1e-10 nats
        (2e-6 for steps large enough to compute in float32) count as ties and go to the lower
        index. Algorithm, precision and complexity: module docstring.
    gains : float64 ``[k]``, same kind (only with ``return_gains``)
        The marginal joint mutual information of each pick when it was chosen,
        ``I(y_{S+x}; w) - I(y_S; w)`` (the first is its BALD score), so ``gains[:j].sum()`` is the
        joint MI of the first j picks. Exact (to ~1e-12 nats, or float32 rounding in large steps)
        while the configurations are enumerated, an unbiased estimate once they are sampled.
    """
    given, p, was_numpy = _prepare(probs, device)
    k = check_k(k, p.shape[0])
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_exact_configs is None:
        max_exact_configs = num_samples
    work_bytes = _WORK_BYTES if max_work_bytes is None else int(max_work_bytes)
    # BALD in the input's own dtype and device: step 1 ranks exactly like top_k(bald(probs)).
    first_gains = _bald(given).to(p.device, p.dtype)
    opts = _Options(num_samples, max_exact_configs, work_bytes, torch_generator(seed))
    selected, gains = _greedy(p, first_gains, k, opts)
    out_device = "cpu" if was_numpy else probs.device
    indices = to_kind(torch.tensor(selected, dtype=torch.int64, device=out_device), was_numpy)
    if not return_gains:
        return indices
    return indices, to_kind(torch.tensor(gains, dtype=torch.float64, device=out_device), was_numpy)


def joint_mutual_information(probs, indices, *, max_configs: int = 10**9) -> float:
    """Exact joint mutual information ``I(y_indices; w)`` in nats, enumerating all ``C^n`` labels.

    The batch is split in two halves with ``[C^(n/2), T]`` tables each; their joint probabilities
    come out of one chunked matrix product, so memory is ``O(C^(n/2) · T)``, time ``O(C^n · T)``.
    For large batches use :func:`estimate_joint_mutual_information`.

    Parameters
    ----------
    probs : array or tensor ``[N, C, T]``
    indices : sequence of ints ``[n]`` (repeats allowed: conditionally independent labels)
    max_configs : int
        Refuse (ValueError) when the number of configurations (``C^n``, fewer where some classes
        have probability exactly 0) exceeds it, rather than run for hours.

    Returns
    -------
    float
    """
    _, p, _ = _prepare(probs, probs.device if isinstance(probs, torch.Tensor) else "cpu")
    indices = _check_indices(p, indices)
    c, t = p.shape[1], p.shape[2]
    if not indices:
        return 0.0
    # Classes impossible under every w_t never enter a configuration: bound with the supports.
    n_configs = math.prod(int(k) for k in (p[indices] > 0).any(dim=-1).sum(dim=1))
    if n_configs > max_configs:
        raise ValueError(
            f"{n_configs} label configurations (up to C^n = {c}^{len(indices)}) exceed "
            f"max_configs={max_configs}"
        )
    half = len(indices) // 2
    head = _enumerate(p, indices[half:]).exp()  # [C^(n - n/2), T]
    tail = _enumerate(p, indices[:half]).exp()  # [C^(n/2), T]
    chunk = max(1, _WORK_BYTES // (2 * _FLOAT64_BYTES * head.shape[0]))
    joint_entropy = 0.0
    for start in range(0, tail.shape[0], chunk):
        joint = head @ tail[start : start + chunk].T / t  # p(m_head, m_tail)
        joint_entropy -= float(torch.xlogy(joint, joint).sum())
    return joint_entropy - float(_expected_entropy(p[indices]).sum())


def estimate_joint_mutual_information(
    probs,
    indices,
    *,
    num_samples: int = 100_000,
    seed: SeedLike = None,
    return_stderr: bool = False,
):
    """Monte Carlo estimate of ``I(y_indices; w)`` in nats, for batches too large to enumerate.

    ``I(y_S; w) = H(w) - H(w | y_S) = log T - E_m H(w | y_S = m)``: configurations ``m`` are drawn
    from the joint (mixture component stratified over the T MC samples, then each label given it)
    and each one's posterior entropy ``H(w | m)`` is computed exactly. Unbiased, and each term lies
    in ``[0, log T]``, so the noise is small (and shrinks as the batch pins w down). Memory
    ``O(min(num_samples, 2^16) · T)``, time ``O(num_samples · n · (C + T))``. A seed gives the same
    draws for every batch of the same size (common random numbers when comparing batches).

    Parameters
    ----------
    probs : array or tensor ``[N, C, T]`` (computed on the CPU)
    indices : sequence of ints ``[n]`` (the draws follow this order)
    num_samples : int >= 1
    seed : int, numpy Generator or None
    return_stderr : bool
        Also return the standard error (the i.i.d. formula; conservative under stratification).

    Returns
    -------
    float, or ``(estimate, stderr)`` with ``return_stderr``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    _, p, _ = _prepare(probs, "cpu")
    indices = _check_indices(p, indices)
    if not indices:
        return (0.0, 0.0) if return_stderr else 0.0
    t = p.shape[-1]
    gen = torch_generator(seed)
    p_sel = p[indices]  # [n, C, T]
    log_p_sel = p_sel.log()
    components = _components(num_samples, t, gen)
    total = total_sq = 0.0
    for start in range(0, num_samples, _SAMPLE_CHUNK):
        comp = components[start : start + _SAMPLE_CHUNK]
        log_joint = torch.zeros((comp.shape[0], t), dtype=torch.float64)
        for p_i, log_p_i in zip(p_sel, log_p_sel):
            log_joint += log_p_i[_draw_labels(p_i, comp, gen)]
        h = _entropy_rows(_softmax_rows(log_joint)[0])  # H(w | m)
        total += float(h.sum())
        total_sq += float((h * h).sum())
    mean = total / num_samples
    estimate = math.log(t) - mean
    if not return_stderr:
        return estimate
    var = max(total_sq / num_samples - mean**2, 0.0)
    return estimate, math.sqrt(var / num_samples)
