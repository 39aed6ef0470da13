"""Checkpoint retention, step resolution and the compatibility of old runs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import evaluate
from resnet_jax import checkpoint, models, training
from resnet_jax.configs import cifar10


def test_keeps_the_last_few_plus_the_best(tmp_path):
    mngr = checkpoint.manager(str(tmp_path), keep=2, async_save=False)
    variables = {"params": {"w": np.zeros(3, np.float32)}}
    for step, error in zip(range(1, 6), [50.0, 10.0, 40.0, 30.0, 20.0]):
        checkpoint.save(mngr, step, variables, {"model": "x"}, metrics={"eval_top1_error": error})
    mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 4, 5]
    assert checkpoint.best_step(mngr) == 2
    assert checkpoint.resolve_step(mngr, "best", str(tmp_path)) == 2
    assert checkpoint.resolve_step(mngr, "latest", str(tmp_path)) == 5
    assert checkpoint.read_meta(mngr, 4)["model"] == "x"
    mngr.close()


FIXTURE = Path(__file__).parent / "fixtures" / "format1_run"


def test_a_format_1_run_from_0_1_0_still_evaluates_and_resumes(tmp_path):
    """The committed run (tests/fixtures/format1_run/README.md) is read, evaluated and trained on by today's
    code: a change that breaks reading old runs fails here."""
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE, workdir, ignore=shutil.ignore_patterns("README.md"))
    model, variables, info = checkpoint.load_checkpoint(str(workdir))
    assert (info["format"], info["step"], info["model"]) == (1, 4, "cifar_resnet20")
    assert (model.stage_sizes, model.widths) == ((1, 1, 1), (4, 8, 16))
    assert models.count_params(variables["params"]) == 5006

    out = tmp_path / "eval.json"
    assert evaluate.main([f"--workdir={workdir}", "--batch_size=64", f"--output={out}"]) == 0
    result = json.loads(out.read_text())
    assert result["num_examples"] == 1024  # synthetic:10's test split, as the run measured it at step 4
    assert result["top1_error"] == pytest.approx(88.96484375)
    assert result["top5_error"] == pytest.approx(51.171875)

    config = cifar10.get_config("cifar_resnet20")
    config.update(dict(dataset="synthetic:10", on_device_data=True, image_size=8, train_split="train",
                       eval_split="test", stage_sizes=(1, 1, 1), widths=(4, 8, 16), batch_size=16,
                       num_train_steps=6, eval_every_steps=6, checkpoint_every_steps=6, log_every_steps=2,
                       eval_batch_size=64))
    training.train_and_evaluate(config, str(workdir))
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train_loss" in r] == [6]  # steps 5-6 only: it resumed, not restarted
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6]
