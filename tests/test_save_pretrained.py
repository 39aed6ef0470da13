"""Weights going out: folders in transformers' and timm's layouts, loaded back by us and by those libraries."""

import json
import tarfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data, evaluation, models, weights
from tests.conftest import shared_file

NAMES = [f"class {i}" for i in range(10)]


def calibrated(model, images):
    """Variables of ``model`` with varied BN scales and offsets and running statistics taken from ``images`` (uint8
    NHWC), so that every layer is well scaled and the logits depend on the image."""
    x = data.normalize(jnp.asarray(images), jnp.float32(data.IMAGENET_MEAN), jnp.float32(data.IMAGENET_STD))
    variables = model.init(jax.random.key(0), x[:1])
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x * jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
              + (0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else 0) for k, x in zip(keys, leaves)]
    params = jax.tree.unflatten(tree, leaves)
    _, stats = model.clone(bn_momentum=0.0).apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                                  train=True, mutable=["batch_stats"])
    return {"params": params, "batch_stats": stats["batch_stats"]}


def classifier(name, images, size, **options):
    model = models.create_model(name, num_classes=len(NAMES), **options)
    info = {"model": name, "model_options": options, "step": 7, "num_classes": len(NAMES), "class_names": NAMES,
            "preprocessing": {"image_size": size, "eval_preset": "center", "mean": list(data.IMAGENET_MEAN),
                              "std": list(data.IMAGENET_STD)}}
    return evaluation.Classifier(model, calibrated(model, images), info)


def random_images(n=4, size=64):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,options,layout,why", [
    ("plain18", {}, "transformers", "plain networks have no shortcuts"),
    ("resnet18", {"shortcut": "A"}, "transformers", "option-A shortcuts (zero-padding (A))"),
    ("resnet18", {"shortcut": "C"}, "timm", "option-C shortcuts (projections on every shortcut (C))"),
    ("cifar_resnet20", {}, "transformers", "CIFAR networks (3x3 stem, no max-pool"),
    ("resnet50", {"version": "v1"}, "timm", "the paper's v1 bottleneck downsamples in its first 1x1"),
    ("resnet18", {"stage_sizes": (1, 1), "widths": (8, 16)}, "timm", "timm has no ResNet with [1, 1] blocks"),
])
def test_a_network_a_layout_cannot_express_is_refused_and_nothing_is_written(tmp_path, name, options, layout, why):
    model = models.create_model(name, **options)
    info = {"model": name, "preprocessing": {"image_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    with pytest.raises(weights.ConversionError, match=f"cannot write {name} in the {layout} layout: ") as e:
        weights.save_pretrained(model, {}, info, str(tmp_path / "out"), layout)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout,name,options", [
    ("transformers", "resnet18", dict(stage_sizes=(1, 2), widths=(8, 16), stem_width=8)),
    ("transformers", "resnet50", dict(stage_sizes=(1, 1), widths=(4, 8), stem_width=8, version="v1")),
    ("transformers", "resnet50", dict(stage_sizes=(2, 1), widths=(4, 8), stem_width=8, version="v1.5", scan=True)),
    ("timm", "resnet18", {}),
])
def test_a_saved_folder_reads_back_through_from_pretrained_to_the_same_logits(tmp_path, layout, name, options):
    images = random_images()
    clf = classifier(name, images, 64, **options)
    written = clf.save_pretrained(str(tmp_path / "out"), layout)
    assert written == sorted(["model.safetensors", "config.json", "README.md"]
                             + (["preprocessor_config.json"] if layout == "transformers" else []))
    back = evaluation.Classifier.from_pretrained(str(tmp_path / "out"))
    np.testing.assert_allclose(back.predict(images), clf.predict(images), rtol=1e-5, atol=1e-6)
    assert back.class_names == NAMES and back.image_size == 64 and back.resize_size == 73
    np.testing.assert_allclose(back.mean, clf.mean, rtol=1e-6)
    assert back.model.version == ("v1" if options.get("version") == "v1" else "v1.5") or not back.model.bottleneck
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if layout == "transformers":
        assert config["id2label"]["3"] == "class 3" and config["label2id"]["class 3"] == 3
        assert config["downsample_in_bottleneck"] == (options.get("version") == "v1")
        assert config["depths"] == list(options["stage_sizes"])
    else:
        assert config["architecture"] == "resnet18" and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
        assert int(64 / config["pretrained_cfg"]["crop_pct"]) == 73
    card = (tmp_path / "out" / "README.md").read_text()
    assert "option-B shortcuts" in card and "Checkpoint step 7" in card


