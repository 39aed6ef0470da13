"""Layer responses (Sec. 4.2, Figure 7): every 3x3 layer's output after BN, before the ReLU or the addition."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data, evaluation, models, responses


def randomised(model, image_size, seed=0):
    """Variables whose BN scales, offsets and running statistics are all far from their initial values, so that a
    response taken at the wrong place (before BN, after the ReLU) cannot pass for the right one."""
    variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.5 * jax.random.normal(k, x.shape) if x.ndim == 1 else x for k, x in zip(keys, leaves)]
    variables = jax.tree.unflatten(tree, leaves)
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])  # variances stay positive
    return variables


def conv(x, kernel, stride=1):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")


def bn(x, params, stats, eps=1e-5):
    return (x - stats["mean"]) / jnp.sqrt(stats["var"] + eps) * params["scale"] + params["bias"]


def test_responses_are_each_3x3_layer_after_bn_before_relu_or_addition():
    """A hand computation of the stem's and the first block's responses of a small CIFAR ResNet, and the names and
    shapes of every 3x3 layer, input to output."""
    model = models.create_model("cifar_resnet20", stage_sizes=(1, 1, 1), widths=(4, 8, 16), conv_impl="xla")
    variables = randomised(model, 8)
    p, s = variables["params"], variables["batch_stats"]
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
    got = responses.layer_responses(model, variables, x)
    assert list(got) == ["conv1", "stage1/block0/conv1", "stage1/block0/conv2", "stage2/block0/conv1",
                         "stage2/block0/conv2", "stage3/block0/conv1", "stage3/block0/conv2"]
    assert [v.shape[1:] for v in got.values()] == [(8, 8, 4)] * 3 + [(4, 4, 8)] * 2 + [(2, 2, 16)] * 2
    stem = bn(conv(x, p["conv1"]["kernel"]), p["bn1"], s["bn1"])
    block, stats = p["stage1"]["block0"], s["stage1"]["block0"]
    r1 = bn(conv(jax.nn.relu(stem), block["conv1"]["kernel"]), block["bn1"], stats["bn1"])
    r2 = bn(conv(jax.nn.relu(r1), block["conv2"]["kernel"]), block["bn2"], stats["bn2"])
    for name, want in (("conv1", stem), ("stage1/block0/conv1", r1), ("stage1/block0/conv2", r2)):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
    assert float(jnp.min(r2)) < 0  # before the ReLU: negative responses are kept
    # the network's output is unchanged, and a plain apply keeps nothing
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x, train=False))
    assert set(model.init(jax.random.key(0), x)) == {"params", "batch_stats"}


@pytest.mark.parametrize("name,options,expected", [
    ("resnet18", dict(stage_sizes=(1, 2), widths=(4, 8), stem_width=4), 6),  # basic blocks: 2 per block, no stem
    ("resnet50", dict(stage_sizes=(1, 2), widths=(4, 8), stem_width=4), 3),  # bottlenecks: the middle 3x3 only
    ("plain34", dict(stage_sizes=(2, 1), widths=(4, 8), stem_width=4, scan=True), 6),
    ("cifar_plain20", dict(stage_sizes=(3, 1, 1), widths=(4, 8, 8), scan=True, remat=True), 11),
])
def test_responses_cover_every_network_scanned_or_rematerialised(name, options, expected):
    """ImageNet nets (7x7 stem left out), bottlenecks, plain nets, scanned and rematerialised stages: one response
    per 3x3 layer, the same values as the unrolled network's."""
    model = models.create_model(name, conv_impl="xla", **options)
    variables = randomised(model, 32)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    got = responses.layer_responses(model, variables, x)
    assert len(got) == expected
    if options.get("scan"):
        unrolled = model.clone(scan=False, remat=False)
        want = responses.layer_responses(unrolled, models.convert_layout(variables, scan=False), x)
        assert list(got) == list(want)
        for k in got:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_response_std_over_a_split_is_numpys_and_ignores_padding():
    """Streamed over padded batches, each layer's std (per channel, then averaged) and pooled std are numpy's on
    the whole split at once."""
    model = models.create_model("cifar_resnet20", stage_sizes=(1, 1, 1), widths=(4, 8, 16), conv_impl="xla")
    variables = randomised(model, 8)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (11, 8, 8, 3), dtype=np.uint8), np.zeros(11, np.int32)
    mean, std = np.float32([120, 115, 100]), np.float32([60, 61, 62])
    batches = list(data.array_batches(images, labels, 4, process_index=0, process_count=1))
    assert len(batches) == 3 and not batches[-1]["mask"].all()  # the last batch is padded
    got = responses.response_std(model, variables, batches, mean, std)
    want = responses.layer_responses(model, variables, data.normalize(jnp.asarray(images), mean, std))
    assert list(got) == list(want)
    for name, y in want.items():
        y = np.asarray(y, np.float64)
        assert got[name]["std"] == pytest.approx(y.std(axis=(0, 1, 2)).mean(), rel=1e-4), name
        assert got[name]["std_pooled"] == pytest.approx(y.std(), rel=1e-4), name
        assert got[name]["channels"] == y.shape[-1]


