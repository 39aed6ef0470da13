"""Training: schedules, the sharded step's BN modes, checkpoints, exact resume after kill -9, SIGTERM,
NaN and config errors, and 2 processes x 2 devices against 1 process x 4 devices."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from resnet_jax import checkpoint, data, models, training
from resnet_jax.configs import cifar10
from tests.conftest import once_per_session

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, train_per_class=12, test_per_class=5, size=16) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(("ant", "bee", "cat")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):  # learnable: the class sets the mean colour
                image = rng.integers(0, 80, (size, size, 3)) + 80 * np.eye(3, dtype=int)[c]
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("tiny"))


def tiny_config(root, **overrides):
    c = cifar10.get_config("cifar_resnet20")
    c.update(dict(dataset=f"folder:{root}", train_split="train", eval_split="test", image_size=16, batch_size=8,
                  num_train_steps=6, log_every_steps=2, eval_every_steps=3, checkpoint_every_steps=3,
                  eval_batch_size=8))
    c.update(overrides)
    return c


CLI_OVERRIDES = ["--config.train_split=train", "--config.learning_rate=0.01", "--config.eval_split=test",
                 "--config.image_size=16",
                 "--config.batch_size=8", "--config.log_every_steps=2", "--config.eval_batch_size=8"]


# --------------------------------------------------------------------------------------------- schedules


def test_paper_cifar_schedule():
    c = cifar10.get_config("cifar_resnet20")
    lr = training.learning_rate_schedule(c, 351)
    assert [float(lr(s)) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = training.learning_rate_schedule(cifar10.get_config("cifar_resnet110"), 351)
    assert [float(warm(s)) for s in (0, 399, 400, 32_000)] == pytest.approx([0.01, 0.01, 0.1, 0.01])


def test_imagenet_schedule_options():
    from resnet_jax.configs import imagenet

    c = imagenet.get_config("resnet50")
    lr = training.learning_rate_schedule(c, 5004)
    assert [float(lr(s)) for s in (0, 150_119, 150_120, 300_240, 450_360)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001])
    c.update(dict(batch_size=1024, lr_scaling="linear", warmup="linear", warmup_steps=100, schedule="cosine",
                  num_train_steps=1100))
    lr = training.learning_rate_schedule(c, 1251)
    assert [float(lr(s)) for s in (0, 50, 100, 600, 1100)] == pytest.approx([0, 0.2, 0.4, 0.2, 0], abs=1e-6)


# ------------------------------------------------------------------------------------------- the step


def small_model() -> models.ResNet:
    return models.ResNet(stage_sizes=(1,), widths=(4,), stem="cifar", num_classes=3)


def one_step_on_4_devices(sync: bool, tx):
    """One sharded train step of ``small_model`` on 8 images (2 per device), BN statistics per device or
    synchronised; returns the variables before it, the images and labels, the new state and the metrics."""
    assert jax.device_count() == 4
    model = small_model().clone(bn_axis_name=training.AXIS if sync else None)
    mesh = training.make_mesh()
    state = training.create_train_state(model, tx, 8, 0, mesh)
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(8, dtype=np.int32) % 3
    variables = jax.device_get(state.variables)
    step = training.make_train_step(model, tx, mesh, 0.0, 255.0, 3)
    new, metrics = step(state, data.to_global({"image": images, "label": labels}, mesh))
    return variables, images, labels, new, metrics


@pytest.mark.parametrize("sync", [False, True])
def test_batch_norm_statistics_per_device_or_synchronised(sync):
    c = tiny_config("unused", learning_rate=0.0, weight_decay=0.0)
    variables, images, _, new, metrics = one_step_on_4_devices(sync, training.make_optimizer(c, lambda s: 0.0))
    plain = small_model()

    def stats(x):
        return plain.apply(variables, x / 255.0, train=True, mutable=["batch_stats"])[1]["batch_stats"]

    if sync:
        expected = stats(images)
    else:  # each device normalises its 2 examples; the running statistics are then averaged
        expected = jax.tree.map(lambda *s: sum(s) / 4, *[stats(images[2 * d:2 * d + 2]) for d in range(4)])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.batch_stats, expected)
    assert int(metrics["count"]) == 8 and int(new.step) == 1
    assert new.params["fc"]["kernel"].sharding.is_fully_replicated


@pytest.mark.parametrize("sync", [False, True])
def test_gradients_are_the_mean_over_devices_not_the_sum(sync):
    """4 devices x 2 examples step like the mean of the 4 devices' own gradients (with global BN statistics: like
    one device on all 8): the learning rate does not grow with the device count."""
    variables, images, labels, new, _ = one_step_on_4_devices(sync, optax.sgd(1.0))  # new params = params - grad
    plain = small_model()

    def grad(x, y):
        def loss(params):
            logits = plain.apply(dict(variables, params=params), x / 255.0, train=True, mutable=["batch_stats"])[0]
            return optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, 3)).mean()
        return jax.grad(loss)(variables["params"])

    expected = (grad(images, labels) if sync else
                jax.tree.map(lambda *g: sum(g) / 4, *[grad(images[2 * d:2 * d + 2], labels[2 * d:2 * d + 2])
                                                      for d in range(4)]))
    got = jax.tree.map(lambda before, after: before - after, variables["params"], jax.device_get(new.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, expected)


# ---------------------------------------------------------------------------------------- in-process run


@pytest.mark.slow
def test_train_writes_metrics_curves_and_self_describing_checkpoints(tiny, tmp_path):
    workdir = tmp_path / "run"
    result = training.train_and_evaluate(tiny_config(tiny), str(workdir))
    assert result["step"] == 6 and np.isfinite(result["eval_top1_error"])
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in events if "train_loss" in e]
    assert [e["step"] for e in train_events] == [2, 4, 6]
    for key in ("train_loss", "train_error", "learning_rate", "images_per_second", "epoch"):
        assert key in train_events[-1]
    assert {e["step"] for e in events if "eval_top1_error" in e} == {3, 6}
    assert all("eval_top5_error" in e for e in events if "eval_top1_error" in e)
    assert (workdir / "curves.png").stat().st_size > 1000
    assert list((workdir / "tensorboard").iterdir())
    model, variables, info = checkpoint.load_checkpoint(str(workdir))
    assert info["step"] == 6 and info["model"] == "cifar_resnet20"
    assert info["class_names"] == ["ant", "bee", "cat"] and info["num_classes"] == 3
    assert np.asarray(info["preprocessing"]["mean"]).shape == (16, 16, 3)
    assert info["data_position"] == {"seed": 0, "batch_size": 8, "epoch": 1, "step_in_epoch": 2}
    assert model.num_classes == 3 and variables["params"]["fc"]["kernel"].shape == (64, 3)
    # resuming runs only the remaining steps, and a different model in the same workdir is refused
    more = training.train_and_evaluate(tiny_config(tiny, num_train_steps=8), str(workdir))
    assert more["step"] == 8
    with pytest.raises(training.ConfigError, match=r"holds a run with model='cifar_resnet20'.*another --workdir"):
        training.prepare(tiny_config(tiny, model="cifar_resnet32"), str(workdir), checkpoint.manager(str(workdir)))


def test_bad_configs_fail_before_compiling(tiny, tmp_path):
    with pytest.raises(training.ConfigError, match="unknown model 'resnet21'"):
        training.prepare(tiny_config(tiny, model="resnet21"), str(tmp_path))
    with pytest.raises(training.ConfigError, match="batch_size 6 is not divisible by the 4 devices"):
        training.prepare(tiny_config(tiny, batch_size=6), str(tmp_path))
    with pytest.raises(data.DataError, match="has no split 'val'"):
        training.prepare(tiny_config(tiny, eval_split="val"), str(tmp_path))
    with pytest.raises(data.DataError, match="not prepared"):
        training.prepare(tiny_config(tiny, dataset="cifar10", data_dir=str(tmp_path)), str(tmp_path))


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_good_checkpoint(tiny, tmp_path):
    reported = []
    for k, every in ((1, 1), (4, 4)):  # one step per call, saving each; 4 per call, saving between loops
        c = tiny_config(tiny, num_train_steps=12, learning_rate=1e12, checkpoint_every_steps=every,
                        log_every_steps=100, eval_every_steps=100, steps_per_loop=k)
        workdir = tmp_path / f"nan{k}"
        with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+; stopping\. (The last good "
                                                     r"checkpoint is step \d+|No checkpoint had been saved)") as e:
            training.train_and_evaluate(c, str(workdir))
        reported.append(e.value.args[0].split(" at step ")[1].split(";")[0])
        for step in checkpoint.manager(str(workdir)).all_steps():
            _, variables, _ = checkpoint.load_checkpoint(str(workdir), step)
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
    assert reported[0] == reported[1]  # the exact step, also from inside a loop


# --------------------------------------------------------------------------------------- processes


def cli(workdir, root, steps, *extra, devices=4, env=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
    return [sys.executable, str(ROOT / "train.py"), f"--config={ROOT}/resnet_jax/configs/cifar10.py:cifar_resnet20",
            f"--workdir={workdir}", f"--config.dataset=folder:{root}", f"--config.num_train_steps={steps}",
            *CLI_OVERRIDES, *extra], env


def final_params(workdir):
    return checkpoint.load_checkpoint(str(workdir))[1]


@pytest.fixture(scope="module")
def reference_run(tiny, tmp_path_factory):
    """An uninterrupted 16-step run (checkpoint every 2 steps), the baseline for the process tests, trained once
    per test session (each xdist worker's ``tiny`` holds the same bytes)."""

    def make(workdir: Path) -> None:
        cmd, env = cli(workdir, tiny, 16, "--config.checkpoint_every_steps=2", "--config.eval_every_steps=8")
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)

    workdir = once_per_session(tmp_path_factory, "reference-run", make)
    return final_params(workdir)


