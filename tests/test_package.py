"""The package outside the checkout: packaged configs, and the wheel installed into a fresh virtual environment
running the commands a user runs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_jax import configs

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_configs_resolve_and_paths_pass_through(tmp_path):
    path, _, model = configs.resolve("cifar10:cifar_resnet20").partition(".py:")
    assert Path(path + ".py").is_file() and model == "cifar_resnet20"
    assert configs.resolve("resnet_jax/configs/cifar10.py:cifar_resnet20") == "resnet_jax/configs/cifar10.py:" \
                                                                             "cifar_resnet20"
    assert configs.resolve_flag(["train", "--config", "imagenet:resnet50", "--workdir=x"])[2].endswith(
        "configs/imagenet.py:resnet50")
    assert configs.resolve_flag(["--config=tiny_imagenet"])[0].endswith("configs/tiny_imagenet.py")


def test_a_folder_named_like_a_config_does_not_shadow_it(tmp_path, monkeypatch):
    """A data set kept as ``cifar10/`` (or a stray file ``imagenet``) beside the command: the packaged name still
    means the packaged config; a config file is named by its ``.py`` path."""
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    (tmp_path / "imagenet").write_text("not a config")
    (tmp_path / "mine.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert configs.resolve("cifar10:cifar_resnet20").endswith("resnet_jax/configs/cifar10.py:cifar_resnet20")
    assert configs.resolve("imagenet").endswith("resnet_jax/configs/imagenet.py")
    assert configs.resolve("mine.py:cifar_resnet20") == "mine.py:cifar_resnet20"


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_trains_evaluates_converts_and_exports(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = dist.glob("deep_residual_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = subprocess.run([str(bin_dir / "pip"), "install", "-q", f"{wheel}[weights]", "-c",
                              str(ROOT / "requirements.txt")], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp_path / "elsewhere"  # outside the checkout: nothing can come from it
    (work / "cifar10").mkdir(parents=True)  # a data set named like the config: it must not shadow the config

    def run(*cmd):
        done = subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
        return done.stdout

    where = run(str(bin_dir / "python"), "-c", "import resnet_jax; print(resnet_jax.__file__)")
    assert where.startswith(str(venv))
    run(str(bin_dir / "python"), "-m", "resnet_jax.train", "--config=cifar10:cifar_resnet20",
        "--config.dataset=synthetic:10", "--config.on_device_data=True", "--config.image_size=8",
        "--config.train_split=train", "--config.eval_split=test", "--config.stage_sizes=(1,1,1)",
        "--config.widths=(4,8,16)", "--config.batch_size=16", "--config.num_train_steps=2",
        "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2", "--config.eval_batch_size=64",
        "--workdir=run")
    out = run(str(bin_dir / "resnet-jax-evaluate"), "--workdir=run", "--batch_size=64")
    assert "whole image (8x8)" in out and "1024" in out
    # a weights file made here from a fresh network, converted and exported there
    from safetensors.numpy import save_file

    from resnet_jax import create_model, models, weights

    variables = models.abstract_variables(create_model("cifar_resnet20"), 32)
    rng = np.random.default_rng(0)
    state = weights.torch_state_from_variables(
        {c: {k: v for k, v in t.items()} for c, t in
         __import__("jax").tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(np.float32), variables).items()},
        "cifar")
    save_file(state, str(work / "r20.safetensors"))
    out = run(str(bin_dir / "resnet-jax-convert"), "--from=torch", "--input=r20.safetensors", "--workdir=r20")
    assert "wrote cifar_resnet20 (10 classes, cifar layout)" in out
    run(str(bin_dir / "resnet-jax-export"), "--workdir=r20", "--format=stablehlo", "--output=r20.jax")
    assert (work / "r20.jax").stat().st_size > 1_000_000
