"""The training harness: determinism, resume equivalence, early stopping, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from stcore.train import Trainer, fit_module, seeded

N, D = 40, 5
X = torch.linspace(-1, 1, N * D).reshape(N, D)
Y = X @ torch.arange(1.0, D + 1) + 0.5


def make_net(seed: int = 0) -> torch.nn.Module:
    with seeded(seed):
        return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Dropout(0.2),
                                   torch.nn.ReLU(), torch.nn.Linear(8, 1))


def loss_fn(net, idx, gen):
    noise = 0.01 * torch.randn(len(idx), D, generator=gen)  # an "augmentation" draw
    return torch.nn.functional.mse_loss(net(X[idx] + noise).squeeze(1), Y[idx])


def val_fn(net):
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(net(X[:10]).squeeze(1), Y[:10]))


pytestmark = pytest.mark.usefixtures("one_thread")


PARAMS = dict(max_steps=30, batch_size=8, lr=1e-2, val_every=5, progress=False)


def weights(net):
    return torch.cat([p.detach().flatten() for p in net.state_dict().values()])


def test_same_seed_same_weights_and_other_seed_differs():
    a = fit_module(make_net(), loss_fn, N, val_fn=val_fn, seed=3, **PARAMS)
    net_a = make_net()
    Trainer(seed=3, **PARAMS).fit(net_a, loss_fn, N, val_fn=val_fn)
    net_b = make_net()
    Trainer(seed=3, **PARAMS).fit(net_b, loss_fn, N, val_fn=val_fn)
    net_c = make_net()
    Trainer(seed=4, **PARAMS).fit(net_c, loss_fn, N, val_fn=val_fn)
    assert torch.equal(weights(net_a), weights(net_b))
    assert not torch.equal(weights(net_a), weights(net_c))
    assert [h["step"] for h in a.history] == [5, 10, 15, 20, 25, 30]
    assert set(a.history[0]) == {"step", "train_loss", "val_loss"}
    assert a.best_step in {h["step"] for h in a.history} and a.train_seconds > 0
    assert not net_a.training  # eval mode at the end


def test_global_state_restored():
    before_det = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    fit_module(make_net(), loss_fn, N, **PARAMS)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.are_deterministic_algorithms_enabled() == before_det


def test_best_state_is_loaded():
    trainer = Trainer(seed=0, **PARAMS)
    net = trainer.fit(make_net(), loss_fn, N, val_fn=val_fn)
    assert math.isclose(val_fn(net), trainer.best_val, rel_tol=1e-6)
    assert trainer.best_val == min(h["val_loss"] for h in trainer.history)


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    reference = Trainer(seed=1, **PARAMS)
    ref_net = reference.fit(make_net(), loss_fn, N, val_fn=val_fn)

    calls = {"n": 0}

    def crashing(net, idx, gen):
        calls["n"] += 1
        if calls["n"] == 18:  # after the checkpoint of step 15, mid-way to the next
            raise Interrupt
        return loss_fn(net, idx, gen)

    params = dict(PARAMS, checkpoint_dir=tmp_path, checkpoint_every=5)
    with pytest.raises(Interrupt):
        Trainer(seed=1, **params).fit(make_net(), crashing, N, val_fn=val_fn)
    assert (tmp_path / "last.pt").exists()
    assert not list(tmp_path.glob("*.tmp"))
    torch.load(tmp_path / "last.pt", weights_only=True)  # RNG states are plain tensors

    resumed = Trainer(seed=1, **params)
    net = resumed.fit(make_net(seed=99), loss_fn, N, val_fn=val_fn)  # init is overwritten
    assert resumed.resumed_from == 15
    assert torch.equal(weights(net), weights(ref_net))
    assert resumed.history == reference.history
    assert resumed.best_step == reference.best_step


def test_finished_run_is_not_trained_again_and_can_be_extended(tmp_path):
    params = dict(PARAMS, checkpoint_dir=tmp_path)
    first = Trainer(seed=0, **params)
    net1 = first.fit(make_net(), loss_fn, N, val_fn=val_fn)

    def never(net, idx, gen):
        raise AssertionError("a finished run must not train")

    again = Trainer(seed=0, **params)
    net2 = again.fit(make_net(), never, N, val_fn=val_fn)
    assert torch.equal(weights(net1), weights(net2)) and again.resumed_from == 30

    longer = Trainer(seed=0, **dict(params, max_steps=40))
    net_longer = longer.fit(make_net(), loss_fn, N, val_fn=val_fn)
    assert longer.steps_done == 40 and longer.history[-1]["step"] == 40
    # extending equals training 40 steps at once (no schedule depends on max_steps)
    direct = Trainer(seed=0, **dict(PARAMS, max_steps=40))
    net_direct = direct.fit(make_net(), loss_fn, N, val_fn=val_fn)
    assert direct.history == longer.history
    assert torch.equal(weights(net_direct), weights(net_longer))


def test_resume_refuses_other_settings(tmp_path):
    Trainer(seed=0, **dict(PARAMS, checkpoint_dir=tmp_path)).fit(make_net(), loss_fn, N)
    with pytest.raises(ValueError, match="lr"):
        Trainer(seed=0, **dict(PARAMS, lr=0.5, checkpoint_dir=tmp_path)).fit(
            make_net(), loss_fn, N)


def test_early_stopping_stops():
    values = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])

    def worsening(net):
        return next(values)

    trainer = Trainer(seed=0, **dict(PARAMS, max_steps=100, patience=3))
    trainer.fit(make_net(), loss_fn, N, val_fn=worsening)
    assert trainer.stopped_early
    assert trainer.steps_done == 25  # validations at 5, 10 (best), 15, 20, 25 → 3 bad
    assert trainer.best_step == 10 and trainer.best_val == 0.5


def test_without_validation_the_last_state_is_kept():
    trainer = Trainer(seed=0, **PARAMS)
    trainer.fit(make_net(), loss_fn, N)
    assert trainer.best_step == 30 and all(math.isnan(h["val_loss"]) for h in trainer.history)


def test_batches_are_full_epochs_of_permutations():
    seen = []

    def record(net, idx, gen):
        seen.append(idx.tolist())
        return loss_fn(net, idx, gen)

    Trainer(seed=0, **dict(PARAMS, max_steps=12, batch_size=16)).fit(make_net(), record, 33)
    assert all(len(b) == 16 for b in seen)  # a tail shorter than the batch is skipped
    assert sorted(seen[0] + seen[1]) == sorted(set(seen[0] + seen[1]))  # no repeats in an epoch
    small = []
    Trainer(seed=0, **dict(PARAMS, max_steps=3, batch_size=16)).fit(
        make_net(), lambda n, i, g: (small.append(len(i)), loss_fn(n, i, g))[1], 5)
    assert small == [5, 5, 5]


@pytest.mark.parametrize("bad", [dict(max_steps=0), dict(batch_size=1.5), dict(patience=0),
                                 dict(optimizer="lbfgs"), dict(amp="fp8"), dict(lr=0)])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        Trainer(**bad)


def test_sgd_and_adamw_run():
    for opt in ("sgd", "adamw"):
        t = fit_module(make_net(), loss_fn, N, optimizer=opt, weight_decay=1e-3, seed=0,
                       **dict(PARAMS, max_steps=5))
        assert t.steps_done == 5
