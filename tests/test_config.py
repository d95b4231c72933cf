"""Config: presets, overrides with type checks, ablation switches, stable hash."""

import math
import subprocess
import sys

import pytest

from twm.config import EXECUTION_KEYS, RANGES, Config, ConfigError, paper, parse_overrides, preset, smoke
from twm.games import GAMES, UnknownGameError, get_game


def test_paper_preset_holds_table4_values():
    c = paper()
    assert (c.wm.batch_size, c.wm.sequence_length, c.ac.batch_size, c.ac.horizon) == (100, 16, 400, 15)
    assert (c.obs.lr, c.dyn.lr, c.ac.actor_lr, c.ac.critic_lr) == (1e-4, 1e-4, 1e-4, 1e-5)
    assert (c.ac.gamma, c.ac.gae_lambda, c.buffer.temperature, c.dyn.discount_threshold) == (0.99, 0.95, 20.0, 0.1)
    assert (c.dyn.num_layers, c.dyn.embed_dim, c.dyn.num_heads, c.dyn.memory_length) == (10, 256, 4, 16)
    assert c.obs.consistency_direction == "code" and c.schedule.ac_pretrain_budget == "code"


def test_overrides_parse_types_and_ablation_switches():
    c = paper().with_overrides(parse_overrides([
        "buffer.temperature=inf", "dyn.input_rewards=false", "ac.entropy_threshold=1.0", "ac.entropy_coef=0.001",
        "wm.sequence_length=4", "dyn.memory_length=4", "ac.input_h=true", "buffer.capacity=1e4",
        "dyn.imagination_memory=vanilla", "obs.encoder_hidden=256,256"]))
    assert math.isinf(c.buffer.temperature) and c.dyn.input_rewards is False and c.ac.input_h is True
    assert c.buffer.capacity == 10_000 and c.dyn.imagination_memory == "vanilla"
    assert c.obs.encoder_hidden == (256, 256)


@pytest.mark.parametrize("override,message", [
    ({"buffer.tau": "1"}, "unknown config key 'buffer.tau'"),
    ({"nosection.x": "1"}, "unknown config key"),
    ({"buffer.capacity": "many"}, "buffer.capacity expects int"),
    ({"buffer.capacity": "1.5"}, "expects int"),
    ({"dyn.input_rewards": "maybe"}, "expects bool"),
    ({"obs.consistency_direction": "sideways"}, "must be one of code, paper"),
    ({"wm.sequence_length": "4"}, "memory_length"),
])
def test_bad_overrides_are_rejected_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        paper().with_overrides(override)
    assert "\n" not in str(err.value)


def test_parse_overrides_rejects_items_without_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["buffer.temperature"])


def test_hash_is_stable_ignores_execution_settings_and_round_trips_json():
    c = paper()
    assert c.hash() == paper().hash() and c.hash() != smoke().hash()
    execution = {"runtime.device": "cuda:1", "runtime.checkpoint_interval_s": 5, "runtime.threads": 3,
                 "runtime.keep_checkpoints": 4, "runtime.compile": "true", "runtime.static_imagination": "true",
                 "runtime.cuda_graphs": "true", "runtime.metrics_every": 20, "runtime.tracking_interval_s": 1,
                 "runtime.tracking_close_s": 3}
    assert set(execution) == EXECUTION_KEYS
    assert c.with_overrides(execution).hash() == c.hash()
    assert c.with_overrides({"buffer.temperature": "inf"}).hash() != c.hash()
    assert Config.from_json(c.with_overrides({"buffer.temperature": "inf"}).to_json()) == c.with_overrides(
        {"buffer.temperature": "inf"})
    # stable across processes (no dependence on hash randomisation)
    out = subprocess.run([sys.executable, "-c", "from twm.config import paper; print(paper().hash())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == c.hash()


def test_identity_covers_precision_and_the_fixed_number_of_evaluation_envs():
    c = paper()
    assert c.runtime.eval_envs == 10 and smoke().runtime.eval_envs == 2  # fixed numbers, not the CPU count
    for key, value in (("runtime.precision", "bf16"), ("runtime.precision", "tf32"), ("runtime.eval_envs", "5")):
        other = c.with_overrides({key: value})
        assert other.hash() != c.hash() and [d[0] for d in c.differences(other)] == [key]


def test_every_numeric_setting_has_a_range():
    numeric = {key for key, value in paper().to_dict().items() if not isinstance(value, (bool, str))}
    assert numeric == set(RANGES), numeric ^ set(RANGES)
    for key, value in paper().to_dict().items():  # the presets are inside their ranges
        if key in RANGES:
            RANGES[key].check(key, value)
            RANGES[key].check(key, smoke().to_dict()[key])


@pytest.mark.parametrize("key,value,message", [
    ("schedule.final_eval_episodes", "-1", "schedule.final_eval_episodes must be >= 1, got -1"),
    ("schedule.eval_episodes", "0", "schedule.eval_episodes must be >= 1"),
    ("schedule.eval_every", "0", "schedule.eval_every must be >= 1"),
    ("runtime.keep_checkpoints", "0", "runtime.keep_checkpoints must be >= 1"),
    ("runtime.eval_envs", "0", "runtime.eval_envs must be >= 1"),
    ("dyn.num_heads", "0", "dyn.num_heads must be >= 1"),
    ("ac.horizon", "0", "ac.horizon must be >= 1"),
    ("runtime.device", "tpu", "runtime.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("obs.lr", "nan", "obs.lr must be > 0, got nan"),
    ("obs.lr", "inf", "obs.lr must be finite and > 0"),
    ("buffer.temperature", "nan", "buffer.temperature must be > 0"),
    ("ac.gamma", "1.01", r"ac.gamma must be in \[0, 1\]"),
    ("dyn.dropout", "1", r"dyn.dropout must be in \[0, 1\)"),
    ("obs.encoder_hidden", "512,0", "every item of obs.encoder_hidden must be >= 1"),
    ("env.screen_size", "32", "env.screen_size must be 64"),
    ("runtime.checkpoint_interval_s", "0", "runtime.checkpoint_interval_s must be > 0"),
])
def test_out_of_range_values_are_rejected_at_parse_time(key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        paper().with_overrides({key: value})
    assert "\n" not in str(err.value)


def test_infinities_are_accepted_only_where_they_mean_something():
    c = paper().with_overrides({"buffer.temperature": "inf", "obs.grad_clip": "inf",
                                "runtime.checkpoint_interval_s": "inf"})
    assert math.isinf(c.buffer.temperature) and math.isinf(c.obs.grad_clip)


def test_presets_and_games_lookup():
    assert preset("smoke") == smoke()
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    assert len(GAMES) == 26 and get_game("MsPacman").num_actions == 9
    with pytest.raises(UnknownGameError, match="did you mean MsPacman"):
        get_game("mspacman")


def test_config_and_games_import_without_torch():
    code = "import sys, twm.config, twm.games; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
