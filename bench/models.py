"""Model zoo: CIFAR-style ResNet-18/34, MobileNetV2, small CNNs for CPUs, and any timm model.

Every model is a :class:`BenchModel`: it takes pixels in [0, 1] and normalises them inside, so that
attacks and defenses (adversarial steps, trigger inversion, pruning) all work in one pixel space and
none can forget the normalisation. Inner networks follow timm's protocol: ``forward_features(x)``
returns the last feature maps, ``forward_head(f, pre_logits=True)`` the penultimate vector, and
``get_classifier()`` the final linear layer. That lets defenses reach features generically:
``model.features(x)``, ``model.feature_maps(x)`` and ``model.classifier``.

Stems: for inputs up to 64 px the ResNets and MobileNetV2 use the CIFAR stem (3x3 conv, stride 1, no
max-pool); from 128 px on (Imagenette) they use the ImageNet stem (7x7 stride 2 + max-pool for
ResNets, stride-2 first conv for MobileNetV2), as the toolbox does at 224 px.

Use ``create_model(name, num_classes, image_size, mean, std)``; names are ``MODELS`` entries or
``timm:<timm model name>`` (weights are never downloaded: ``pretrained=False``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.registry import MODELS


class BenchModel(nn.Module):
    """A classifier that takes [0, 1] pixels and normalises inside."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], arch: str = ""):
        super().__init__()
        self.net = net
        self.arch = arch
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature maps (B, C, h, w)."""
        return self.net.forward_features(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate (pre-logits) vector (B, D)."""
        return self.net.forward_head(self.feature_maps(x), pre_logits=True)

    @property
    def classifier(self) -> nn.Module:
        return self.net.get_classifier()


# -- CIFAR-style ResNet ---------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks (He et al. 2016) in the CIFAR layout (Kuang Liu's variant)."""

    def __init__(self, blocks: Sequence[int], num_classes: int, image_size: int = 32, width: int = 64):
        super().__init__()
        if image_size >= 128:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.num_features = cin
        self.linear = nn.Linear(cin, num_classes)

    def forward_features(self, x):
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)

    def get_classifier(self):
        return self.linear

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# -- MobileNetV2 ----------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018); CIFAR variant: stride-1 stem and stride 1 in stage 2."""

    # (expansion, out channels, repeats, stride)
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, image_size: int = 32):
        super().__init__()
        large = image_size >= 128
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2 if large else 1, 1, bias=False),
                                  nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        layers, cin = [], 32
        for i, (t, c, n, s) in enumerate(self.CFG):
            if large and i == 1:
                s = 2
            for j in range(n):
                layers.append(InvertedResidual(cin, c, t, s if j == 0 else 1))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.head_conv = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280),
                                       nn.ReLU6(inplace=True))
        self.num_features = 1280
        self.linear = nn.Linear(1280, num_classes)

    def forward_features(self, x):
        return self.head_conv(self.layers(self.stem(x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)

    def get_classifier(self):
        return self.linear

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# -- small CNNs for CPUs (airbench-style) ---------------------------------------------------------
def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ConvGroup(nn.Module):
    """max-pool 2 -> conv -> conv, each conv with BN and ReLU (airbench's block, pooling first so
    that both convolutions run at the lower resolution: about twice the throughput on a CPU)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv1 = _conv_bn(cin, cout)
        self.conv2 = _conv_bn(cout, cout)

    def forward(self, x):
        return self.conv2(self.conv1(self.pool(x)))


class SmallCNN(nn.Module):
    """A fast VGG-like net after Keller Jordan's airbench: a full-resolution stem, three conv
    groups, global max-pool and a linear head. Trains CIFAR-10 to 70%+ in a few CPU minutes."""

    def __init__(self, num_classes: int, image_size: int = 32, widths: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        self.stem = _conv_bn(3, widths[0])
        self.layer1 = ConvGroup(widths[0], widths[1])
        self.layer2 = ConvGroup(widths[1], widths[2])
        self.layer3 = ConvGroup(widths[2], widths[3])
        self.num_features = widths[3]
        self.linear = nn.Linear(widths[3], num_classes)

    def forward_features(self, x):
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)

    def get_classifier(self):
        return self.linear

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# -- registration ---------------------------------------------------------------------------------
@MODELS.register("resnet18", family="resnet")
def resnet18(num_classes: int, image_size: int = 32) -> nn.Module:
    """CIFAR-style ResNet-18 (11.2M parameters)."""
    return ResNet([2, 2, 2, 2], num_classes, image_size)


@MODELS.register("resnet34", family="resnet")
def resnet34(num_classes: int, image_size: int = 32) -> nn.Module:
    """CIFAR-style ResNet-34 (21.3M parameters)."""
    return ResNet([3, 4, 6, 3], num_classes, image_size)


@MODELS.register("mobilenetv2", family="mobilenet")
def mobilenetv2(num_classes: int, image_size: int = 32) -> nn.Module:
    """CIFAR-style MobileNetV2 (2.2M parameters)."""
    return MobileNetV2(num_classes, image_size)


@MODELS.register("cnn_small", family="cnn")
def cnn_small(num_classes: int, image_size: int = 32) -> nn.Module:
    """Airbench-style CNN, widths 32/64/128/256 (1.2M parameters): the CPU suites' model."""
    return SmallCNN(num_classes, image_size, (32, 64, 128, 256))


@MODELS.register("cnn_tiny", family="cnn")
def cnn_tiny(num_classes: int, image_size: int = 32) -> nn.Module:
    """Airbench-style CNN, widths 16/32/64/64 (0.1M parameters): smoke runs and tests."""
    return SmallCNN(num_classes, image_size, (16, 32, 64, 64))


@MODELS.register("resnet_tiny", family="resnet")
def resnet_tiny(num_classes: int, image_size: int = 32) -> nn.Module:
    """A ResNet with one BasicBlock per stage and width 16: smoke runs of ResNet-only defenses."""
    return ResNet([1, 1, 1, 1], num_classes, image_size, width=16)


def _timm_factory(timm_name: str):
    def build(num_classes: int, image_size: int = 32) -> nn.Module:
        import timm

        try:
            return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
        except RuntimeError as exc:  # timm raises RuntimeError for unknown names
            raise ValueError(f"timm has no model '{timm_name}': {exc}") from exc

    build.__doc__ = f"timm model '{timm_name}' (random init)."
    return build


def _resolve_timm(name: str):
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ValueError(f"timm has no model '{name}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return _timm_factory(name)


MODELS.add_prefix("timm", _resolve_timm)


def create_model(name: str, num_classes: int, image_size: int = 32,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)) -> BenchModel:
    """Build a registered (or ``timm:<name>``) network wrapped to take [0, 1] pixels."""
    entry = MODELS.get(name)
    net = entry.obj(num_classes=num_classes, image_size=image_size)
    return BenchModel(net, mean, std, arch=name)
