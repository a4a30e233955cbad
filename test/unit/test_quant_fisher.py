"""Action-Mixed Fisher equals hand-computed squared gradients on tiny models."""

from __future__ import annotations

import pytest
import torch

from actquant_core.quant.fisher import FisherAccumulator, FisherConfig, mixed_loss, param_chunks

RTOL = 1e-5  # float32 accumulation of a few squared gradients


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = torch.nn.Linear(4, 6)
        self.fc2 = torch.nn.Linear(6, 3)  # action head
        self.lm = torch.nn.Linear(6, 5)  # "language" head
        self.unused = torch.nn.Linear(2, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.fc2(h), self.lm(h)


def _loss_fn(model, batch):
    x, y, tok = batch
    act, logits = model(x)
    return {"action": (act - y).abs().mean(), "language": torch.nn.functional.cross_entropy(logits, tok)}


def _batches(n=3, b=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 4, generator=g), torch.randn(b, 3, generator=g), torch.randint(0, 5, (b,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_matches_manual_squared_gradients(alpha):
    model = Tiny()
    names = ["fc1.weight", "fc2.weight", "lm.weight"]
    acc = FisherAccumulator(model, names, _loss_fn, FisherConfig(alpha=alpha, floor_rel=0.0))
    batches = _batches()
    for b in batches:
        acc.add_batch(b)
    res = acc.solve()
    # reference: plain backward per batch, square, mean
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    for b in batches:
        model.zero_grad()
        parts = _loss_fn(model, b)
        ((1 - alpha) * parts["language"] + alpha * parts["action"]).backward()
        for n, p in model.named_parameters():
            if n in names:
                ref[n] += p.grad.square() / len(batches)
    for n in names:
        if alpha == 1.0 and n == "lm.weight" or alpha == 0.0 and n == "fc2.weight":
            assert torch.all(res.fisher[n] == 1.0)  # off the loss path: uniform importance
            continue
        torch.testing.assert_close(res.fisher[n], ref[n], rtol=RTOL, atol=0.0)
    assert res.n_batches == 3


def test_linear_closed_form_and_floor():
    # L = mean((W x - y)^2)  =>  dL/dW = 2/(N m) (W x - y) x^T   (N samples, m outputs)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    x[:, 2] = 0.0  # column with zero gradient -> floored

    def loss_fn(m, batch):
        xb, yb = batch
        return {"action": (m(xb) - yb).square().mean()}

    acc = FisherAccumulator(model, ["weight"], loss_fn, FisherConfig(alpha=1.0, floor_rel=1e-3))
    acc.add_batch((x, y))
    F = acc.solve().fisher["weight"]
    with torch.no_grad():
        G = 2.0 / (5 * 2) * (x @ model.weight.T - y).T @ x
    ref = G.square()
    nz_mean = ref[ref > 0].mean()
    ref = ref.clamp_min(1e-3 * nz_mean)
    torch.testing.assert_close(F, ref, rtol=RTOL, atol=0.0)
    torch.testing.assert_close(F[:, 2], torch.full((2,), 1e-3 * float(nz_mean)), rtol=1e-6, atol=0.0)


def test_requires_grad_restored_and_grads_untouched():
    model = Tiny()
    model.fc1.weight.requires_grad_(False)
    acc = FisherAccumulator(model, ["fc1.weight"], _loss_fn, FisherConfig())
    acc.add_batch(_batches(1)[0])
    assert model.fc1.weight.requires_grad is False
    assert model.fc2.weight.requires_grad is True
    assert all(p.grad is None for p in model.parameters())
    assert acc.solve().fisher["fc1.weight"].abs().sum() > 0


def test_errors():
    model = Tiny()
    with pytest.raises(KeyError, match="not found"):
        FisherAccumulator(model, ["nope.weight"], _loss_fn)
    acc = FisherAccumulator(model, ["fc1.weight"], _loss_fn)
    with pytest.raises(ValueError, match="empty calibration"):
        acc.solve()
    with pytest.raises(ValueError, match="needs the 'language' loss"):
        mixed_loss({"action": torch.tensor(1.0)}, 0.5)
    bad = FisherAccumulator(model, ["fc1.weight"], lambda m, b: {"action": torch.tensor(float("nan")),
                                                                   "language": torch.tensor(0.0)})
    with pytest.raises(ValueError, match="not finite"):
        bad.add_batch(None)
    with pytest.raises(ValueError, match="alpha"):
        FisherConfig(alpha=1.5)


def test_param_chunks():
    model = Tiny()
    names = ["fc1.weight", "fc2.weight", "lm.weight"]
    chunks = param_chunks(model, names, max_bytes=4 * 24)
    assert [n for c in chunks for n in c] == names
    assert chunks == [["fc1.weight"], ["fc2.weight"], ["lm.weight"]]
