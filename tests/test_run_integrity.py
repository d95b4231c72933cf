"""A run is what it says it is (issue 10), with real `twm-train` processes, real files and a real tmpfs:
bad input is refused before torch is imported and writes nothing; a checkpoint of another game, seed or
configuration is refused; flipped bytes in any tensor or replay frame of a checkpoint are detected and the
previous good one is used; a full disk is one line, a non-empty FAILED and no temp file, and the run resumes
when space is back; stale temp files of killed writes are removed; SIGTERM during start-up is exit 3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from twm import run_record as rr
from twm.checkpoint import (
    CorruptCheckpointError,
    StorageError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_file_atomic,
)

GAME, SEED = "Breakout", 3
# the smoke preset with a 200-step main loop: prefill, every pretraining phase, periodic checkpoints in the
# main loop, an evaluation after pretraining and the final one, in about 15 s
TINY = ["--preset", "smoke", "--no-progress", "--set", "runtime.checkpoint_interval_s=2",
        "--set", "buffer.capacity=700", "--set", "schedule.budget=20000", "--set", "schedule.pretrain_budget=4000"]
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


def run_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "twm.cli", "run", "--game", GAME, "--seed", str(SEED), "--out", str(out),
            *TINY, *extra]


def twm_train(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def own_lines(stderr: str) -> list[str]:
    """What twm-train itself wrote to stderr (MLflow logs two INFO lines when it creates a sqlite store)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip() and " INFO mlflow." not in line]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder` with its size, mtime and content ({} if the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def outcome(out: Path) -> dict:
    """The run's final result without its wall-clock and location."""
    scores = json.loads((out / rr.FINAL_SCORES).read_text())
    return {k: v for k, v in scores.items() if k not in ("wall_s", "run_dir")}


def mlflow_runs(out: Path):
    """The MLflow runs of a run directory's store, read from a copy (so that no connection stays open on it)."""
    from mlflow.tracking import MlflowClient

    copy = Path(tempfile.mkdtemp()) / rr.MLFLOW_DB
    shutil.copy(out / rr.MLFLOW_DB, copy)
    client = MlflowClient(tracking_uri=f"sqlite:///{copy}")
    return client.search_runs([client.get_experiment_by_name("twm").experiment_id])


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if rr.is_temp(p)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted tiny run: what every interrupted, refused or resumed run must end with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = twm_train(run_cmd(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A tiny run stopped by SIGTERM in the main loop: two checkpoints, the newest with replay frames of its
    own (a frame file the previous checkpoint does not list)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    proc = subprocess.Popen(run_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    while not any("eval at 500" in line for line in lines):  # pretraining is over, the main loop begins
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines)
    time.sleep(0.3)  # some env steps past the last checkpoint (the main loop takes seconds)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, "".join(lines) + output
    previous, newest = (load_checkpoint(p) for p in list_checkpoints(out))
    assert newest["buffer"]["frames"][-1]["file"] not in {f["file"] for f in previous["buffer"]["frames"]}
    return out


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------------------- bad input
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_RUN = [
    (["--set", "schedule.final_eval_episodes=-1"], "schedule.final_eval_episodes must be >= 1, got -1"),
    (["--set", "schedule.eval_episodes=0"], "schedule.eval_episodes must be >= 1, got 0"),
    (["--set", "schedule.eval_every=0"], "schedule.eval_every must be >= 1, got 0"),
    (["--set", "runtime.keep_checkpoints=0"], "runtime.keep_checkpoints must be >= 1, got 0"),
    (["--set", "dyn.num_heads=0"], "dyn.num_heads must be >= 1, got 0"),
    (["--set", "ac.horizon=0"], "ac.horizon must be >= 1, got 0"),
    (["--set", "runtime.device=tpu"], "runtime.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--device", "tpu"], "runtime.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    (["--set", "obs.lr=nan"], "obs.lr must be > 0, got nan"),
    (["--set", "runtime.eval_envs=0"], "runtime.eval_envs must be >= 1, got 0"),
    (["--seed", "one"], "argument --seed: invalid int value: 'one'"),
    (["--game", "Pacman"], "unknown game 'Pacman'"),
    (["--set", "buffer.tau=3"], "unknown config key 'buffer.tau'"),
    (["--set", "buffer.capacity=lots"], "buffer.capacity expects int"),
    (["--preset", "giant"], "unknown preset 'giant'"),
    (["--tag", "novalue"], "bad --tag 'novalue'"),
    (["--set", "novalue"], "bad override 'novalue'"),
]
BAD_EVALUATE = [
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["--envs", "0"], "--envs must be >= 1, got 0"),
    (["--seed", "-2"], "--seed must be in 0..4294967295, got -2"),
    (["--device", "tpu"], "runtime.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--game", "Pacman"], "unknown game 'Pacman'"),
]
# runs main() as the console script does, then says on stdout whether torch was imported
PROBE = ("import sys; from twm.cli import main\n"
         "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exit:\n    code = exit.code\n"
         "print('torch' in sys.modules); sys.exit(code)")


def refused(args: list[str]) -> str:
    """Run a command that must be refused: exit 2, one line on stderr, torch never imported; the line."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("twm-train: error: "), (args, result.stderr)
    assert result.stdout.strip() == "False", f"{args}: torch was imported before the refusal"
    return lines[0]


def test_each_bad_value_exits_2_with_one_line_before_importing_torch_and_writes_nothing(tmp_path):
    out = tmp_path / "fresh" / "run"
    cases = BAD_RUN + [(["--tracking-uri", f"http://127.0.0.1:{free_port()}"], "unreachable")]
    for extra, message in cases:
        line = refused(run_cmd(out, *extra)[3:])
        assert message in line, (extra, line)
        assert not (tmp_path / "fresh").exists(), f"{extra} wrote {list((tmp_path / 'fresh').rglob('*'))}"
    checkpoint = tmp_path / "fresh" / "ckpt-000000001.pt"
    for extra, message in BAD_EVALUATE:
        assert message in refused(["evaluate", "--checkpoint", str(checkpoint), *extra]), extra
    assert "does not exist" in refused(["evaluate", "--checkpoint", str(checkpoint)])
    assert not (tmp_path / "fresh").exists()


@pytest.mark.slow
def test_a_refused_command_leaves_an_existing_run_directory_exactly_as_it_was(tmp_path, stopped):
    out = copy_run(stopped, tmp_path / "run")
    before = snapshot(out)
    for extra, message in BAD_RUN[:11]:
        assert message in refused(run_cmd(out, *extra)[3:])
    if not torch.cuda.is_available():  # needs torch to know: refused after the import, still before any write
        result = twm_train(run_cmd(out, "--device", "cuda"))
        assert result.returncode == 2 and own_lines(result.stderr) == [
            "twm-train: error: device 'cuda' requested but CUDA is not available"]
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- identity
@pytest.mark.slow
def test_a_checkpoint_of_another_seed_or_game_is_refused_with_one_line_and_nothing_written(tmp_path, stopped):
    # the checkpoints alone, without the config.json that would refuse the command sooner
    foreign = tmp_path / "other-run"
    shutil.copytree(stopped / rr.CHECKPOINTS, foreign / rr.CHECKPOINTS)
    before = snapshot(foreign)
    newest = list_checkpoints(foreign)[-1]
    for extra, problem in ((["--seed", "4"], f"seed {SEED}, not 4"), (["--game", "Pong"], "game Breakout, not Pong")):
        result = twm_train(run_cmd(foreign, *extra))
        assert result.returncode == 2, result.stderr
        assert own_lines(result.stderr) == [
            f"twm-train: error: checkpoint {newest} is of another run ({problem}); refusing to use it"]
        assert snapshot(foreign) == before  # no config.json, no mlflow.db, the checkpoints untouched


@pytest.mark.slow
def test_resume_under_another_runtime_precision_is_refused(tmp_path, stopped):
    out = copy_run(stopped, tmp_path / "run")
    before = snapshot(out)
    # the recorded identity (config.json) refuses before torch is imported
    line = refused(run_cmd(out, "--set", "runtime.precision=bf16")[3:])
    assert f"{out} holds a different run (Breakout seed {SEED}" in line
    # without it, the checkpoint's own configuration refuses, naming the setting
    (out / rr.CONFIG).unlink()
    result = twm_train(run_cmd(out, "--set", "runtime.precision=bf16"))
    assert result.returncode == 2, result.stderr
    (line,) = own_lines(result.stderr)
    assert "is of another run (config" in line and "runtime.precision bf16 here, fp32 there" in line
    assert snapshot(out) == {k: v for k, v in before.items() if k != rr.CONFIG}


@pytest.mark.slow
def test_evaluate_refuses_a_checkpoint_of_another_game_given_or_recorded(tmp_path, stopped):
    run = copy_run(stopped, tmp_path / "Pong" / "s3")
    newest = list_checkpoints(run)[-1]
    evaluate = [sys.executable, "-m", "twm.cli", "evaluate", "--episodes", "1"]
    result = twm_train(evaluate + ["--checkpoint", str(newest), "--game", "Pong"])
    assert result.returncode == 2 and own_lines(result.stderr) == [
        f"twm-train: error: checkpoint {newest} is of another run (game Breakout, not Pong); refusing to use it"]
    record = json.loads((run / rr.CONFIG).read_text())
    (run / rr.CONFIG).write_text(json.dumps(record | {"game": "Pong"}))  # a Pong run's record
    result = twm_train(evaluate + ["--checkpoint", str(run)])
    assert result.returncode == 2 and "(game Breakout, not Pong)" in own_lines(result.stderr)[0]
    (run / rr.CONFIG).write_text(json.dumps(record))
    result = twm_train(evaluate + ["--checkpoint", str(run), "--seed", str(SEED), "--episodes", "3"])
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # the run's own number of evaluation envs (the smoke preset's 2), not a default of the command
    assert scores["envs"] == 2 and scores["seed"] == SEED and scores["episodes"] == 3


# --------------------------------------------------------------------------- integrity
def data_offset(blob: bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes start (after its local header)."""
    name_length, extra_length = struct.unpack("<HH", blob[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def non_empty_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in non_empty_tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in non_empty_tensors(value)]
    return [obj] if isinstance(obj, torch.Tensor) and obj.numel() else []


@pytest.mark.slow
def test_a_flipped_byte_in_any_tensor_of_a_checkpoint_is_detected(tmp_path, stopped):
    newest = list_checkpoints(stopped)[-1]
    blob = newest.read_bytes()
    with zipfile.ZipFile(newest) as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 0]
    assert len(records) == len(non_empty_tensors(load_checkpoint(newest))) > 100  # one record per tensor
    bad = tmp_path / newest.name
    for info in records:
        damaged = bytearray(blob)
        damaged[data_offset(blob, info) + info.file_size // 2] ^= 0x10
        bad.write_bytes(damaged)
        with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
            load_checkpoint(bad)
    # a changed value outside the tensors (the configuration text), and a truncated file
    bad.write_bytes(blob.replace(b'"buffer.capacity": 700', b'"buffer.capacity": 800'))
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch in config"):
        load_checkpoint(bad)
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptCheckpointError, match="corrupt or unreadable"):
        load_checkpoint(bad)


def kill_a_writer(path_with_pid: str) -> Path:
    """A real process that dies by SIGKILL in the middle of writing a temp file; the file it leaves."""
    code = ("import os, sys, time\n"
            "f = open(sys.argv[1].replace('PID', str(os.getpid())), 'wb')\n"
            "f.write(b'x' * 100_000); f.flush(); print(os.getpid(), flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, path_with_pid], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    left = Path(path_with_pid.replace("PID", str(pid)))
    assert left.exists()
    return left


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["model tensor", "replay frames"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_and_ends_as_uninterrupted(
        tmp_path, stopped, reference, damage):
    out = copy_run(stopped, tmp_path / "run")
    previous, newest = list_checkpoints(out)
    if damage == "model tensor":  # 64 bytes in the middle of the largest tensor
        blob = bytearray(newest.read_bytes())
        with zipfile.ZipFile(newest) as archive:
            info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start = data_offset(bytes(blob), info) + info.file_size // 2
        blob[start: start + 64] = os.urandom(64)
        newest.write_bytes(blob)
    else:  # 64 KiB of random bytes over the replay frames only the newest checkpoint lists
        frames = out / rr.CHECKPOINTS / load_checkpoint(newest)["buffer"]["frames"][-1]["file"]
        with open(frames, "r+b") as f:
            f.write(os.urandom(min(64 << 10, frames.stat().st_size)))
    # temp files of writes killed mid-way, and one of a live process (this one) that must stay
    stale = [kill_a_writer(str(out / ".status.json.tmp-PID")),
             kill_a_writer(str(out / rr.CHECKPOINTS / ".ckpt-000000099.pt.tmp-PID"))]
    live = out / f".claim.json{rr.TEMP_MARK}{os.getpid()}"
    live.write_text("{}")

    result = twm_train(run_cmd(out))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if "warning:" in line)
    assert f"{newest.name} is corrupt" in warning and f"previous good checkpoint {previous.name}" in warning
    assert f"resumed from checkpoint {previous.name}" in result.stdout
    assert "removed 2 temp file(s) of interrupted writes" in result.stdout
    assert not any(p.exists() for p in stale) and live.exists()
    assert (out / rr.CHECKPOINTS / (newest.name + ".corrupt")).exists()  # set aside, not loaded again
    assert outcome(out) == outcome(reference)


# -------------------------------------------------------------------------- storage faults
@pytest.fixture
def small_tmpfs(tmp_path):
    """A real tmpfs of a few MB, unmounted afterwards; the test may remount it larger."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    yield mount
    if subprocess.run(["umount", str(mount)]).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        pytest.fail(f"{mount} was still in use at the end of the test")


@AS_ROOT
def test_a_write_that_fills_the_disk_leaves_no_temp_file_and_says_what_it_needs(small_tmpfs):
    big = {"weights": torch.ones(5_000_000)}  # 20 MB, more than the 16 MB disk
    with pytest.raises(StorageError, match=r"for checkpoint ckpt-000000001.pt: it needs 20.\d MB plus 1.0 MB kept "
                                           r"free for the run's status files, 1\d.\d MB are free"):
        save_checkpoint(small_tmpfs / "run", big)  # refused before writing
    # a write that starts because its size was not known in advance, and meets the full disk mid-way
    target = small_tmpfs / "blob.pt"
    with pytest.raises(StorageError) as err:
        write_file_atomic(target, lambda f: torch.save(big, f), 0, "test blob")
    assert str(err.value).startswith(f"no space left on the device of {small_tmpfs} for test blob")
    assert "unexpected pos" not in str(err.value) and "\n" not in str(err.value)
    assert list(small_tmpfs.rglob("*")) == [small_tmpfs / "run", small_tmpfs / "run" / rr.CHECKPOINTS]


@AS_ROOT
@pytest.mark.slow
def test_a_run_on_a_full_tmpfs_fails_with_one_line_and_resumes_when_space_is_back(small_tmpfs, reference):
    out = small_tmpfs / "run"
    result = twm_train(run_cmd(out))
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = own_lines(result.stderr)
    assert line.startswith(f"twm-train: error: no space left on the device of {out / rr.CHECKPOINTS} for "
                           "checkpoint ckpt-"), line
    assert "it needs" in line and "MB are free" in line
    assert (out / rr.FAILED).read_text().startswith("StorageError: no space left")
    assert json.loads((out / rr.STATUS).read_text())["state"] == rr.STATE_FAILED
    (run,) = mlflow_runs(out)
    assert run.data.tags[rr.TAG_STATUS] == rr.STATE_FAILED and run.info.status == "FAILED"
    assert temp_files(out) == []
    good = list_checkpoints(out)
    assert good, "the checkpoints written before the disk filled stay"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    result = twm_train(run_cmd(out))
    assert result.returncode == 0, result.stderr
    assert f"resumed from checkpoint {good[-1].name}" in result.stdout
    assert outcome(out) == outcome(reference)
    assert [r.data.tags[rr.TAG_STATUS] for r in mlflow_runs(out)] == [rr.STATE_DONE]


# ---------------------------------------------------------------------------- start-up
@pytest.mark.slow
def test_sigterm_during_start_up_exits_3_with_one_line_and_the_next_run_resumes_normally(tmp_path, reference):
    out = tmp_path / "run"
    for extra in (["--seed", "-1"], ["--set", "obs.lr=nan"]):  # rejected first: they leave nothing behind
        refused(run_cmd(out, *extra)[3:])
    assert not out.exists()
    for delay in (1, 2, 3):
        proc = subprocess.Popen(run_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 3, (delay, stderr)
        (line,) = own_lines(stderr)
        assert line.startswith("twm-train: stopped") and "rerun the same command" in line, (delay, line)
    result = twm_train(run_cmd(out))  # the corrected command of the first refusal: not "a different run"
    assert result.returncode == 0, result.stderr
    assert outcome(out) == outcome(reference)
    assert [r.data.tags[rr.TAG_STATUS] for r in mlflow_runs(out)] == [rr.STATE_DONE]  # one MLflow run


# ---------------------------------------------------------------------------- crashes in native code
def test_a_trainer_crashing_in_native_code_leaves_every_threads_python_stack_in_its_log(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(run_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / rr.STATUS).exists():  # training has begun: the sender thread runs beside it
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGSEGV)  # what a segfault in a library delivers
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in stderr, stderr
    assert 'File "' in stderr and "twm/train.py" in stderr, stderr  # where the trainer was
