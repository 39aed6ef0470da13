"""PyTorch twins of the registry's networks, written from the papers: the CIFAR option-A ResNets of Sec. 4.2 and
torchvision's ImageNet layout (option-B projections). They check conversions and give the PyTorch side of the
CPU benchmarks. Needs ``torch`` (``pip install resnet_jax[torch]``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from resnet_jax import models


class CifarBlock(nn.Module):
    """The option-A basic block of the widely used PyTorch CIFAR ResNets."""

    def __init__(self, cin: int, planes: int, stride: int):
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
    """6n + 2 layers, stages of 16, 32, 64 filters (Sec. 4.2)."""

    def __init__(self, n: int, classes: int = 10):
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
    """torchvision's BasicBlock / Bottleneck with a conv+BN downsample; ``version`` places a bottleneck's
    stride in its first 1x1 ("v1", the paper) or in its 3x3 ("v1.5", torchvision)."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool, version: str = "v1.5"):
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            s1, s3 = (stride, 1) if version == "v1" else (1, stride)
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, s1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, s3, 1, bias=False), nn.BatchNorm2d(planes)
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
    """torchvision's ResNet layout: 7x7/2 stem, 3x3/2 max-pool, four stages, average pool, ``fc``."""

    def __init__(self, sizes, bottleneck: bool, classes: int = 1000, version: str = "v1.5"):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for i, (size, planes) in enumerate(zip(sizes, (64, 128, 256, 512)), 1):
            blocks = []
            for j in range(size):
                blocks.append(TVBlock(cin, planes, (1 if i == 1 else 2) if j == 0 else 1, bottleneck, version))
                cin = planes * (4 if bottleneck else 1)
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def torch_model(name: str, num_classes: int | None = None, version: str = "v1.5") -> nn.Module:
    """The PyTorch twin of registry network ``name`` (residual CIFAR and ImageNet networks)."""
    fields = models.MODELS[name]
    classes = num_classes or fields["num_classes"]
    if not fields.get("residual", True):
        raise ValueError(f"no PyTorch twin for the plain network {name}")
    if fields["stem"] == "cifar":
        return CifarResNet(fields["stage_sizes"][0], classes)
    return TVResNet(fields["stage_sizes"], fields["bottleneck"], classes, version)


__all__ = ["CifarResNet", "TVResNet", "torch", "torch_model"]