def test_convert_writes_a_trained_runs_folder_with_its_evaluation_in_the_model_card(tmp_path, capsys):
    """``convert --to=transformers`` on a training workdir: the folder, and a model card with the recipe and the
    run's logged validation errors; ``--to=timm`` of a network timm lacks is one line, exit status 1."""
    from resnet_jax import convert, training
    from resnet_jax.configs import imagenet

    c = imagenet.get_config("resnet18")
    c.update(dict(dataset="synthetic:5", image_size=32, batch_size=8, eval_batch_size=64, num_train_steps=2,
                  eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1, stage_sizes=(1, 1),
                  widths=(4, 8), train_split="train", eval_split="test", warmup_epochs=0.0,
                  lr_boundaries_epochs=(), on_device_data=True, train_preset="cifar"))
    training.train_and_evaluate(c, str(tmp_path / "run"))
    convert.main(["--to=transformers", f"--workdir={tmp_path / 'run'}", f"--output={tmp_path / 'hf'}"])
    assert "to " + str(tmp_path / "hf") + " (transformers layout)" in capsys.readouterr().out
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "2 iterations of batch 8" in card and "| validation, as logged in training |" in card
    with pytest.raises(SystemExit, match="timm has no ResNet with"):
        convert.main(["--to=timm", f"--workdir={tmp_path / 'run'}", f"--output={tmp_path / 'timm'}"])
    assert not (tmp_path / "timm").exists()


# ------------------------------------------------------------------------------- verified by the libraries


def torch_family(module: str):
    """Import transformers or timm, skipping where absent. The torchvision wheel these machines hold is a CUDA
    build whose C++ operators cannot load beside the CPU build of torch; its Python side (all that transformers'
    and timm's ResNets use) imports once registering those operators' fake kernels is skipped."""
    import importlib
    import importlib.util

    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("torchvision") is not None:
        with mock.patch.object(torch.library, "register_fake", lambda *a, **k: (lambda f: f)):
            import torchvision  # noqa: F401
    module = pytest.importorskip(module)
    if module.__name__ == "timm":
        importlib.import_module("timm.data")
    return module


@pytest.fixture(scope="module")
def photographs(tmp_path_factory):
    """Eight real ImageNet photographs (../shared), resized once to 256x256 PNGs: the resize before the central 224
    crop is then the identity in every pipeline, so ours and the libraries' processors see the same pixels."""
    from PIL import Image

    target = tmp_path_factory.mktemp("photos")
    with tarfile.open(shared_file("data/imagenet-samples.tar")) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".JPEG")), key=lambda m: m.name)[::125]
        tar.extractall(target, members=members, filter="data")
    files = []
    for path in sorted(target.rglob("*.JPEG")):
        files.append(str(path.with_suffix(".png")))
        Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR).save(files[-1])
    return files, data.decode_images(files, "center", 224)


def torch_input(clf, images):
    import torch

    return torch.from_numpy(((images - clf.mean) / clf.std).astype(np.float32)).permute(0, 3, 1, 2)


def our_logits(clf, images):
    return np.asarray(clf.model.apply(clf.variables, data.normalize(jnp.asarray(images), clf.mean, clf.std)))


def top5(logits):
    return np.argsort(-np.asarray(logits), axis=1)[:, :5]


@pytest.mark.slow
@pytest.mark.parametrize("name,version", [("resnet18", "v1"), ("resnet50", "v1"), ("resnet50", "v1.5")])
def test_transformers_loads_the_folder_to_the_same_logits_and_preprocessing(photographs, tmp_path, name, version):
    """``ResNetForImageClassification.from_pretrained(folder)`` computes our logits to 1e-4 on real photographs;
    its image processor, fed the folder's preprocessor_config.json, makes our center view (to rounding) and so the
    same top-5 as ``Classifier.predict`` on the files."""
    transformers = torch_family("transformers")
    import torch
    from PIL import Image

    files, images = photographs
    clf = classifier(name, images, 224, version=version)
    clf.save_pretrained(str(tmp_path / "hf"), "transformers")
    theirs = transformers.ResNetForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        logits = theirs(pixel_values=torch_input(clf, images)).logits.numpy()
    np.testing.assert_allclose(logits, our_logits(clf, images), atol=1e-4, rtol=0)
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    pixels = processor([Image.open(f) for f in files], return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pixels.numpy(), torch_input(clf, images).numpy(), atol=1e-5)
    with torch.no_grad():
        logits = theirs(pixel_values=pixels).logits.numpy()
    np.testing.assert_array_equal(top5(logits), top5(clf.predict(files)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_loads_the_folder_to_the_same_logits_and_preprocessing(photographs, tmp_path, name):
    """``timm.create_model("local-dir:<folder>")`` computes our logits to 1e-4 on real photographs, and timm's
    transform from the folder's pretrained_cfg makes our center view and the same top-5 as ``predict``."""
    timm = torch_family("timm")
    import torch
    from PIL import Image

    files, images = photographs
    clf = classifier(name, images, 224, version="v1.5")
    clf.save_pretrained(str(tmp_path / "timm"), "timm")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert theirs.num_classes == len(NAMES)
    with torch.no_grad():
        logits = theirs(torch_input(clf, images)).numpy()
    np.testing.assert_allclose(logits, our_logits(clf, images), atol=1e-4, rtol=0)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=theirs))
    pixels = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    np.testing.assert_allclose(pixels.numpy(), torch_input(clf, images).numpy(), atol=1e-5)
    with torch.no_grad():
        logits = theirs(pixels).numpy()
    np.testing.assert_array_equal(top5(logits), top5(clf.predict(files)))