def test_a_classifier_gives_the_responses_of_images(tmp_path):
    model = models.create_model("cifar_resnet20", stage_sizes=(1, 1, 1), widths=(4, 8, 16), conv_impl="xla")
    variables = randomised(model, 8)
    info = {"model": "cifar_resnet20", "step": 0, "num_classes": 10,
            "preprocessing": {"image_size": 8, "eval_preset": "cifar", "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}}
    clf = evaluation.Classifier(model, variables, info)
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = clf.responses(images)
    want = responses.layer_responses(model, variables, (images - np.float32([1, 2, 3])) / np.float32([4, 5, 6]))
    assert list(got) == list(want)
    np.testing.assert_allclose(got["stage3/block0/conv2"], want["stage3/block0/conv2"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_responses_study_reuses_degradation_runs_trains_the_rest_and_writes_figure_7(tmp_path, monkeypatch):
    """``reproduce responses`` on a toy folder: a finished ``reproduce degradation`` run is reused, the missing nets
    are trained with the same recipe, each net's layer stds are measured on the test split, and the figure, the
    table and both claims are written; a rerun measures nothing again."""
    from resnet_jax import reproduce
    from tests.test_train import make_folder, tiny_cifar_studies

    root = make_folder(tmp_path / "data")
    tiny_cifar_studies(monkeypatch)
    workdir = tmp_path / "runs"
    common = [f"--dataset=folder:{root}", "--steps=4", f"--workdir={workdir}"]
    reproduce.main(["degradation", *common, "--models=cifar_resnet20"])
    reused = (workdir / "cifar_resnet20" / "metrics.jsonl").stat().st_mtime
    reproduce.main(["responses", *common, "--models=cifar_plain20,cifar_resnet20,cifar_resnet32", "--batch_size=4"])
    assert (workdir / "cifar_resnet20" / "metrics.jsonl").stat().st_mtime == reused
    table = (workdir / "responses.md").read_text()
    for row in ("| plain-20 | 19 |", "| ResNet-20 | 19 |", "| ResNet-32 | 31 |"):
        assert row in table, table
    assert "ResNet-20 vs plain-20" in table and "ResNet-32 vs ResNet-20" in table
    assert table.count("holds") + table.count("does not show") == 2
    assert (workdir / "responses.png").stat().st_size > 5000
    kept = json.loads((workdir / "cifar_resnet32" / "responses-test.json").read_text())
    assert kept["step"] == 4 and kept["num_examples"] == 15 and len(kept["layers"]) == 31
    assert all(np.isfinite(v["std"]) and v["std"] > 0 for v in kept["layers"].values())
    assert list(kept["layers"])[:2] == ["conv1", "stage1/block0/conv1"]
    mtimes = {m: (workdir / m / "responses-test.json").stat().st_mtime for m in ("cifar_plain20", "cifar_resnet32")}
    reproduce.main(["responses", *common, "--models=cifar_plain20,cifar_resnet32", "--batch_size=4"])
    assert mtimes == {m: (workdir / m / "responses-test.json").stat().st_mtime for m in mtimes}


def test_the_responses_study_judges_both_claims_from_the_means():
    from resnet_jax.reproduce import responses as study

    lines = study.claims_text({"cifar_plain20": 1.0, "cifar_plain56": 1.2, "cifar_resnet20": 0.8,
                               "cifar_resnet56": 0.9, "cifar_resnet110": 0.5})
    assert len(lines) == 4
    assert "ResNet-20 vs plain-20" in lines[0] and "0.800 vs 1.000: holds" in lines[0]
    assert "ResNet-56 vs plain-56" in lines[1] and "holds" in lines[1]
    assert "ResNet-56 vs ResNet-20" in lines[2] and "0.900 vs 0.800: does not show" in lines[2]
    assert "ResNet-110 vs ResNet-56" in lines[3] and "holds" in lines[3]
