"""What a user sees when something is wrong: one line naming the problem, a non-zero exit, nothing lost or
half-written. Each case drives the command line the way a user would (docs/faults.md lists them)."""

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import evaluate
from resnet_jax import checkpoint, conv, convert, data, plot, training
from tests.test_evaluate import save_run
from tests.test_train import (
    CLI_OVERRIDES,
    ROOT,
    cli,
    final_params,
    free_port,
    make_folder,
    tiny_config,
    wait_for_checkpoint,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny"))


def train_cli(workdir, *flags):
    cmd = [sys.executable, str(ROOT / "train.py"), f"--config={ROOT}/resnet_jax/configs/cifar10.py:cifar_resnet20",
           f"--workdir={workdir}", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag,message", [
    ("--config.learnng_rate=0.1",
     'error: unknown config field: \'learnng_rate\' Did you mean "learning_rate" instead of "learnng_rate"?'),
    ("--config.batch_size=abc", "error: flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'"),
    ("--config.eval_every_steps=0", "error: eval_every_steps must be a positive integer, got 0"),
    ("--config.num_train_steps=-5", "error: num_train_steps must be a positive integer, got -5"),
])
def test_bad_flags_get_one_line_and_write_nothing(tmp_path, flag, message):
    result = train_cli(tmp_path / "run", flag)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps"])
def test_zero_sizes_and_intervals_fail_before_compiling(tiny, tmp_path, field):
    with pytest.raises(training.ConfigError, match=f"{field} must be a positive integer, got 0"):
        training.prepare(tiny_config(tiny, **{field: 0}), str(tmp_path))


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_so(tiny, tmp_path):
    c = tiny_config(tiny, num_train_steps=6, learning_rate=1e12, checkpoint_every_steps=100, log_every_steps=6,
                    eval_every_steps=100)
    with pytest.raises(FloatingPointError, match="No checkpoint had been saved yet"):
        training.train_and_evaluate(c, str(tmp_path / "nan"))


