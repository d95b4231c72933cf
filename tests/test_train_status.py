"""status.json follows a run's progress between checkpoints (the suite's status table and progress bar read it),
and a failed refresh never stops the run."""

from __future__ import annotations

import pytest
from tqdm import tqdm

from twm import run_record as rr
from twm import train
from twm.config import smoke


@pytest.fixture
def trainer(tmp_path):
    config = smoke().with_overrides({"runtime.checkpoint_interval_s": "inf"})  # no time-based checkpoints
    trainer = train.Trainer(config, "Catch", 0, tmp_path, None, progress=False)
    trainer._bar = tqdm(disable=True)
    obs, _ = trainer.env.reset(seed=trainer.state.reset_seed)
    trainer.buffer.set_current_obs(obs)
    trainer.write_status(rr.STATE_RUNNING)
    return trainer


def steps(trainer, n: int) -> None:
    for _ in range(n):
        trainer.env_step(0)
        trainer.safe_point()


def test_status_json_is_refreshed_every_few_seconds_between_checkpoints(trainer, monkeypatch):
    steps(trainer, 3)
    assert rr.read_json(trainer.run_dir / rr.STATUS)["env_step"] == 0  # refreshed at most every STATUS_EVERY_S
    monkeypatch.setattr(train, "STATUS_EVERY_S", 0.0)
    steps(trainer, 2)
    status = rr.read_json(trainer.run_dir / rr.STATUS)
    assert status["env_step"] == 5 and status["state"] == rr.STATE_RUNNING
    assert not list(trainer.run_dir.glob(rr.CHECKPOINTS))  # without a checkpoint


def test_a_failed_status_refresh_is_a_warning_not_a_stop(trainer, monkeypatch, capsys):
    monkeypatch.setattr(train, "STATUS_EVERY_S", 0.0)
    (trainer.run_dir / rr.STATUS).unlink()
    (trainer.run_dir / rr.STATUS).mkdir()  # the atomic rename onto it fails
    steps(trainer, 2)
    assert trainer.buffer.size == 2
    assert f"warning: could not refresh {rr.STATUS}" in capsys.readouterr().out
    assert not [p for p in trainer.run_dir.iterdir() if rr.is_temp(p)]
