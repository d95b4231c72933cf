"""status.json follows a run's progress between checkpoints (the suite's status table and progress bar read it),
and a failed refresh never stops the run."""

from __future__ import annotations

import pytest
from tqdm import tqdm

from twm import run_record as rr
from twm import train
from twm.config import smoke
from twm.metric_log import MetricLog


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


def test_every_start_counts_as_an_attempt_even_one_stopped_before_its_own_checkpoint(trainer):
    config, run_dir = trainer.config, trainer.run_dir
    trainer.metric_log = MetricLog(run_dir / rr.METRICS)
    steps(trainer, 4)
    trainer.checkpoint()  # attempt 1 leaves a checkpoint (it records attempt 1)

    def start() -> train.Trainer:
        again = train.Trainer(config, "Catch", 0, run_dir, None, progress=False)
        assert again.restore()
        again.write_status(rr.STATE_RUNNING)  # what run() does first
        return again

    second = start()
    assert rr.read_json(run_dir / rr.STATUS)["attempt"] == 2
    second.request_stop()  # stopped before it made any progress: no checkpoint of its own
    with pytest.raises(train.StopRequested):
        second.safe_point()
    assert len(list(run_dir.glob(rr.CHECKPOINTS))) == 1
    second.write_status(rr.STATE_INTERRUPTED)

    third = start()
    assert third.state.attempt == 3 and rr.read_json(run_dir / rr.STATUS)["attempt"] == 3
    assert third.buffer.size == 4  # it resumed from attempt 1's checkpoint all the same


def test_a_start_killed_before_its_first_checkpoint_still_counts(tmp_path):
    config = smoke()
    first = train.Trainer(config, "Catch", 0, tmp_path, None, progress=False)
    assert not first.restore()
    first.write_status(rr.STATE_RUNNING)  # then killed in prefill: no checkpoint
    again = train.Trainer(config, "Catch", 0, tmp_path, None, progress=False)
    assert not again.restore()  # nothing to resume from: it starts from scratch
    assert again.state.attempt == 2
    (tmp_path / rr.STATUS).write_text("[1, 2")  # a torn or foreign status.json is no count
    torn = train.Trainer(config, "Catch", 0, tmp_path, None, progress=False)
    assert not torn.restore() and torn.state.attempt == 1
