"""Pretrained in one line: transformers' ResNet layout against transformers itself, the conversion cache, the
sources of Classifier.from_pretrained and init_from."""

import json
import sys

import numpy as np
import pytest

import resnet_jax
from resnet_jax import convert, training, weights
from resnet_jax.configs import imagenet

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_resnet(path, **config):
    """A random-init transformers ResNetForImageClassification with non-trivial BN statistics, saved the way
    ``save_pretrained`` saves it (model.safetensors + config.json); returns the torch model."""
    torch.manual_seed(0)
    net = transformers.ResNetForImageClassification(transformers.ResNetConfig(**config)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.save_pretrained(str(path))
    return net


def torch_logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


TINY = {
    "basic": dict(embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 2, 1], layer_type="basic"),
    "bottleneck-v1.5": dict(embedding_size=12, hidden_sizes=[16, 32], depths=[2, 1], layer_type="bottleneck"),
    "bottleneck-v1": dict(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2], layer_type="bottleneck",
                          downsample_in_bottleneck=True),
}


@pytest.mark.parametrize("kind", sorted(TINY))
def test_transformers_checkpoints_give_transformers_logits_without_torch(kind, tmp_path, cache, monkeypatch):
    labels = {i: f"kind{i}" for i in range(5)}
    net = hf_resnet(tmp_path / "hf", num_labels=5, id2label=labels, label2id={v: k for k, v in labels.items()},
                    **TINY[kind])
    x = np.random.default_rng(0).normal(size=(3, 40, 40, 3)).astype(np.float32)
    want = torch_logits(net, x)
    monkeypatch.setitem(sys.modules, "torch", None)  # converting needs neither torch nor transformers
    monkeypatch.setitem(sys.modules, "transformers", None)
    clf = resnet_jax.Classifier.from_pretrained(str(tmp_path / "hf"))
    got = np.asarray(clf.model.apply(clf.variables, x, train=False))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    assert clf.class_names == [f"kind{i}" for i in range(5)]  # id2label where the classes are not ILSVRC's
    assert clf.model.version == ("v1" if kind == "bottleneck-v1" else "v1.5")
    assert clf.model.bottleneck == kind.startswith("bottleneck")
    assert clf.model.stage_sizes == tuple(TINY[kind]["depths"])

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(weights.pretrained, "import_weights", no_conversion)
    again = resnet_jax.Classifier.from_pretrained(str(tmp_path / "hf"))  # from the cache
    np.testing.assert_array_equal(again.variables["params"]["fc"]["kernel"], clf.variables["params"]["fc"]["kernel"])
    assert len(list(cache.iterdir())) == 1


def test_a_full_size_transformers_resnet18_is_the_registry_network_with_ilsvrc_names_and_its_preprocessing(
        tmp_path, cache, monkeypatch):
    net = hf_resnet(tmp_path / "hf", embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                    layer_type="basic", num_labels=1000)
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(  # microsoft/resnet-*'s processor
        {"image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "do_normalize": True,
         "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
         "resample": 3, "size": {"shortest_edge": 224}}))
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    want = torch_logits(net, x)
    monkeypatch.setitem(sys.modules, "torch", None)
    workdir = tmp_path / "r18"
    convert.main(["--from=torch", f"--input={tmp_path / 'hf'}", f"--workdir={workdir}"])  # no --model
    model, variables, info = resnet_jax.load_checkpoint(str(workdir))
    assert info["model"] == "resnet18" and info["model_options"] == {"shortcut": "B", "version": "v1.5",
                                                                     "scan": False}
    assert info["class_names"][:2] == ["tench", "goldfish"] and info["class_ids"][1] == "n01443537"
    pre = info["preprocessing"]
    assert (pre["image_size"], pre["resize_size"], pre["mean"][0]) == (224, 256, pytest.approx(123.675))
    got = np.asarray(model.apply(variables, x))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    with pytest.raises(SystemExit, match=r"holds a resnet18 \(transformers layout\), not a resnet34; leave out"):
        convert.main(["--from=torch", "--model=resnet34", f"--input={tmp_path / 'hf'}", f"--workdir={tmp_path / 'x'}"])


def test_a_transformers_backbone_without_classifier_converts_for_features(tmp_path, cache, monkeypatch):
    torch.manual_seed(0)
    backbone = transformers.ResNetModel(transformers.ResNetConfig(**TINY["basic"])).eval()
    backbone.save_pretrained(str(tmp_path / "backbone"))
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = backbone(torch.from_numpy(x.transpose(0, 3, 1, 2))).pooler_output.numpy().reshape(2, -1)
    clf = resnet_jax.Classifier.from_pretrained(str(tmp_path / "backbone"))
    _, feats = clf.model.apply(clf.variables, x, features=True)
    np.testing.assert_allclose(np.asarray(feats["pre_logits"]), want, rtol=1e-4, atol=1e-5)
    assert clf.info["source"]["classifier"] is False and not np.any(clf.variables["params"]["fc"]["kernel"])


def test_init_from_takes_a_pretrained_source(tmp_path, cache):
    hf_resnet(tmp_path / "hf", num_labels=5, **TINY["basic"])
    config = imagenet.get_config("resnet18")
    config.update(dict(image_size=32, stage_sizes=(1, 2, 1), widths=(8, 16, 24), stem_width=8,
                       init_from=str(tmp_path / "hf")))
    model = resnet_jax.create_model("resnet18", num_classes=3, **training.model_options(config))
    init = training.load_init_from(config, model)
    assert "params/stage2/block1/conv1/kernel" in init["variables"]
    assert not any(k.startswith("params/fc") for k in init["variables"])  # 5 classes there, 3 here: a fresh head
    config.widths = ()
    with pytest.raises(training.ConfigError, match=r"holds a resnet18 with .*widths.*set the same in the config"):
        training.load_init_from(config, resnet_jax.create_model("resnet18", num_classes=3))
    config.init_from = str(tmp_path / "absent.safetensors")
    with pytest.raises(training.ConfigError, match="does not exist"):
        training.load_init_from(config, model)


def test_the_preprocessing_a_source_states_comes_along():
    timm = weights.Files("hf:timm/resnet50.a1_in1k", "unused", config={
        "architecture": "resnet50", "pretrained_cfg": {"input_size": [3, 224, 224], "test_input_size": [3, 288, 288],
                                                       "crop_pct": 0.95, "mean": [0.485, 0.456, 0.406],
                                                       "std": [0.229, 0.224, 0.225]}})
    assert weights.files.preprocessing(timm, "torchvision") == dict(
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], image_size=288, resize_size=303)  # floor(288/.95)
    hf = weights.Files("x", "unused", preprocessor={"crop_pct": 0.875, "size": {"shortest_edge": 224},
                                                   "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert weights.files.preprocessing(hf, "transformers") == dict(mean=[0.5] * 3, std=[0.5] * 3, image_size=224,
                                                                   resize_size=256)
    assert weights.files.preprocessing(weights.Files("w.pth", "w.pth"), "torchvision") == {}