def wait_for_checkpoint(workdir, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        ckpts = workdir / "checkpoints"
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_kill_9_and_resume_is_bitwise_identical(tiny, tmp_path, reference_run):
    workdir = tmp_path / "killed"
    cmd, env = cli(workdir, tiny, 16, "--config.checkpoint_every_steps=2", "--config.eval_every_steps=8")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(workdir, proc)
    time.sleep(0.3)  # somewhere in the middle of training (or of a save)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), reference_run)


STOPS = 8


@pytest.mark.slow
def test_stops_at_random_moments_end_as_stops_and_lose_nothing(tiny, tmp_path, reference_run):
    """SIGTERM or kill -9 at random moments (start-up, compile, training, evaluation, an asynchronous save), and a
    rerun after each: every SIGTERM exits 143 without a traceback or a fatal error, the finished run's variables
    are bitwise those of the run left alone, and metrics.jsonl holds each logged step once."""
    import random

    workdir = tmp_path / "stopped"
    cmd, env = cli(workdir, tiny, 16, "--config.checkpoint_every_steps=2", "--config.eval_every_steps=8")
    rng = random.Random(0)
    for i in range(STOPS):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 12.0))  # imports take ~5 s; then data, compile, 16 steps, evaluations, saves
        sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            continue  # it had finished: the next start trains nothing and the stops hit its start-up
        expected = 143 if sig == signal.SIGTERM else -signal.SIGKILL
        assert proc.returncode == expected, f"stop {i} ({sig.name}): exit {proc.returncode}\n{err[-3000:]}"
        if sig == signal.SIGTERM:
            assert "Traceback" not in err + out and "Fatal" not in err + out, f"stop {i}:\n{err[-3000:]}"
            assert out.strip().splitlines()[-1].startswith("received SIGTERM"), out[-1000:]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), reference_run)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(2, 17, 2))
    assert [r["step"] for r in rows if "eval_top1_error" in r] == [8, 16]


