"""Sharpness and flatness measures: brute force on a 2-parameter model, the searches' behaviour, and
sharpness-diff against a transcription of the published algorithm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from measure_models import TwoParamLogistic, make_bert_batches, make_tiny_bert, two_param_batches, two_param_loss

from xlgm.measures import compute_measure


def _data():
    batches = two_param_batches()
    x = torch.cat([b["features"] for b in batches])
    y = torch.cat([b["labels"] for b in batches])
    return batches, x, y


def _grid(rho: float, points: int = 801) -> torch.Tensor:
    axis = torch.linspace(-rho, rho, points, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)


# ---------------------------------------------------------------------------------------------------------
# sharpness-worst vs a brute-force grid
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "norm,adaptive,rho",
    [("l2", False, 0.5), ("linf", False, 0.4), ("l2", True, 0.6), ("linf", True, 0.3)],
)
def test_sharpness_worst_matches_grid_maximum(norm, adaptive, rho):
    model = TwoParamLogistic()
    batches, x, y = _data()
    w0 = model.w.detach().clone()
    v = _grid(rho)
    if norm == "l2":
        v = v[v.norm(dim=1) <= rho]
    c = w0.abs() if adaptive else torch.ones_like(w0)
    grid_losses = two_param_loss(w0 + v * c, x, y)
    loss0 = float(two_param_loss(w0[None], x, y)[0])
    grid_max = float(grid_losses.max()) - loss0
    resolution = 2 * rho / 800 * float(c.max()) * 2.0  # grid spacing x a bound on the gradient norm
    result = compute_measure(
        "sharpness-worst", model, batches, config={"norm": norm, "adaptive": adaptive, "rho": rho, "steps": 60}
    )
    assert result.details["loss_before"] == pytest.approx(loss0, abs=1e-12)
    assert grid_max - resolution <= result.value <= grid_max + resolution
    assert "delta_error" in result.details


def test_sharpness_worst_step_halving_is_monotone():
    model = TwoParamLogistic()
    batches, _, _ = _data()
    result = compute_measure("sharpness-worst", model, batches, config={"norm": "l2", "adaptive": False, "rho": 0.5})
    best = result.details["loss_before"]
    for step in result.details["trace"]:
        if step["accepted"]:
            assert step["loss"] > best
            best = step["loss"]
    assert result.details["loss_after"] == pytest.approx(best)


# ---------------------------------------------------------------------------------------------------------
# The searches of sharpness-alpha and pacbayes-flatness
# ---------------------------------------------------------------------------------------------------------


def _check_search(result, target, tolerance):
    trace = result.details["trace"]
    assert result.details["converged"]
    assert abs(result.details["deviation"] - target) <= tolerance
    assert result.details["iterations"] == len(trace)
    for prev, step in zip(trace, trace[1:]):  # the bracket only shrinks, around the midpoint
        assert step["lower"] >= prev["lower"] and step["upper"] <= prev["upper"]
    for step in trace:
        assert step["scale"] == pytest.approx((step["lower"] + step["upper"]) / 2)
    by_scale = sorted(trace, key=lambda s: s["scale"])
    deviations = [s["deviation"] for s in by_scale]
    assert deviations == sorted(deviations), "the deviation should grow with the scale"


@pytest.mark.parametrize("name", ["sharpness-alpha", "sharpness-alpha-mag"])
def test_sharpness_alpha_search(name):
    model = TwoParamLogistic()
    batches, x, y = _data()
    result = compute_measure(name, model, batches, config={"search_depth": 25, "tolerance": 0.002})
    _check_search(result, 0.1, 0.002)
    alpha = result.details["alpha"]
    assert result.value == pytest.approx(1 / alpha**2)
    # The ascent reaches the brute-force max over the box (the loss is convex: a corner).
    w0 = model.w.detach()
    half = alpha * (w0.abs() + 0.0) + 1e-3 if name.endswith("mag") else torch.full_like(w0, alpha)
    corners = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float64) * half
    box_max = float(two_param_loss(w0 + corners, x, y).max()) - result.details["loss_before"]
    assert result.details["deviation"] == pytest.approx(box_max, abs=1e-9)


@pytest.mark.parametrize("name", ["pacbayes-flatness", "pacbayes-flatness-mag"])
def test_pacbayes_search(name):
    model = TwoParamLogistic()
    batches, _, _ = _data()
    result = compute_measure(name, model, batches, config={"search_depth": 25, "tolerance": 0.002, "num_draws": 8})
    _check_search(result, 0.1, 0.002)
    assert result.value == pytest.approx(1 / result.details["sigma"] ** 2)
    assert result.num_samples == 8 and result.spread is not None and result.spread > 0


def test_pacbayes_deviation_on_error():
    model = TwoParamLogistic()
    batches, _, _ = _data()
    result = compute_measure(
        "pacbayes-flatness", model, batches, config={"deviation_of": "error", "num_draws": 6, "tolerance": 0.02}
    )
    assert result.details["deviation_of"] == "error"
    assert result.details["iterations"] >= 1


def test_sharpness_avg_matches_hand_draws():
    model = TwoParamLogistic()
    batches, x, y = _data()
    rho, draws, seed = 0.3, 5, 7
    gen = torch.Generator().manual_seed(seed)
    w0 = model.w.detach()
    loss0 = float(two_param_loss(w0[None], x, y)[0])
    deltas = [
        float(two_param_loss((w0 + rho * w0.abs() * torch.randn(2, generator=gen, dtype=torch.float64))[None], x, y)[0])
        - loss0
        for _ in range(draws)
    ]
    result = compute_measure("sharpness-avg", model, batches, config={"rho": rho, "num_draws": draws}, seed=seed)
    assert result.value == pytest.approx(sum(deltas) / draws, abs=1e-12)
    assert result.spread == pytest.approx(torch.tensor(deltas, dtype=torch.float64).std().item(), abs=1e-12)
    assert result.num_samples == draws


# ---------------------------------------------------------------------------------------------------------
# sharpness-diff
# ---------------------------------------------------------------------------------------------------------


def published_sharpness(model, batch, seed, draws, sigma=0.1, eta=0.05, alpha=0.05):
    """A straight transcription of `Sharpness.calculate` in github.com/sakshambassi/sharpness-measure
    (strikegen/sharpness/sharpness.py), repeated `draws` times from w0; noise from a generator seeded with
    `seed` (tensor by tensor, in parameter order), dropout from the global RNG seeded with `seed`."""
    with torch.random.fork_rng():
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        criterion = torch.nn.CrossEntropyLoss()
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
        labels = batch["labels"]
        params = [p for _, p in model.named_parameters()]
        model.eval()
        w_0 = [p.data.clone() for p in params]
        with torch.no_grad():
            loss_val_0 = criterion(model(**inputs).logits, labels).item()
        values = []
        for _ in range(draws):
            model.eval()
            with torch.no_grad():
                for p, w in zip(params, w_0):
                    p.copy_(w)
                for p in params:  # 2. w = w0 + e
                    p.add_(torch.randn(p.shape, generator=gen) * sigma)
            w_prime = [p.data.clone() for p in params]
            loss = criterion(model(**inputs).logits, labels)  # 3. dw = grad L(w)
            d_w = torch.autograd.grad(loss, params)
            with torch.no_grad():  # 4. w' = w + n dw
                for i, p in enumerate(params):
                    p.data = w_prime[i] + eta * d_w[i]
            w_new = [p.data for p in params]
            projection_radius = alpha * sum(torch.norm(p) for p in params)  # from the model's current weights

            def project_weights(w_new_t, w_0_t, radius):
                if torch.norm(w_new_t - w_0_t) < radius:
                    return w_new_t
                return w_0_t + ((w_new_t - w_0_t) / torch.norm(w_new_t - w_0_t)) * radius

            w_proj = [project_weights(w_new[i], w_0[i], projection_radius) for i in range(len(w_new))]
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.data = w_proj[i]
            model.train()  # 6. L(w') in train mode
            with torch.no_grad():
                loss_prime_val = criterion(model(**inputs).logits, labels).item()
            values.append(loss_prime_val - loss_val_0)
        with torch.no_grad():
            for p, w in zip(params, w_0):
                p.data = w
    return values


def test_sharpness_diff_paper_mode_matches_published_algorithm():
    batch = make_bert_batches(sizes=(8,), lengths=(9,))
    ours = compute_measure("sharpness-diff", make_tiny_bert(), batch, config={"mode": "paper"}, seed=11)
    theirs = published_sharpness(make_tiny_bert(), batch[0], seed=11, draws=3)
    assert ours.details["deltas"] == pytest.approx(theirs, abs=1e-6)
    assert ours.value == pytest.approx(sum(theirs) / 3, abs=1e-6)
    assert ours.num_samples == 3 and ours.spread is not None
    # Dropout is part of the published algorithm: without it the values differ.
    no_dropout = published_sharpness(make_tiny_bert(dropout=0.0), batch[0], seed=11, draws=3)
    assert no_dropout != pytest.approx(theirs, abs=1e-6)


def default_mode_by_hand(model, batches, seed, draws=3, sigma=0.01, eta=0.05, alpha=0.05):
    """The corrected algorithm, written out (full-data gradient): relative noise, global projection, eval."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    w0 = [p.detach().clone() for p in params]
    n = sum(b["labels"].shape[0] for b in batches)
    model.eval()

    def loss_fn():
        return (
            sum(
                F.cross_entropy(
                    model(**{k: v for k, v in b.items() if k not in ("labels", "idx")}).logits,
                    b["labels"],
                    reduction="sum",
                )
                for b in batches
            )
            / n
        )

    with torch.no_grad():
        loss0 = loss_fn().item()
    radius = alpha * torch.sqrt(sum((w.double() ** 2).sum() for w in w0))
    values = []
    for _ in range(draws):
        noise = [sigma * w.abs() * torch.randn(w.shape, generator=gen) for w in w0]
        with torch.no_grad():
            for p, w, e in zip(params, w0, noise):
                p.copy_(w + e)
        grads = torch.autograd.grad(loss_fn(), params)
        delta = [e + eta * g for e, g in zip(noise, grads)]
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in delta))
        if norm > radius:
            delta = [d * float(radius / norm) for d in delta]
        with torch.no_grad():
            for p, w, d in zip(params, w0, delta):
                p.copy_(w + d)
            values.append(loss_fn().item() - loss0)
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    return values


