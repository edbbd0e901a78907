"""The optimiser settings: AdamW betas and the cosine schedule with warmup and an lr floor."""

import pytest
import torch

from mlembed.optim import OptimizerConfig


def test_warmup_then_cosine_down_to_the_floor():
    config = OptimizerConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    param = torch.nn.Parameter(torch.zeros(1))
    built = config.build([param], total_steps=110)
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["weight_decay"] == 0.01
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-4)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


@pytest.mark.parametrize(("kwargs", "flag"), [({"lr": 0}, "lr"), ({"min_lr": 1.0}, "min_lr"),
                                              ({"warmup_steps": -1}, "warmup_steps")])
def test_bad_optimizer_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=f"--model.optimizer.{flag}"):
        OptimizerConfig(**kwargs)
