"""Runs whose workdir is a gs:// bucket, against a real local GCS server (tests/gcs_server.py) over real HTTP:
training, checkpoints, metrics, curves and TensorBoard in the bucket; resuming; kill -9 in the middle of a save;
evaluate.py and Classifier.from_checkpoint on the bucket run; the run lock as a lease object; and a missing
bucket, missing credentials or an s3:// workdir refused in one line with nothing written locally."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import jax
import numpy as np
import pytest

from resnet_jax import checkpoint, storage, training
from tests.test_train import ROOT, cli, final_params, free_port

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")
BUCKET = "runs-bucket"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The server, and this process pointed at it (the variables docs/training.md names for an emulator)."""
    port = free_port()
    log = tmp_path_factory.mktemp("gcs") / "server.log"
    with open(log, "w") as out:  # a file, not a pipe: a pipe nobody reads would fill and stall the server
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gcs_server.py"), str(port), BUCKET],
                                  stdout=out, stderr=subprocess.STDOUT)
    env = {"STORAGE_EMULATOR_HOST": f"http://localhost:{port}", "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{port}",
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        for _ in range(300):
            if "listening" in log.read_text() or server.poll() is not None:
                break
            time.sleep(0.1)
        assert "listening" in log.read_text(), log.read_text()
        os.environ.update(env)
        yield env
    finally:
        server.kill()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fresh_url(name: str) -> str:
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}/{name}"


def objects(url: str) -> list[str]:
    fs = storage.filesystem(url)
    prefix = url[len("gs://"):]
    return sorted(p[len(prefix) + 1:] for p in fs.find(prefix)) if fs.exists(prefix) else []


def run_cli(workdir, tiny, steps, gcs, *flags, cwd=None, devices=1):
    cmd, env = cli(workdir, tiny, steps, *flags, devices=devices, env=gcs)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.test_train import make_folder

    return make_folder(tmp_path_factory.mktemp("tiny"))


def test_paths_and_whole_writes_in_a_bucket(gcs):
    url = fresh_url("files")
    assert storage.resolve(url + "/") == url and not storage.isdir(url)
    storage.write_text(storage.join(url, "a.txt"), "one\n")
    storage.append_text(storage.join(url, "a.txt"), "two\n")
    assert storage.read_text(storage.join(url, "a.txt")) == "one\ntwo\n" and storage.isdir(url)
    assert storage.listdir(url) == ["a.txt"]
    storage.move(storage.join(url, "a.txt"), storage.join(url, "b.txt"))
    assert objects(url) == ["b.txt"]
    storage.remove(url)
    assert objects(url) == []
    for bad, message in [("ftp://host/x", "ftp:// is not supported"), ("gs:///x", "names no bucket")]:
        with pytest.raises(storage.StorageError, match=message):
            storage.resolve(bad)
    with pytest.raises(storage.StorageError, match=r"checkpoints cannot be kept in s3://"):
        storage.for_checkpoints("s3://b/run")


def test_a_run_in_a_bucket_on_images_in_a_bucket_trains_resumes_and_is_evaluated_there(gcs, tiny, tmp_path):
    images = fresh_url("images")
    storage.filesystem(images).put(f"{tiny}/", images, recursive=True)
    workdir = fresh_url("run")
    flags = ("--config.checkpoint_every_steps=3", "--config.eval_every_steps=3")
    done = run_cli(workdir, images, 6, gcs, *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    names = objects(workdir)
    assert {"metrics.jsonl", "curves.png", "checkpoints/3/commit_success.txt",
            "checkpoints/6/commit_success.txt"} <= set(names), names
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names) and "run.lock" not in names
    assert list(tmp_path.iterdir()) == []  # no local stand-in (./gs:/...) in the working directory

    done = run_cli(workdir, images, 9, gcs, *flags, cwd=tmp_path)
    assert done.returncode == 0 and "resumed from step 6" in done.stderr, done.stderr[-3000:]
    rows = [json.loads(line) for line in storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines()]
    train_steps = [r["step"] for r in rows if "train_loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 9

    out = storage.join(workdir, "evaluation-test.json")
    evaluated = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"--workdir={workdir}", f"--output={out}"],
                               env=dict(os.environ, **gcs), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(storage.read_text(out))
    assert result["step"] == 9 and result["num_examples"] == 15 and result["dataset"] == f"folder:{images}"

    from resnet_jax import Classifier

    clf = Classifier.from_checkpoint(workdir)
    pictures = [storage.join(images, "test", "bee", f"{i}.png") for i in range(2)]
    assert clf.info["step"] == 9 and clf.predict(pictures).shape == (2, 3)
    assert list(tmp_path.iterdir()) == []