def test_sharpness_diff_default_mode_matches_hand_transcription():
    batches = make_bert_batches()
    ours = compute_measure("sharpness-diff", make_tiny_bert(), batches, config={"ascent_fraction": 1.0}, seed=5)
    hand = default_mode_by_hand(make_tiny_bert(), batches, seed=5)
    assert ours.details["deltas"] == pytest.approx(hand, abs=1e-6)


def test_sharpness_diff_default_mode_cost_and_projection():
    model, batches = make_tiny_bert(), make_bert_batches()
    result = compute_measure("sharpness-diff", model, batches)  # k = 3
    assert result.details["cost"]["forward_units"] <= 10
    assert result.num_samples == 3 and len(result.details["deltas"]) == 3
    # A huge ascent step is clipped to the global ball of radius α ||w0||.
    big = compute_measure("sharpness-diff", model, batches, config={"step_size": 1e4})
    radius = 0.05 * float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters())))
    for draw in big.details["draws"]:
        assert draw["projected"] and draw["distance"] == pytest.approx(radius, rel=1e-9)


def test_sharpness_alpha_restarts_report_spread():
    model = TwoParamLogistic()
    batches, _, _ = _data()
    one = compute_measure("sharpness-alpha", model, batches, config={"search_depth": 4})
    assert one.num_samples == 1 and one.spread is None
    two = compute_measure("sharpness-alpha", model, batches, config={"search_depth": 4, "num_restarts": 2})
    assert two.num_samples == 2 and two.spread is not None
