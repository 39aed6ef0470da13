"""PyTorch import/export: logits against PyTorch references built here, errors, the shared ResNet-20 end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evaluate
from resnet_jax import checkpoint, convert, models

torch = pytest.importorskip("torch")
nn = torch.nn
from resnet_jax.torch_models import CifarResNet, torch_model  # noqa: E402


def reference(name):
    torch.manual_seed(0)
    net = torch_model(name)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def save_state(net, path, wrap=False):
    state = {("module." + k if wrap else k): v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 0.0} if wrap else state, path)


@pytest.mark.parametrize("name,size", [("cifar_resnet20", 32), ("cifar_resnet32", 32), ("resnet18", 64),
                                       ("resnet50", 64)])
def test_converted_logits_match_pytorch(name, size, tmp_path):
    net = reference(name)
    save_state(net, tmp_path / "w.pt", wrap=name.startswith("cifar"))
    convert.main(["--from=torch", f"--model={name}", f"--input={tmp_path / 'w.pt'}", f"--workdir={tmp_path / 'ck'}"])
    model, variables, info = checkpoint.load_checkpoint(str(tmp_path / "ck"))
    assert info["model_options"]["shortcut"] == ("A" if name.startswith("cifar") else "B")
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(model.apply(variables, x))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152", "cifar_resnet1202"])
def test_deep_layouts_map_every_tensor(name):
    net = reference(name) if name != "cifar_resnet1202" else CifarResNet(200)
    model = models.create_model(name, **convert.layout_options(convert.layout_of(name)))
    size = 32 if name.startswith("cifar") else 224
    variables = convert.variables_from_torch(net.state_dict(), model, convert.layout_of(name), size)
    assert models.count_params(variables["params"]) == sum(p.numel() for p in net.parameters())


def test_scanned_import_matches_unrolled(tmp_path):
    net = reference("cifar_resnet20")
    save_state(net, tmp_path / "w.pt")
    convert.import_torch("cifar_resnet20", str(tmp_path / "w.pt"), str(tmp_path / "a"))
    convert.import_torch("cifar_resnet20", str(tmp_path / "w.pt"), str(tmp_path / "b"), scan=True)
    m1, v1, _ = checkpoint.load_checkpoint(str(tmp_path / "a"))
    m2, v2, _ = checkpoint.load_checkpoint(str(tmp_path / "b"))
    assert m2.scan and v2["params"]["stage1"]["blocks"]["conv1"]["kernel"].shape[0] == 2
    x = jnp.ones((1, 32, 32, 3))
    np.testing.assert_allclose(m1.apply(v1, x), m2.apply(v2, x), rtol=1e-5, atol=1e-5)
    state = convert.export_torch(str(tmp_path / "b"), str(tmp_path / "back.pt"))
    np.testing.assert_array_equal(state["layer3.2.conv2.weight"], net.state_dict()["layer3.2.conv2.weight"].numpy())


def test_mismatched_state_dict_lists_keys_and_writes_nothing(tmp_path):
    state = reference("cifar_resnet20").state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["layer2.1.bn1.running_var"]
    state["linear.weight"] = torch.zeros(10, 32)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(SystemExit, match=r"missing: layer2.1.bn1.running_var; unexpected: extra.weight; "
                                         r"mis-shaped: linear.weight \(10, 32\) \(expected \(10, 64\)\)"):
        convert.main(["--from=torch", "--model=cifar_resnet20", f"--input={tmp_path / 'bad.pt'}",
                      f"--workdir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"r18.pt holds a resnet18 \(torchvision layout\), not a cifar_resnet20"):
        save_state(reference("resnet18"), tmp_path / "r18.pt")
        convert.main(["--from=torch", "--model=cifar_resnet20", f"--input={tmp_path / 'r18.pt'}",
                      f"--workdir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SystemExit, match="weights_only"):
        convert.main(["--from=torch", "--model=cifar_resnet20", f"--input={tmp_path / 'evil.pt'}",
                      f"--workdir={tmp_path / 'out'}"])


@pytest.mark.slow
def test_shared_resnet20_round_trip_and_accuracy(cifar10_root, tmp_path):
    from tests.conftest import shared_file

    weights = shared_file("weights/cifar10_resnet20_optionA.th")
    workdir = tmp_path / "r20"
    convert.main(["--from=torch", "--model=cifar_resnet20", f"--input={weights}", f"--workdir={workdir}"])
    # round trip: export reproduces the original tensors
    convert.main(["--to=torch", f"--workdir={workdir}", f"--output={tmp_path / 'back.pt'}"])
    original = convert.clean_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(back) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(back[key].numpy(), value)
    # end to end: evaluate.py on the CIFAR-10 test JPEGs gives the PyTorch model's own 81.03 %
    out = tmp_path / "eval.json"
    evaluate.main([f"--workdir={workdir}", f"--dataset=folder:{cifar10_root}", "--split=test", "--batch_size=500",
                   f"--output={out}"])
    result = json.loads(out.read_text())
    assert result["num_examples"] == 10_000
    assert result["top1_accuracy"] == pytest.approx(81.03, abs=0.05)
    _, _, info = checkpoint.load_checkpoint(str(workdir))
    assert info["class_names"][0] == "airplane" and info["preprocessing"]["mean"][0] == pytest.approx(123.675)
    assert jax.tree.leaves(info)  # the description is plain JSON


# ------------------------------------------------------------------- safetensors and the hub, without PyTorch


def save_safetensors(net, path):
    from safetensors.numpy import save_file

    save_file({k: v.numpy() for k, v in net.state_dict().items()}, str(path))


def no_torch(monkeypatch):
    """Make ``import torch`` fail inside the converter, as on a machine without PyTorch."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.mark.parametrize("name", ["resnet18", "cifar_resnet20"])