def test_a_resumed_run_forgets_the_rows_logged_after_its_checkpoint(tmp_path):
    """kill -9 between a log row and the next checkpoint: the rerun from that checkpoint replaces the rows after
    it instead of repeating them; a line cut short by the kill goes too."""
    from resnet_jax import logger

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in (2, 4, 6)) + '{"step": 8, "tr')
    logger.keep_rows_through(str(path), 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
    logger.keep_rows_through(str(path), 4)  # nothing to drop: untouched
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]


def test_tensorboard_scalars_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports PyTorch wherever it is installed, 3-4 s of every run's start; the run's writer
    leaves it out, and its event file holds the scalars (read back as TFRecords of ``Event`` protos)."""
    import importlib.util
    import struct

    from tensorboardX.proto import event_pb2

    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed: nothing to leave out")
    code = ("import sys; from resnet_jax import logger; w = logger.summary_writer(sys.argv[1]); "
            "w.add_scalar('train_loss', 1.5, 3); w.close(); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["False"], done.stderr[-2000:]
    [events] = tmp_path.glob("events.out.tfevents.*")
    raw, scalars = events.read_bytes(), []
    while raw:  # TFRecord: length, its CRC, the record, its CRC
        (n,) = struct.unpack("<Q", raw[:8])
        event = event_pb2.Event.FromString(raw[12:12 + n])
        scalars += [(v.tag, v.simple_value, event.step) for v in event.summary.value]
        raw = raw[12 + n + 4:]
    assert scalars == [("train_loss", 1.5, 3)]


@pytest.mark.slow
def test_steps_per_loop_trains_bitwise_like_single_steps(tiny, tmp_path, reference_run):
    workdir = tmp_path / "looped"  # 4 steps per call; logs every 4 steps, checkpoints every 8
    cmd, env = cli(workdir, tiny, 16, "--config.steps_per_loop=4", "--config.log_every_steps=4",
                   "--config.checkpoint_every_steps=8", "--config.eval_every_steps=8")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), reference_run)


def test_loops_stop_at_every_step_that_logs_evaluates_checkpoints_or_profiles():
    c = cifar10.get_config("cifar_resnet20")
    c.update(dict(num_train_steps=23, log_every_steps=5, eval_every_steps=10, checkpoint_every_steps=20,
                  steps_per_loop=4, profile_steps="12:14"))
    assert list(training.loop_lengths(c, 0)) == [4, 1, 4, 1, 2, 2, 1, 4, 1, 3]
    assert list(training.loop_lengths(c, 21)) == [2]
    c.update(dict(steps_per_loop=1))
    assert list(training.loop_lengths(c, 0)) == [1] * 23


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_and_exit_with_a_distinct_code(tiny, tmp_path, sig, code):
    workdir = tmp_path / "preempted"
    cmd, env = cli(workdir, tiny, 100_000, "--config.checkpoint_every_steps=4", "--config.eval_every_steps=100000")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(workdir, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"received {sig.name}: saved step ") and line.endswith(", exiting")
    saved = int(line.split("saved step ")[1].split(",")[0])
    assert checkpoint.manager(str(workdir)).latest_step() == saved


@pytest.mark.slow
def test_a_stop_signal_saves_the_step_it_arrived_in(tiny, tmp_path):
    """The host runs at most MAX_CALLS_IN_FLIGHT calls ahead of the device, and the step during which the
    signal arrives is the one saved: the save cannot lag the signal by more than that."""
    sent = {}

    def on_step(step):
        if step == 5:
            sent["step"] = step
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(training.Preempted, match="received SIGTERM: saved step 5, exiting") as e:
        training.train_and_evaluate(tiny_config(tiny, num_train_steps=50, checkpoint_every_steps=100,
                                                 eval_every_steps=100), str(tmp_path / "run"), on_step=on_step)
    assert e.value.exit_code == 143 and sent == {"step": 5}
    assert checkpoint.manager(str(tmp_path / "run")).all_steps() == [5]
    assert training.MAX_CALLS_IN_FLIGHT <= 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tiny, tmp_path):
    """Same global batch, same 4 devices' BN groups: the same training up to float reduction order. (Over many
    steps tiny-batch BN training amplifies those last-bit differences, so a few steps are compared.)"""
    flags = ("--config.checkpoint_every_steps=4", "--config.eval_every_steps=4", "--config.log_every_steps=1")
    one = tmp_path / "one"
    cmd, env = cli(one, tiny, 4, *flags)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    two = tmp_path / "two"
    port = free_port()
    procs = []
    for pid in (0, 1):
        cmd, env = cli(two, tiny, 4, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={pid}", devices=2)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]

    def losses(run):
        return [e["train_loss"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "train_loss" in e]

    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3), final_params(two),
                 final_params(one))


# ------------------------------------------------------------------------------------------ on-device data


def test_on_device_batches_are_padded_crops_of_an_epoch_permutation():
    mesh = training.make_mesh()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12, dtype=np.int32)
    put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))  # noqa: E731
    dataset = training.OnDeviceData(put(images), put(labels), batch_size=4, seed=3)
    draw = jax.jit(dataset.draw)
    epoch = [draw(dataset.arrays, jnp.int32(s)) for s in range(3)]
    seen = np.concatenate([np.asarray(b["label"]) for b in epoch])
    assert sorted(seen) == list(range(12))  # one epoch visits every example once
    next_epoch = np.concatenate([np.asarray(draw(dataset.arrays, jnp.int32(s))["label"]) for s in range(3, 6)])
    assert sorted(next_epoch) == list(range(12)) and not np.array_equal(seen, next_epoch)
    again = draw(dataset.arrays, jnp.int32(1))  # a pure function of the step: resumable
    np.testing.assert_array_equal(again["image"], epoch[1]["image"])
    for b in epoch:
        for image, label in zip(np.asarray(b["image"]), np.asarray(b["label"])):
            padded = np.pad(images[label], ((4, 4), (4, 4), (0, 0)))
            crops = [padded[y:y + 8, x:x + 8] for y in range(9) for x in range(9)]
            assert any(np.array_equal(image, c) or np.array_equal(image, c[:, ::-1]) for c in crops)


def test_on_device_training_runs_and_resumes(tiny, tmp_path):
    c = tiny_config(tiny, on_device_data=True, num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4)
    first = training.train_and_evaluate(c, str(tmp_path / "a"))
    assert first["step"] == 4 and np.isfinite(first["train_loss"])
    with pytest.raises(training.ConfigError, match=r"test holds 16x16 images, but image_size is 8"):
        training.train_and_evaluate(tiny_config(tiny, on_device_data=True, image_size=8, train_split="test"),
                                     str(tmp_path / "c"))
    with pytest.raises(training.ConfigError, match="on_device_data augments with the cifar and imagenet presets, not "
                                                   "'inception'; set train_preset"):
        training.prepare(tiny_config(tiny, on_device_data=True, train_preset="inception"), str(tmp_path / "b"))
    # Sec. 3.4's preset: the device scale-augments, and the evaluation sees the center view (central 14 of 16 px,
    # enlarged), made once on the host with the pixels of the host's evaluation
    c = tiny_config(tiny, on_device_data=True, train_preset="imagenet", eval_preset="center", num_train_steps=2,
                    eval_every_steps=2, checkpoint_every_steps=2)
    run = training.prepare(c, str(tmp_path / "d"))
    views = list(data.eval_batches(run.eval_source, 8, "center", 16, process_index=0, process_count=1))
    mask = np.concatenate([b["mask"] for b in views])
    np.testing.assert_array_equal(run.arrays["eval"][0], np.concatenate([b["image"] for b in views])[mask])
    assert not np.array_equal(run.arrays["eval"][0], data.load_arrays(run.eval_source)[0])
    assert np.isfinite(training.train_and_evaluate(c, str(tmp_path / "d"))["eval_top1_error"])


def test_on_device_scale_augmentation_zooms_shifts_colours_and_flips_as_sec_3_4():
    """The imagenet preset on the device: each image a window of 64 / s of its stored 64 pixels, s ~ U[73, 137]
    (256-480 scaled to a 64 crop), enlarged to 64 (a horizontal ramp's slope falls to 0.47-0.88 of its own), one
    PCA colour shift per image, flipped half the time; a pure function of the step."""
    mesh = training.make_mesh()
    ramp = np.broadcast_to((np.arange(64) * 4)[None, :, None], (64, 64, 3)).astype(np.uint8)
    put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))  # noqa: E731
    dataset = training.OnDeviceData(put(np.stack([ramp] * 64)), put(np.arange(64, dtype=np.int32)), batch_size=64,
                                    seed=0, preset="imagenet", image_size=64)
    draw = jax.jit(dataset.draw)
    batch = np.asarray(draw(dataset.arrays, jnp.int32(0))["image"])
    assert batch.dtype == np.uint8 and batch.shape == (64, 64, 64, 3)
    np.testing.assert_array_equal(batch, np.asarray(draw(dataset.arrays, jnp.int32(0))["image"]))
    assert not np.array_equal(batch, np.asarray(draw(dataset.arrays, jnp.int32(1))["image"]))
    rows = batch[:, 32, 4:60, 0].astype(np.float64)
    slopes = np.array([np.polyfit(np.arange(rows.shape[1]), r, 1)[0] for r in rows]) / 4
    assert np.all((np.abs(slopes) > 0.44) & (np.abs(slopes) < 0.9)), np.sort(np.abs(slopes))
    assert np.abs(slopes).min() < 0.55 and np.abs(slopes).max() > 0.8  # the whole range of scales is drawn
    assert 15 < (slopes < 0).sum() < 49  # flipped about half the time
    grey = training.OnDeviceData(put(np.full((64, 64, 64, 3), 128, np.uint8)), dataset.labels, 64, 0, "imagenet", 64)
    shifted = np.asarray(grey.draw(grey.arrays, jnp.int32(0))["image"]).astype(np.float64)
    assert shifted.std(axis=(1, 2)).max() == 0  # one shift per image, no border effects
    offsets = shifted[:, 0, 0] - 128
    assert 2 < offsets.std() < 12 and np.abs(offsets).max() > 3  # alpha ~ N(0, 0.1) on ImageNet's eigenvalues
    other = training.on_device_data(np.zeros((8, 80, 96, 3), np.uint8), np.zeros(8, np.int32), 8, 0, mesh,
                                    "imagenet", 32)  # any stored size, drawn at image_size
    assert other.draw(other.arrays, jnp.int32(0))["image"].shape == (8, 32, 32, 3)


@pytest.mark.slow
def test_on_device_loops_draw_each_steps_batch_like_single_steps():
    model = small_model()
    c = tiny_config("unused")
    schedule = training.learning_rate_schedule(c, 10)
    tx = training.make_optimizer(c, schedule)
    mesh = training.make_mesh()
    rng = np.random.default_rng(0)
    dataset = training.on_device_data(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
                                       rng.integers(0, 3, 40).astype(np.int32), 8, 0, mesh)
    args = (model, tx, mesh, 0.0, 255.0, 3, 0.0, schedule, dataset)
    single = training.create_train_state(model, tx, 8, 0, mesh)
    step, losses = training.make_train_step(*args), []
    for _ in range(7):  # across an epoch boundary (5 steps per epoch)
        single, metrics = step(single, dataset.arrays)
        losses.append(float(metrics["loss"]))
    looped = training.create_train_state(model, tx, 8, 0, mesh)
    loop = training.make_train_loop(*args, steps_per_loop=4)
    looped, first = loop(looped, dataset.arrays, 4)
    looped, rest = loop(looped, dataset.arrays, 3)
    assert [float(x) for x in [*first["loss"], *rest["loss"][:3]]] == losses and int(looped.step) == 7
    jax.tree.map(np.testing.assert_array_equal, looped.params, single.params)


@pytest.mark.slow
def test_synthetic_data_trains_on_the_device_without_a_dataset(tmp_path):
    source = data.get_source("synthetic:5", "train", image_size=8)
    assert source.num_examples == 8192 and source.arrays[0].shape == (8192, 8, 8, 3) and len(source.class_names) == 5
    np.testing.assert_array_equal(source.arrays[0], data.get_source("synthetic:5", "train", image_size=8).arrays[0])
    assert source.arrays[1].max() == 4
    c = tiny_config("unused", dataset="synthetic:5", image_size=8, train_split="train", eval_split="test",
                    num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, eval_batch_size=512)
    with pytest.raises(training.ConfigError, match="synthetic data is generated in memory for on_device_data"):
        training.prepare(c, str(tmp_path / "host"))
    c.on_device_data = True
    result = training.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 2 and np.isfinite(result["eval_top1_error"])
    with pytest.raises(data.DataError, match="synthetic data has no split 'val'"):
        data.get_source("synthetic", "val")


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_a_run_prints_no_tensorflow_or_absl_start_up_lines_unless_verbose(tiny, tmp_path, verbose):
    cmd, env = cli(tmp_path / "run", tiny, 2, "--config.eval_every_steps=2", devices=1,
                   env={"RESNET_JAX_VERBOSE": "1" if verbose else ""})
    env = {k: v for k, v in env.items() if not k.startswith("TF_")}  # conftest quiets TensorFlow for the suite
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert bool(chatter(done.stderr)) == (verbose and libraries_chatter(env)), done.stderr[-3000:]


def chatter(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "oneDNN custom operations" in line
            or "absl::InitializeLog" in line or "cpu_feature_guard" in line]


def libraries_chatter(env: dict) -> bool:
    """Whether JAX then TensorFlow, imported in that order (as a run does) in a plain process, print their start-up
    lines on this machine: which lines TensorFlow prints depends on the CPU, and after JAX has set up absl's C++
    logging some CPUs get none. Verbose runs must show whatever the libraries print."""
    done = subprocess.run([sys.executable, "-c", "import jax, tensorflow"], env=env, capture_output=True, text=True,
                          timeout=300)
    return bool(chatter(done.stderr))


@pytest.mark.slow
def test_cifar_folders_train_and_evaluate_without_tensorflow(tiny, tmp_path):
    # GPU images often lack TensorFlow: CIFAR training on image folders (on the device or through the host
    # pipeline) and its evaluation must not import it
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    for name in ("tensorflow", "tensorflow_datasets"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    blocked = {"PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    for run, on_device in (("host", False), ("run", True)):
        cmd, env = cli(tmp_path / run, tiny, 4, f"--config.on_device_data={on_device}",
                       "--config.eval_every_steps=4", devices=2, env=blocked)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"--workdir={tmp_path / 'run'}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top-1" in done.stdout.lower() or "top1" in done.stdout.lower(), done.stdout
    image = next((tiny / "test").glob("*/*"))
    done = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"--workdir={tmp_path / 'run'}",
                           "--images", str(image)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and str(image) in done.stdout, done.stderr[-3000:]


def tiny_cifar_studies(monkeypatch):
    """The CIFAR studies (degradation, responses) with their recipe, on tiny 16x16 images."""
    from resnet_jax import reproduce

    real = reproduce.degradation.degradation_config

    def small(model, args):
        c = real(model, args)
        c.update(dict(image_size=16, batch_size=8, eval_batch_size=8, log_every_steps=1))
        return c

    monkeypatch.setattr(reproduce.degradation, "degradation_config", small)


@pytest.mark.slow
def test_degradation_study_trains_resumes_and_reports(tiny, tmp_path, monkeypatch):
    from resnet_jax import reproduce

    tiny_cifar_studies(monkeypatch)
    args = ["degradation", f"--dataset=folder:{tiny}", "--steps=4", f"--workdir={tmp_path}",
            "--models=cifar_plain20,cifar_resnet20"]
    reproduce.main(args)
    table = (tmp_path / "degradation.md").read_text()
    assert "| cifar_plain20 | 20 |" in table and "| cifar_resnet20 | 20 |" in table
    assert (tmp_path / "degradation.png").stat().st_size > 5000
    mtime = (tmp_path / "cifar_plain20" / "metrics.jsonl").stat().st_mtime
    reproduce.main(args)  # finished models are skipped
    assert (tmp_path / "cifar_plain20" / "metrics.jsonl").stat().st_mtime == mtime


@pytest.mark.slow
def test_profile_steps_write_a_trace(tiny, tmp_path):
    workdir = tmp_path / "run"
    training.train_and_evaluate(tiny_config(tiny, num_train_steps=4, profile_steps="1:3"), str(workdir))
    files = [p for p in (workdir / "profile").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".xplane.pb") for p in files)  # TensorBoard's profile plugin
    assert any(p.name.endswith(".trace.json.gz") for p in files)  # Perfetto (ui.perfetto.dev)
    with pytest.raises(training.ConfigError, match="profile_steps must be START:STOP"):
        training.prepare(tiny_config(tiny, profile_steps="10"), str(tmp_path))


# ------------------------------------------------------------------------------------------- fine-tuning


@pytest.mark.slow
def test_fine_tuning_a_linear_probe_from_another_run(tiny, tmp_path, caplog):
    """A 10-class CIFAR net (the shape of the shared ResNet-20) fine-tuned on the 3-class folder with its backbone
    frozen: new classifier, backbone parameters and BN statistics untouched, a checkpoint of 3 classes; a rerun
    resumes the new run rather than starting again from init_from."""
    from tests.test_evaluate import save_run

    source = tmp_path / "pretrained"
    _, pretrained = save_run(source, name="cifar_resnet20", image_size=16, eval_preset="cifar", num_classes=10)
    workdir = tmp_path / "probe"
    c = tiny_config(tiny, num_train_steps=4, init_from=f"{source}:7", freeze="backbone", head_lr_multiplier=10.0,
                    learning_rate=0.001, eval_every_steps=4, checkpoint_every_steps=2)
    with caplog.at_level(logging.INFO, logger="resnet_jax"):
        training.train_and_evaluate(c, str(workdir))
    assert "the classifier fc is re-initialised for 3 classes (the checkpoint has 10)" in caplog.text
    _, tuned, info = checkpoint.load_checkpoint(str(workdir))
    assert info["num_classes"] == 3 and info["class_names"] == ["ant", "bee", "cat"] and info["step"] == 4
    assert info["init_from"] == f"{source}:7"
    assert info["preprocessing"]["mean"] == [120.0, 110.0, 100.0]  # the pre-trained network's normalisation
    for collection in ("params", "batch_stats"):
        for part in set(pretrained[collection]) - {"fc"}:
            jax.tree.map(np.testing.assert_array_equal, tuned[collection][part], pretrained[collection][part])
    assert tuned["params"]["fc"]["kernel"].shape == (64, 3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnet_jax"):  # a rerun resumes its own checkpoint
        assert training.train_and_evaluate(dict_update(c, num_train_steps=6), str(workdir))["step"] == 6
    assert "resumed from step 4" in caplog.text and "initialising from" not in caplog.text


def dict_update(config, **changes):
    config = config.copy_and_resolve_references()
    config.update(changes)
    return config


def test_freezing_and_the_head_multiplier_shape_the_updates():
    c = cifar10.get_config()
    c.head_lr_multiplier = 10.0
    params = {"conv1": {"kernel": jnp.ones(2)}, "stage1": {"w": jnp.ones(2)}, "fc": {"kernel": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    plain = training.make_optimizer(cifar10.get_config(), lambda s: 0.1)
    tx = training.make_optimizer(c, lambda s: 0.1, frozen=("stem",))
    base, _ = plain.update(grads, plain.init(params), params)
    got, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(got["conv1"]["kernel"], 0.0)  # frozen: no update, no decay
    np.testing.assert_allclose(got["stage1"]["w"], base["stage1"]["w"])
    np.testing.assert_allclose(got["fc"]["kernel"], 10 * base["fc"]["kernel"], rtol=1e-6)
    with pytest.raises(training.ConfigError, match=r"freeze: unknown part\(s\) \['stage9'\]"):
        training.frozen_parts(dict_update(c, freeze="stem,stage9"), models.create_model("cifar_resnet20"))


def test_the_optimizer_takes_the_plain_defaults_the_benchmarks_use():
    from types import SimpleNamespace

    from resnet_jax.configs import default

    tx = training.make_optimizer(SimpleNamespace(**default.fields()), lambda s: 0.1)
    assert tx.init({"w": jnp.ones(2)}) is not None
