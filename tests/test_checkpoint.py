"""Checkpoint retention and step resolution."""

import numpy as np

from resnet_jax import checkpoint


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