def test_safetensors_import_without_torch_matches_pytorch(name, tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    net = reference(name)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    save_safetensors(net, tmp_path / "model.safetensors")
    no_torch(monkeypatch)
    convert.main(["--from=torch", f"--model={name}", f"--input={tmp_path / 'model.safetensors'}",
                  f"--workdir={tmp_path / 'ck'}"])
    model, variables, info = checkpoint.load_checkpoint(str(tmp_path / "ck"))
    got = np.asarray(model.apply(variables, x))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    if name == "resnet18":  # ImageNet weights: the ILSVRC names, wnids kept
        assert info["class_names"][:2] == ["tench", "goldfish"] and info["class_ids"][1] == "n01443537"
    # a PyTorch file without torch: one line that says what to do
    torch_file = tmp_path / "w.pth"
    torch_file.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(SystemExit, match=r"is a PyTorch file \(not safetensors\): reading it needs torch"):
        convert.main(["--from=torch", f"--model={name}", f"--input={torch_file}", f"--workdir={tmp_path / 'x'}"])


def test_hub_id_reads_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("safetensors")
    net = reference("resnet18")
    snapshot = tmp_path / "hub" / "models--timm--resnet18.tv_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_safetensors(net, snapshot / "model.safetensors")
    (tmp_path / "hub" / "models--timm--resnet18.tv_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--resnet18.tv_in1k" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    no_torch(monkeypatch)
    convert.main(["--from=torch", "--model=resnet18", "--input=hf:timm/resnet18.tv_in1k",
                  f"--workdir={tmp_path / 'ck'}"])
    model, variables, info = checkpoint.load_checkpoint(str(tmp_path / "ck"))
    assert info["source"]["file"] == "hf:timm/resnet18.tv_in1k" and model.num_classes == 1000
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["mean"], net.bn1.running_mean.numpy())
    with pytest.raises(SystemExit, match=r"cannot get model.safetensors of timm/absent from the Hugging Face hub"):
        convert.main(["--from=torch", "--model=resnet18", "--input=hf:timm/absent", f"--workdir={tmp_path / 'y'}"])
