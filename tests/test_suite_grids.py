"""Grids, run identity, the launch CLI's planning path (dry-run) and its one-line errors on bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from suite.cli import main
from suite.grids import GridError, get_grid, grid_names, parse_games, parse_seeds, plan
from twm.config import preset
from twm.games import GAMES

ABLATIONS = {
    "ablation-uniform-sampling": {"buffer.temperature": float("inf")},
    "ablation-no-reward-input": {"dyn.input_rewards": False},
    "ablation-no-entropy-threshold": {"ac.entropy_threshold": 1.0, "ac.entropy_coef": 0.001},
    "ablation-history-length-4": {"wm.sequence_length": 4, "dyn.memory_length": 4},
    "ablation-policy-input-zh": {"ac.input_h": True},
    "ablation-vanilla-transformer": {"dyn.imagination_memory": "vanilla"},
}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_atari100k_is_26_games_by_5_seeds_of_the_paper_preset():
    grid = get_grid("atari100k")
    specs = plan(grid)
    assert grid.num_runs == len(specs) == 130
    assert {s.game for s in specs} == set(GAMES) and {s.seed for s in specs} == set(range(5))
    assert {s.config_hash for s in specs} == {preset("paper").hash()}
    assert len({s.key for s in specs}) == 130


def test_smoke_grid_is_two_games_by_two_seeds_on_the_smoke_preset():
    specs = plan(get_grid("smoke"))
    assert len(specs) == 4 and {s.preset for s in specs} == {"smoke"}
    assert {s.config_hash for s in specs} == {preset("smoke").hash()}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_grid_sets_the_paper_switch_on_top_of_a_base_variant(name):
    grid = get_grid(name)
    assert "base" in grid.variants and len(grid.variants) == 2 and grid.games and grid.source
    specs = plan(grid)
    ablated = [s for s in specs if s.variant != "base"]
    config = preset(grid.preset).with_overrides(dict(ablated[0].overrides))
    for key, value in ABLATIONS[name].items():
        assert config.to_dict()[key] == value
    assert {s.config_hash for s in ablated} == {config.hash()} != {preset("paper").hash()}


def test_fewer_interactions_grid_has_10k_25k_50k_with_the_full_budget():
    grid = get_grid("ablation-fewer-interactions")
    assert "UpNDown" in grid.games
    capacities = {v: preset("paper").with_overrides(o).buffer.capacity for v, o in grid.variants.items()}
    assert capacities == {"base": 100_000, "10k": 10_000, "25k": 25_000, "50k": 50_000}
    assert {preset("paper").with_overrides(o).schedule.budget for o in grid.variants.values()} == {1_000_000_000}


def test_run_identity_names_the_directory_run_and_job():
    spec = plan(get_grid("smoke"), games=("Pong",), seeds=(1,))[0]
    assert spec.key == f"smoke/base/Pong/s1-{spec.config_hash}"
    assert spec.run_dir(Path("/r")) == Path(f"/r/smoke/base/Pong/s1-{spec.config_hash}")
    assert spec.run_name == f"base/Pong/s1-{spec.config_hash}" and spec.key in spec.job_name
    assert spec.tags() == {"twm.grid": "smoke", "twm.variant": "base", "twm.run_key": spec.key}


def test_a_launch_wide_override_changes_the_hash_but_runtime_keys_do_not():
    grid = get_grid("smoke")
    base = plan(grid)[0].config_hash
    assert plan(grid, overrides={"buffer.temperature": "inf"})[0].config_hash != base
    assert plan(grid, overrides={"runtime.threads": "1"})[0].config_hash == base


def test_games_and_seeds_overrides_parse_and_validate():
    assert parse_games("Pong,Breakout") == ("Pong", "Breakout")
    assert parse_games("all") == tuple(GAMES)
    assert parse_seeds("0-2,7") == (0, 1, 2, 7)
    with pytest.raises(GridError, match="unknown game 'pong'.*did you mean Pong"):
        parse_games("pong")
    for bad in ("x", "3-1", "-1", ""):
        with pytest.raises(GridError, match="bad --seeds"):
            parse_seeds(bad)
    with pytest.raises(GridError, match="unknown variant 'nope'"):
        plan(get_grid("smoke"), variants=("nope",))


def test_grids_command_lists_every_grid_with_its_run_count(capsys):
    assert main(["grids"]) == 0
    out = capsys.readouterr().out
    for name in grid_names():
        assert name in out
    assert " 130 runs" in out and "   4 runs" in out


def test_slurm_dry_run_lists_130_runs_in_one_array_with_sbatch_parameters(tmp_path):
    out = run_cli("launch", "atari100k", "--executor", "slurm", "--dry-run", "--runs-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("  atari100k/base/") == 130
    assert "130 jobs (1 run(s) per job) in 1 array(s)" in out.stdout
    for flag in ("--array=0-129%64", "--time=1440", "--gpus-per-node=1", "--requeue", "--signal=USR2@300",
                 "--partition=gpu"):
        assert f"#SBATCH {flag}" in out.stdout
    assert "nothing submitted" in out.stdout and not any(tmp_path.iterdir())


def test_dry_run_splits_arrays_at_max_array_size_and_packs_runs_per_gpu(tmp_path):
    profile = tmp_path / "small.toml"
    profile.write_text('partition = "p"\nmax_array_size = 50\ntimeout_min = 60\nsignal_delay_s = 120\n')
    out = run_cli("launch", "atari100k", "--executor", "slurm", "--cluster", str(profile), "--dry-run",
                  "--runs-dir", str(tmp_path / "runs"))
    assert "130 jobs (1 run(s) per job) in 3 array(s) (MaxArraySize 50, profile small)" in out.stdout, out.stderr
    assert out.stdout.count("#SBATCH --array=0-49%") == 2 and "#SBATCH --array=0-29%" in out.stdout
    out = run_cli("launch", "atari100k", "--executor", "slurm", "--cluster", str(profile), "--dry-run",
                  "--runs-per-gpu", "4", "--runs-dir", str(tmp_path / "runs"))
    assert "33 jobs (4 run(s) per job) in 1 array(s)" in out.stdout


def _one_line_error(out: subprocess.CompletedProcess, pattern: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twm-suite: error:") and pattern in lines[0], out.stderr


@pytest.mark.parametrize(("args", "pattern"), [
    (["launch", "nope"], "unknown grid 'nope'"),
    (["launch", "smoke", "--games", "Pong,Zork"], "unknown game 'Zork'"),
    (["launch", "smoke", "--variants", "uniform"], "unknown variant 'uniform'"),
    (["launch", "smoke", "--seeds", "a"], "bad --seeds"),
    (["launch", "smoke", "--set", "buffer.temprature=inf"], "unknown config key 'buffer.temprature'"),
    (["launch", "smoke", "--set", "buffer.capacity=lots"], "buffer.capacity expects int"),
    (["launch", "smoke", "--set", "nokey"], "bad override 'nokey'"),
    (["launch", "smoke", "--executor", "slurm", "--cluster", "nope"], "no cluster profile 'nope'"),
    (["status", "nope"], "unknown grid 'nope'"),
    (["launch", "smoke", "--games", ""], "bad --games ''"),  # an empty list is not 'the whole grid'
    (["launch", "smoke", "--games", " , "], "bad --games"),
    (["launch", "smoke", "--seeds", ""], "bad --seeds ''"),
    (["launch", "smoke", "--variants", ""], "bad --variants ''"),
    (["status", "smoke", "--games", ""], "bad --games ''"),
    (["launch", "smoke", "--cluster", "nosuchprofile"], "--cluster applies to --executor slurm only"),
    (["launch", "smoke", "--executor", "debug", "--cluster", "localci"], "--cluster applies to --executor slurm"),
    (["launch", "smoke", "--wait"], "--wait applies to --executor slurm only"),
    (["launch", "smoke", "--executor", "slurm", "--parallel", "2", "--dry-run"], "--parallel applies to"),
    (["launch", "smoke", "--force", "--retry-failed"], "choose one"),
    (["launch", "smoke", "--executor", "nope"], "argument --executor: invalid choice: 'nope'"),
    (["launch"], "the following arguments are required: grid"),
    (["report"], "the following arguments are required: grid"),  # a delegated verb: the same format
])
def test_bad_input_is_one_line_before_anything_is_submitted(tmp_path, args, pattern):
    _one_line_error(run_cli(*args, "--runs-dir", str(tmp_path)), pattern)
    assert not any(tmp_path.iterdir())


def test_slurm_executor_without_slurm_is_a_one_line_error(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no sbatch/srun/squeue
    out = run_cli("launch", "smoke", "--executor", "slurm", "--runs-dir", str(tmp_path), env=env)
    _one_line_error(out, "no Slurm here")
    assert not any(tmp_path.iterdir())


def test_unreachable_tracking_server_is_a_one_line_error(tmp_path):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run_cli("launch", "smoke", "--runs-dir", str(tmp_path), "--tracking-uri", f"http://127.0.0.1:{port}")
    _one_line_error(out, "is unreachable")
    assert not list(tmp_path.rglob("status.json"))


def test_unwritable_output_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line_error(run_cli("launch", "smoke", "--runs-dir", str(blocker / "runs")), "is not writable")


def test_trainer_command_carries_identity_overrides_and_tags(tmp_path):
    from suite.job import LaunchContext, train_command

    spec = plan(get_grid("ablation-uniform-sampling"), games=("Pong",), seeds=(3,), variants=("uniform",))[0]
    ctx = LaunchContext(runs_dir=tmp_path, tracking_uri="http://h:5000", experiment=spec.grid, executor="slurm",
                        device="cuda", git_commit="abc")
    cmd = train_command(spec, ctx, "42_7")
    pairs = {(cmd[i], cmd[i + 1]) for i in range(len(cmd) - 1)}
    for pair in [("--game", "Pong"), ("--seed", "3"), ("--preset", "paper"), ("--out", str(spec.run_dir(tmp_path))),
                 ("--tracking-uri", "http://h:5000"), ("--experiment", spec.grid), ("--run-name", spec.run_name),
                 ("--set", "buffer.temperature=inf"), ("--tag", f"twm.run_key={spec.key}"),
                 ("--tag", "twm.git_commit=abc"), ("--tag", "slurm.job_id=42_7"), ("--device", "cuda")]:
        assert pair in pairs, pair
    local = train_command(spec, LaunchContext(tmp_path, "sqlite:///x.db", spec.grid, "local"), "local1")
    assert not any(arg.startswith("slurm.job_id") for arg in local)


def test_cluster_profile_errors_are_one_line(tmp_path):
    from suite.cluster import ClusterError, load_profile

    assert load_profile("localci").partition == "debug" and load_profile("default").gpus_per_node == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('partiton = "gpu"\n')
    with pytest.raises(ClusterError, match="unknown keys partiton"):
        load_profile(str(bad))
    bad.write_text("timeout_min = 1\nsignal_delay_s = 90\n")
    with pytest.raises(ClusterError, match="signal_delay_s < timeout_min"):
        load_profile(str(bad))


def test_report_and_compare_are_registered_from_the_analysis_package():
    for verb in ("report", "compare"):
        out = run_cli(verb, "--help")
        assert out.returncode == 0 and f"twm-suite {verb}" in out.stdout and "--tracking-uri" in out.stdout


def test_slurm_dry_run_states_the_gpu_hour_cost_and_where_it_comes_from(tmp_path):
    from suite.cost import BENCHMARKS_DIR

    out = run_cli("launch", "atari100k", "--executor", "slurm", "--dry-run", "--runs-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    # No GPU throughput record ships: the paper's 10 A100-hours per run, 64 array tasks at once (default profile).
    assert not (BENCHMARKS_DIR / "throughput_cuda.json").exists()
    assert ("cost: 130 runs x 10.0 GPU-h per run = 1,300.0 GPU-h in all; 130 job(s), at most 64 at once: "
            "about 30.0 h of wall-clock (3 wave(s))") in out.stdout
    assert "per-run figure from the paper's ~10 h per run on one NVIDIA A100 (Appendix A.1)" in out.stdout
    # The CPU profile of the local Slurm: the CPU throughput record's projected full-run hours.
    hours = json.loads((BENCHMARKS_DIR / "throughput_cpu.json").read_text())["metrics"]["projected_full_run_hours"]
    out = run_cli("launch", "atari100k", "--games", "Pong", "--seeds", "0-1", "--executor", "slurm", "--cluster",
                  "localci", "--dry-run", "--runs-dir", str(tmp_path))
    assert f"cost: 2 runs x {hours:,.1f} job-h on CPU per run = {2 * hours:,.1f} job-h on CPU in all" in out.stdout
    assert "per-run figure from throughput record throughput_cpu.json (projected_full_run_hours" in out.stdout
    smoke = run_cli("launch", "smoke", "--dry-run", "--runs-dir", str(tmp_path))
    assert "cost: no estimate for preset smoke" in smoke.stdout


def test_cost_uses_the_devices_throughput_record_and_packs_runs_per_gpu(tmp_path):
    from suite.cost import describe_cost

    specs = plan(get_grid("ablation-vanilla-transformer"))  # base and vanilla, Pong seed 0
    lines = describe_cost(specs, "cuda", devices_per_job=1, runs_per_job=1, jobs_at_once=1,
                          benchmarks_dir=tmp_path)
    assert lines[0].startswith("cost: 2 runs x 10.0 GPU-h per run = 25.5 GPU-h in all")  # 10 h + 15.5 h (paper)
    assert "vanilla-transformer runs count x1.55" in "\n".join(lines)
    (tmp_path / "throughput_cuda.json").write_text(json.dumps({"device": "NVIDIA H100", "commit": "abc",
                                                               "metrics": {"projected_full_run_hours": 4.0}}))
    four = plan(get_grid("atari100k"), games=("Pong", "Boxing"), seeds=(0, 1))
    lines = describe_cost(four, "cuda", devices_per_job=1, runs_per_job=2, jobs_at_once=1, benchmarks_dir=tmp_path)
    assert lines[0] == ("cost: 4 runs x 4.0 GPU-h per run = 16.0 GPU-h in all; 2 job(s), at most 1 at once: "
                        "about 16.0 h of wall-clock (2 wave(s))")
    assert "throughput record throughput_cuda.json (projected_full_run_hours; NVIDIA H100, abc)" in lines[1]
    assert "2 runs share each job's GPU" in lines[2]


def test_max_array_size_read_from_a_failing_scontrol_is_labelled_a_fallback(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 'slurm_load_ctl_conf error: Unable to contact slurm controller'"
                                      " >&2\nexit 1\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")  # an empty queue, whatever the real controller does
    for tool in ("scontrol", "squeue"):
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = run_cli("launch", "smoke", "--executor", "slurm", "--dry-run", "--runs-dir", str(tmp_path / "r"), env=env)
    assert out.returncode == 0, out.stderr
    assert ("(MaxArraySize 1001, fallback: Slurm's default; scontrol show config exited 1: slurm_load_ctl_conf error: "
            "Unable to contact slurm controller)") in out.stdout


def test_a_dry_run_piped_into_head_ends_quietly(tmp_path):
    dry = f"{sys.executable} -m suite.cli launch atari100k --executor slurm --dry-run --runs-dir {tmp_path}"
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {dry} | head -n 2"], capture_output=True, text=True,
                         timeout=60)
    # whether the reader left before the last write depends on timing; either way nothing reaches stderr
    assert out.stderr == "" and len(out.stdout.splitlines()) == 2 and out.returncode in (0, 141)
    # a reader gone before the first write (`true` exits long before Python has started): a broken pipe for sure
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {dry} | true"], capture_output=True, text=True,
                         timeout=60)
    assert out.stderr == "" and out.returncode == 141  # 128 + SIGPIPE, as a shell reports it