@pytest.mark.slow
def test_resuming_with_another_batch_size_warns(tiny, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    training.train_and_evaluate(tiny_config(tiny, num_train_steps=3), workdir)
    with caplog.at_level(logging.WARNING, logger="resnet_jax"):
        training.prepare(tiny_config(tiny, batch_size=4), workdir, checkpoint.manager(workdir))
    assert "trained with batch_size 8 at batch_size 4" in caplog.text


def test_evaluate_step_that_is_not_a_number(tmp_path):
    save_run(tmp_path, name="cifar_resnet20", image_size=32, eval_preset="cifar")
    with pytest.raises(SystemExit, match=r"^error: step must be 'latest', 'best' or a number, got 'abc'; saved "
                                         r"steps: \[7\]$"):
        evaluate.main([f"--workdir={tmp_path}", "--step=abc"])


def test_images_prints_the_good_files_then_names_the_bad_one(tmp_path, capsys):
    from PIL import Image

    save_run(tmp_path / "run", name="cifar_resnet20", image_size=32, eval_preset="cifar")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(SystemExit, match=r"^error: cannot read image .*bad\.jpg"):
        evaluate.main([f"--workdir={tmp_path / 'run'}", "--images", str(bad), str(good)])
    out = capsys.readouterr().out
    assert str(good) in out and out.count("%") == 3 and str(bad) not in out


def test_whole_image_evaluation_is_not_called_a_center_crop(tmp_path, capsys):
    from tests.test_evaluate import write_images

    root = write_images(tmp_path / "images", size=(32, 32))
    save_run(tmp_path / "run", name="cifar_resnet20", image_size=32, eval_preset="cifar", dataset=f"folder:{root}")
    evaluate.main([f"--workdir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert "whole image (32x32)" in out and "center crop" not in out


def test_plot_of_a_missing_run(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*metrics\.jsonl does not exist: is .* a training workdir\?$"):
        plot.main([str(tmp_path / "nothing")])


def test_converting_a_garbage_file(tmp_path):
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    pytest.importorskip("torch")
    with pytest.raises(SystemExit, match=r"^error: cannot read .*weights\.pt as a PyTorch state dict \(loaded with "
                                         r"weights_only=True, which runs no pickled code\): [^\n]+$"):
        convert.main(["--from=torch", "--model=cifar_resnet20", f"--input={garbage}", f"--workdir={tmp_path / 'o'}"])
    assert not (tmp_path / "o").exists()


def test_doctor_reports_versions_and_refuses_mismatches(capsys):
    from resnet_jax import doctor

    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "jaxlib" in out and "backend cpu" in out and "host memory: " in out
    bf16 = conv.onednn_bf16_unavailable()
    assert f"dtype=bfloat16 convolutions: {'oneDNN' if bf16 is None else 'XLA: ' + bf16}\n" in out
    assert doctor.main(["--expect=gpu"]) == 1
    assert "error: expected a gpu backend, JAX found cpu" in capsys.readouterr().err
    problems = doctor.plugin_problems({"jaxlib": "0.10.1", "jax-cuda12-plugin": "0.10.2", "jax-cuda12-pjrt": "0.10.1"})
    assert problems == ["jax-cuda12-plugin 0.10.2 does not match jaxlib 0.10.1: JAX will ignore it and run on the "
                        "CPU. Reinstall with one pinned step, e.g. pip install -r requirements-cuda12.txt"]


def damage(workdir, step, how):
    """Truncate, delete or zero the largest array file of a saved step."""
    files = [p for p in (workdir / "checkpoints" / str(step) / "variables").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    if how == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif how == "deleted":
        target.unlink()
    else:
        target.write_bytes(bytes(target.stat().st_size))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    training.train_and_evaluate(tiny_config(tiny, num_train_steps=6), str(workdir))  # steps 3 and 6
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "deleted", "zeroed"])
def test_a_damaged_latest_checkpoint_is_named_with_the_good_steps(trained, tmp_path, caplog, how):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    damage(workdir, 6, how)
    with pytest.raises(SystemExit) as e:  # evaluate.py: one line, the damaged step and the good ones
        evaluate.main([f"--workdir={workdir}"])
    message = str(e.value.code)
    assert message.startswith("error: checkpoint step 6 in ") and "is damaged" in message
    assert message.endswith("other saved steps: [3], e.g. --step=3") and "\n" not in message
    with caplog.at_level(logging.WARNING, logger="resnet_jax"):  # what training does before resuming
        assert checkpoint.newest_good_step(checkpoint.manager(str(workdir))) == 3
    assert "checkpoint step 6" in caplog.text and "resuming from step 3, the newest good one" in caplog.text
    assert (workdir / "checkpoints" / "damaged-6").is_dir() and not (workdir / "checkpoints" / "6").exists()


@pytest.mark.slow
def test_training_resumes_from_the_newest_good_step_and_refuses_when_none_is_left(trained, tiny, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    damage(workdir, 6, "truncated")
    result = training.train_and_evaluate(tiny_config(tiny, num_train_steps=6), str(workdir))
    assert result["step"] == 6 and checkpoint.load_checkpoint(str(workdir))[2]["step"] == 6
    damage(workdir, 6, "zeroed")
    damage(workdir, 3, "deleted")
    with pytest.raises(checkpoint.CheckpointError, match=r"every saved step in .* is damaged .*move that directory "
                                                          r"away to train from scratch"):
        training.train_and_evaluate(tiny_config(tiny, num_train_steps=6), str(workdir))


def broken_folder(tmp_path, split):
    """The tiny folder with a truncated JPEG (a valid header: only decoding finds it) in ``split``."""
    from PIL import Image

    root = make_folder(tmp_path / "data")
    Image.open(root / split / "ant" / "0.png").save(tmp_path / "whole.jpg", quality=95)
    whole = (tmp_path / "whole.jpg").read_bytes()
    bad = root / split / "ant" / "broken.jpg"
    bad.write_bytes(whole[: len(whole) // 2])
    return root, bad


@pytest.mark.slow
def test_a_corrupt_training_image_is_named_after_saving(tmp_path):
    """Nothing checked the file up front (mean/std normalisation, no verify_images): the run saves the steps it
    trained, then stops with one line naming the file; removing it and rerunning resumes."""
    root, bad = broken_folder(tmp_path, "train")
    workdir = tmp_path / "run"
    flags = [f"--config.dataset=folder:{root}", "--config.normalization=mean_std", "--config.num_train_steps=12",
             "--config.checkpoint_every_steps=100", "--config.eval_every_steps=100", *CLI_OVERRIDES]
    result = train_cli(workdir, *flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: unreadable image(s) in folder:{root}:train: {bad} (truncated)"), line
    steps = checkpoint.manager(str(workdir)).all_steps()  # the epoch reaches the file at some step: it is saved
    assert len(steps) <= 1 and (f"saved step {steps[0]} first" in line if steps else "no trained step" in line)
    bad.unlink()
    c = tiny_config(root, normalization="mean_std", num_train_steps=12, checkpoint_every_steps=100,
                    eval_every_steps=100)
    assert training.train_and_evaluate(c, str(workdir))["step"] == 12


@pytest.mark.slow
def test_a_corrupt_evaluation_image_is_named_after_saving(tmp_path):
    root, bad = broken_folder(tmp_path, "test")
    c = tiny_config(root, normalization="mean_std", num_train_steps=6, eval_every_steps=5,
                    checkpoint_every_steps=100)
    with pytest.raises(data.DataError, match=r"unreadable image\(s\) in folder:.*:test: .*broken\.jpg \(truncated\)\. "
                                             r"saved step 5 first"):
        training.train_and_evaluate(c, str(tmp_path / "run"))
    assert checkpoint.manager(str(tmp_path / "run")).all_steps() == [5]  # the 5 trained steps
    bad.unlink()
    assert training.train_and_evaluate(c, str(tmp_path / "run"))["step"] == 6


# ----------------------------------------------------------------------------------------- cluster faults


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_workdir_refuses_in_one_line_and_a_dead_runs_lock_is_taken_over(tiny, tmp_path):
    """A requeued job while the old one still runs: the second run names the holder in one line before compiling,
    and the first trains on. After kill -9 of the holder, the next run takes the lock over and resumes."""
    workdir = tmp_path / "run"
    cmd, env = cli(workdir, tiny, 100_000, "--config.checkpoint_every_steps=2", "--config.eval_every_steps=100000",
                   devices=1)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(workdir, first)
        started = time.time()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        took = time.time() - started
        assert second.returncode == 1 and first.poll() is None
        assert second.stderr.strip().splitlines() == [second.stderr.strip()], second.stderr[-3000:]
        assert re.fullmatch(rf"error: {workdir} is in use by another run \(pid {first.pid} on {socket.gethostname()}, "
                            r"started [0-9-]+ [0-9:]+\); stop it or use another --workdir", second.stderr.strip())
        assert took < 20, took  # refused before compiling (the start-up is ~5 s of imports)
        steps = checkpoint.manager(str(workdir), create=False).all_steps()
        time.sleep(1.0)
        assert max(checkpoint.manager(str(workdir), create=False).all_steps()) > max(steps)  # the first trains on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resume_at = max(checkpoint.manager(str(workdir), create=False).all_steps())
    cmd, env = cli(workdir, tiny, resume_at + 2, "--config.checkpoint_every_steps=2", devices=1)
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over {workdir / 'run.lock'} from a run that is gone (pid {first.pid} on" in third.stderr
    assert (workdir / "run.lock").read_text() == ""  # released at the end


def test_an_unwritable_workdir_is_one_line_before_compiling(tiny, tmp_path):
    """A read-only filesystem (a tmpfs mounted read-only; root ignores file permissions), else a plain file where
    the workdir's parent should be."""
    target = tmp_path / "ro"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                             capture_output=True).returncode == 0
    try:
        workdir = target / "run" if not mounted else target
        if not mounted:
            target.rmdir()
            target.write_text("a file, not a folder")
        result = train_cli(workdir, f"--config.dataset=folder:{tiny}", "--config.num_train_steps=2", *CLI_OVERRIDES)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-3000:]
        assert re.fullmatch(rf"error: cannot (write to|create) the workdir {workdir}: "
                            r"(Read-only file system|Not a directory)", result.stderr.strip()), result.stderr
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)


@pytest.mark.slow
def test_a_full_disk_at_a_save_is_one_line_with_a_distinct_code_and_the_rerun_resumes(tiny, tmp_path):
    """The workdir on a small tmpfs mounted by the test (these machines run as root); a full disk is then real."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here (test_a_save_that_would_not_fit_... simulates it)")
    try:
        workdir = disk / "run"
        flags = ["--config.checkpoint_every_steps=2", "--config.eval_every_steps=1000", "--config.keep_checkpoints=50"]
        cmd, env = cli(workdir, tiny, 60, *flags, devices=1)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == checkpoint.WRITE_FAILED_EXIT_CODE == 74, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert len(errors) == 1, done.stderr[-3000:]
        kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
        assert re.fullmatch(rf"error: saving step {kept[-1] + 2} to {workdir / 'checkpoints'} failed: no space left on "
                            rf"the device \(the step needs about [0-9.]+ MB, [0-9.]+ (MB|KB) are free\)\. Saved steps "
                            rf"{re.escape(str(kept))} are intact and no partial step is left; free some space and "
                            rf"rerun the same command to resume from step {kept[-1]}", errors[0]), errors[0]
        assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(map(str, kept))  # no *-tmp
        for step in kept:
            checkpoint.verify_step(checkpoint.manager(str(workdir), create=False), step)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        cmd, env = cli(workdir, tiny, kept[-1] + 4, *flags, devices=1)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and f"resumed from step {kept[-1]}" in done.stderr, done.stderr[-3000:]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_save_that_would_not_fit_is_refused_before_writing(tiny, tmp_path, monkeypatch):
    """The same case simulated (for machines where a tmpfs cannot be mounted): the disk reports too little space
    from step 4 on."""
    real = shutil.disk_usage
    full = {"on": False}

    def disk_usage(path):
        usage = real(path)
        return usage._replace(free=100_000) if full["on"] else usage

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
    c = tiny_config(tiny, num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=100)
    with pytest.raises(checkpoint.WriteFailed, match=r"saving step 4 to .* failed: no space left on the device "
                                                     r"\(the step needs about .*, 97.7 KB are free\)\. Saved steps "
                                                     r"\[2\] are intact"):
        training.train_and_evaluate(c, str(tmp_path / "run"), on_step=lambda step: full.update(on=step >= 3))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]


def test_disk_errors_are_told_apart_from_other_errors():
    tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x\": Failed to write 11154 bytes to file "
                             "8: No space left on device [os_error_code='28']")
    assert checkpoint.disk_error(tensorstore) == "no space left on the device"
    assert checkpoint.disk_error(OSError(122, "Disk quota exceeded")) == "the disk quota is exceeded"
    assert checkpoint.disk_error(OSError(30, "Read-only file system")) == "the filesystem is read-only"
    assert checkpoint.disk_error(ValueError("shape mismatch")) is None


@pytest.mark.slow
def test_a_stop_signal_during_an_evaluation_abandons_it_saves_and_the_resumed_run_evaluates_first(tiny, tmp_path):
    workdir = tmp_path / "run"

    def on_step(step):
        if step == 4:  # the signal arrives just before the evaluation of step 4
            os.kill(os.getpid(), signal.SIGTERM)

    c = tiny_config(tiny, num_train_steps=6, eval_every_steps=4, checkpoint_every_steps=100, log_every_steps=1)
    with pytest.raises(training.Preempted, match=r"received SIGTERM: saved step 4 during the evaluation of that step "
                                                 r"\(the resumed run evaluates it first\), exiting"):
        training.train_and_evaluate(c, str(workdir), on_step=on_step)
    assert checkpoint.manager(str(workdir)).all_steps() == [4]
    rows = plot.read_metrics(str(workdir))
    assert not [r for r in rows if "eval_top1_error" in r]  # abandoned, not logged
    assert training.train_and_evaluate(c, str(workdir))["step"] == 6
    evaluated = [r["step"] for r in plot.read_metrics(str(workdir)) if "eval_top1_error" in r]
    assert evaluated == [4, 6]


def test_a_stop_signal_before_training_starts_exits_within_seconds(tiny, tmp_path):
    """SIGTERM while the run restores, compiles or reads data (nothing new trained): out within GRACE_SECONDS plus
    a little, even from inside XLA's compile, with exit code 143 and one line."""
    workdir = tmp_path / "run"
    cmd, env = cli(workdir, tiny, 8, "--config.eval_every_steps=8", devices=1)
    cmd = [a.replace("cifar10.py:cifar_resnet20", "cifar10.py:cifar_resnet110") for a in cmd]  # a long compile
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((workdir / "run.lock").exists() and (workdir / "run.lock").read_text()):  # prepared: compiling next
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    took = time.time() - sent
    assert proc.returncode == 143, err[-3000:]
    assert "received SIGTERM before training started: nothing new to save, exiting" in out
    assert "Traceback" not in err, err[-3000:]
    assert took < training.GRACE_SECONDS + 3, took
    assert not list((workdir / "checkpoints").glob("*"))  # nothing trained, nothing saved


@pytest.mark.slow
def test_a_lost_process_stops_the_others_in_one_line_and_a_rerun_of_all_resumes_bitwise(tiny, tmp_path):
    """2 processes x 1 CPU device; process 1 is killed with kill -9 after a checkpoint. Process 0 stops within the
    heartbeat timeout (20 s here, 60 s by default) with one line and exit code 75 instead of hanging; rerunning
    both resumes, and ends with the parameters of an uninterrupted 2-process run."""

    def launch(workdir, steps):
        port, procs = free_port(), []
        for pid in (0, 1):
            cmd, env = cli(workdir, tiny, steps, "--config.checkpoint_every_steps=2", "--config.eval_every_steps=1000",
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}",
                           "--heartbeat_timeout=20", devices=1)
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return procs

    workdir = tmp_path / "run"
    first, second = launch(workdir, 100_000)
    try:
        wait_for_checkpoint(workdir, first, timeout=240)
        second.send_signal(signal.SIGKILL)
        lost = time.time()
        _, err = first.communicate(timeout=120)
        took = time.time() - lost
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
    assert first.returncode == 75, err[-3000:]
    # JAX's coordination client may log its own lines (C++, "E.../F... coordination_service...") before ours
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: process 0 lost contact with another process of this "
                                                   "run ("), err[-3000:]
    assert lines[0].endswith("rerun all 2 processes to resume from the last checkpoint"), lines[0]
    assert took < 50, took  # the heartbeat timeout, and the time to notice it
    resume_at = max(checkpoint.manager(str(workdir), create=False).all_steps())
    for run in (workdir, tmp_path / "reference"):
        procs = launch(run, resume_at + 2)
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(tmp_path / "reference"))


def test_the_workdir_lock_refuses_a_live_holder_and_takes_over_from_a_dead_one(tmp_path, caplog):
    held = training.WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(training.WorkdirLocked, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()} on "):
        training.WorkdirLock(str(tmp_path)).acquire()  # another open file: flock conflicts even in one process
    held.release()
    assert (tmp_path / "run.lock").read_text() == ""
    (tmp_path / "run.lock").write_text('{"host": "gone-host", "pid": 999999, "started": 0}')  # killed, unreleased
    with caplog.at_level(logging.WARNING):
        training.WorkdirLock(str(tmp_path)).acquire().release()
    assert "from a run that is gone (pid 999999 on gone-host" in caplog.text
