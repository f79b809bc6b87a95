"""The training loop resumes exactly: a killed run finishes with the same weights and log."""

import json

import pytest
import torch
from torch import nn

from idgen.errors import IdgenError
from idgen.training import TrainConfig, Trainer, learning_rate, step_generator


class Killed(Exception):
    pass


def make(folder, steps=12):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    config = TrainConfig(steps=steps, lr=1e-2, checkpoint_every=4, log_every=1, warmup=2)
    return model, Trainer("toy", {"model": model}, model.parameters(), config, folder)


def step_fn(model, kill_at=None):
    def fn(step, g):
        if step == kill_at:
            raise Killed
        x = torch.randn(16, 4, generator=g)
        y = x.sum(dim=1, keepdim=True)
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    return fn


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    model_a, trainer_a = make(tmp_path / "a")
    trainer_a.fit(step_fn(model_a), progress=False)

    model_b, trainer_b = make(tmp_path / "b")
    with pytest.raises(Killed):
        trainer_b.fit(step_fn(model_b, kill_at=10), progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 8
    model_c, trainer_c = make(tmp_path / "b")  # a new process would start from scratch like this
    trainer_c.fit(step_fn(model_c), progress=False)

    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items(), strict=True):
        assert torch.equal(a, c), name
    log_a = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_c = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_c] == list(range(12))  # nothing lost, nothing twice
    assert log_a == log_c


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    model, trainer = make(tmp_path, steps=12)
    with pytest.raises(Killed):
        trainer.fit(step_fn(model, kill_at=5), progress=False)
    saved = (tmp_path / "checkpoint.pt").read_bytes()

    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    config = TrainConfig(steps=24, lr=2e-2, checkpoint_every=4, log_every=1, warmup=2)
    longer = Trainer("toy", {"model": other}, other.parameters(), config, tmp_path)
    with pytest.raises(IdgenError) as error:
        longer.fit(step_fn(other), progress=False)
    assert str(error.value) == (
        f"{tmp_path / 'checkpoint.pt'} was written with another lr, steps; remove {tmp_path} to train "
        "from scratch with this configuration"
    )
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved  # nothing resumed, nothing overwritten

    # How often it checkpoints and logs is bookkeeping: a resume may change it.
    torch.manual_seed(0)
    same = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    config = TrainConfig(steps=12, lr=1e-2, checkpoint_every=3, log_every=2, warmup=2)
    Trainer("toy", {"model": same}, same.parameters(), config, tmp_path).fit(step_fn(same), progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 12


def test_loss_goes_down(tmp_path):
    model, trainer = make(tmp_path, steps=60)
    trainer.fit(step_fn(model), progress=False)
    log = trainer.log()
    assert sum(r["loss"] for r in log[-10:]) < 0.5 * sum(r["loss"] for r in log[:10])


def test_schedule_and_generators_are_pure():
    config = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    assert learning_rate(config, 100) == pytest.approx(0.1)
    assert torch.equal(
        torch.randn(3, generator=step_generator(1, 5)), torch.randn(3, generator=step_generator(1, 5))
    )
    assert not torch.equal(
        torch.randn(3, generator=step_generator(1, 5)), torch.randn(3, generator=step_generator(1, 6))
    )
