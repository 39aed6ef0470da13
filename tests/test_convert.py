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
F = torch.nn.functional


# ------------------------------------------------------------------------- PyTorch references, from their papers


class CifarBlock(nn.Module):
    """The option-A basic block of the widely used PyTorch CIFAR ResNets."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = stride != 1 or cin != planes
        self.planes = planes

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4)) if self.pad else x
        return F.relu(y + s)


class CifarResNet(nn.Module):
    def __init__(self, n, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, layers = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(cin, planes, stride if i == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean(dim=(2, 3)))


class TVBlock(nn.Module):
    """torchvision's BasicBlock / Bottleneck (stride in the 3x3: v1.5), with a conv+BN downsample."""

    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.bottleneck = bottleneck
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or cin != out else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.bottleneck:
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TVResNet(nn.Module):
    def __init__(self, sizes, bottleneck, classes=1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for i, (size, planes) in enumerate(zip(sizes, (64, 128, 256, 512)), 1):
            blocks = []
            for j in range(size):
                blocks.append(TVBlock(cin, planes, (1 if i == 1 else 2) if j == 0 else 1, bottleneck))
                cin = planes * (4 if bottleneck else 1)
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def reference(name):
    torch.manual_seed(0)
    fields = models.MODELS[name]
    net = (CifarResNet(fields["stage_sizes"][0]) if name.startswith("cifar")
           else TVResNet(fields["stage_sizes"], fields["bottleneck"]))
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
    with pytest.raises(SystemExit, match="does not match the model"):  # an ImageNet layout for a CIFAR net
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