def partial_step(url: str) -> int | None:
    """A step whose save has begun but not committed (Orbax marks a finished step with commit_success.txt)."""
    names = objects(storage.join(url, "checkpoints"))
    started = {n.split("/")[0] for n in names if n.split("/")[0].isdigit()}
    done = {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/commit_success.txt")}
    return min((int(s) for s in started - done), default=None)


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_save_to_a_bucket_resumes_bitwise(gcs, tiny, tmp_path):
    """Killed while a step's objects are being written; the rerun resumes from the last committed step and ends
    bitwise where an uninterrupted run ends."""
    flags = ("--config.checkpoint_every_steps=2", "--config.eval_every_steps=8")
    reference = tmp_path / "reference"
    cmd, env = cli(reference, tiny, 12, *flags, devices=1)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = fresh_url("killed")
    cmd, env = cli(workdir, tiny, 12, *flags, devices=1, env=gcs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    killed_at = None
    while proc.poll() is None and killed_at is None:
        time.sleep(0.05)  # a save writes dozens of objects; polling without a pause would starve the run
        killed_at = partial_step(workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_at is not None, "the run ended before a save was caught in flight"
    assert partial_step(workdir) == killed_at  # the step's objects are half there
    done = run_cli(workdir, tiny, 12, gcs, *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {killed_at - 2}" in done.stderr or killed_at == 2, done.stderr[-3000:]
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference))
    assert partial_step(workdir) is None


def test_a_missing_bucket_missing_credentials_or_an_s3_workdir_is_one_line_and_nothing_is_written(gcs, tiny,
                                                                                                   tmp_path):
    cases = [
        ("gs://no-such-bucket/run", gcs, r"error: cannot write the workdir gs://no-such-bucket/run: the bucket "
                                         r"gs://no-such-bucket does not exist \(create it first; runs never create "
                                         r"buckets\)"),
        ("s3://some-bucket/run", gcs, r"error: workdir s3://some-bucket/run: checkpoints cannot be kept in s3:// "
                                      r"\(Orbax 0.12 writes local paths and gs:// only\); use a gs:// bucket or a "
                                      r"local path"),
        (f"gs://{BUCKET}/no-credentials", {"NO_GCE_CHECK": "True", "HOME": str(tmp_path / "home"),
                                           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")},
         rf"error: cannot write the workdir gs://{BUCKET}/no-credentials: no Google Cloud credentials were found .*"),
    ]
    for workdir, env, message in cases:
        cmd, full_env = cli(workdir, tiny, 2, devices=1, env=env)
        if env is not gcs:  # a real GCS endpoint and no credentials for it
            for key in list(gcs) + ["GOOGLE_APPLICATION_CREDENTIALS"]:
                full_env.pop(key, None)
        done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 1, done.stderr[-3000:]
        assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr[-3000:]
        assert re.fullmatch(message, done.stderr.strip()), done.stderr
        assert [p for p in tmp_path.iterdir() if p.name not in ("home", "gcloud")] == []
    assert objects(f"gs://{BUCKET}/no-credentials") == []
    evaluated = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--workdir=gs://no-such-bucket/run"],
                               env=dict(os.environ, **gcs), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert evaluated.returncode == 1 and evaluated.stderr.strip() == (
        "error: no checkpoints in gs://no-such-bucket/run/checkpoints (the bucket gs://no-such-bucket does not "
        "exist)"), evaluated.stderr[-3000:]


def test_the_bucket_lease_admits_one_run_and_is_taken_over_from_a_gone_one(gcs, caplog):
    workdir = fresh_url("leased")
    lock_url = storage.join(workdir, "run.lock")
    # eight starts at the same moment: the generation preconditions let exactly one of them take the lease
    barrier, won, refused = threading.Barrier(8), [], []

    def start():
        lease = training.BucketLease(workdir)
        barrier.wait()
        try:
            won.append(lease.acquire())
        except training.WorkdirLocked as e:
            refused.append(str(e))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7, refused
    assert all(f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in r
               or "was taken by another run at the same moment" in r for r in refused), refused
    holder = json.loads(storage.read_text(lock_url))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    won[0].release()
    assert not storage.exists(lock_url)

    stale = {"host": "gone-host", "pid": 4242, "started": 0, "renewed": time.time() - 2 * training.LEASE_SECONDS}
    storage.write_text(lock_url, json.dumps(stale))  # a run on another machine, lost without releasing
    with caplog.at_level(logging.WARNING):
        lease = training.BucketLease(workdir).acquire()
    assert "from a run that is gone (pid 4242 on gone-host" in caplog.text
    lease.release()
    live = dict(stale, renewed=time.time())  # a live run on another machine
    storage.write_text(lock_url, json.dumps(live))
    with pytest.raises(training.WorkdirLocked, match=r"is in use by another run \(pid 4242 on gone-host, .*lease "
                                                     r"renewed \d+ s ago"):
        training.BucketLease(workdir).acquire()


def test_a_checkpoint_url_resolves_without_a_local_stand_in(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkpoint.checkpoint_dir("gs://b/x/") == "gs://b/x/checkpoints"
    assert checkpoint.checkpoint_dir("run") == str(tmp_path / "run" / "checkpoints")


def test_a_tfds_dataset_in_a_bucket_is_found_and_described_there(gcs, tmp_path_factory, tmp_path, monkeypatch):
    """``--config.data_dir=gs://...``: TFDS finds the prepared dataset in the bucket (through etils.epath and
    gcsfs) with its splits and classes, and nothing is written locally. Its records are then read by TensorFlow's
    own GCS client, which has no endpoint setting, so that part is not reachable from a local server (the test
    shows that it asks storage.googleapis.com, not a local path)."""
    pytest.importorskip("tensorflow_datasets")
    from resnet_jax import data
    from tests.test_data import TinyImages

    local = str(tmp_path_factory.mktemp("tfds"))
    TinyImages(data_dir=local).download_and_prepare()
    bucket_dir = fresh_url("tfds")
    storage.filesystem(bucket_dir).put(f"{local}/", bucket_dir, recursive=True)
    monkeypatch.chdir(tmp_path)
    here, there = (data.get_source("tiny_images", "test", data_dir=d) for d in (local, bucket_dir))
    assert (there.num_examples, there.class_names) == (here.num_examples, here.class_names) == (7, ["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("GCS_RETRY_CONFIG_MAX_RETRIES", "0")  # TensorFlow's client: fail at once, not after retries
    with pytest.raises(Exception, match=rf"storage.googleapis.com.*\n?.*{bucket_dir}/tiny_images/1.0.0"):
        next(data.eval_batches(there, 4, "cifar", 32, process_index=0, process_count=1))
