"""PyTorch recipes: real architectures in plain ``torch.nn`` with deterministic weights.

    from models_zoo import torch_models
    module, inputs = torch_models.build("resnet18")      # eval-mode nn.Module, example inputs
    path = torch_models.write("resnet18", "out/")        # out/resnet18.pt2 (torch.export.save)
    path = torch_models.write("resnet18", "out/", fmt="torchscript")   # out/resnet18.torchscript.pt

No torchvision and nothing downloaded: the modules are written here, weights come from
``torch.manual_seed`` and BatchNorm running statistics are drawn too (a fresh BatchNorm is the
identity at inference, which would hide conversion errors). Archives are written on demand.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU6):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [ConvBNAct(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
                   ConvBNAct(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0, as torchvision lays it out."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        plan = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
        cin = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [ConvBNAct(3, cin, stride=2)]
        for t, c, n, s in plan:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvBNAct(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016): 7x7 stem, max pool, 4 stages of 2 basic blocks."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TransformerClassifier(nn.Module):
    """A BERT-style encoder: token + learned position embeddings, pre-norm encoder layers with GELU,
    mean pooling over tokens and a linear head."""

    def __init__(self, vocab: int = 1000, dim: int = 128, heads: int = 4, layers: int = 4,
                 max_len: int = 64, num_classes: int = 10):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions[:, :ids.shape[1]]
        x = self.norm(self.encoder(x))
        return self.head(x.mean(dim=1))


class LSTMTagger(nn.Module):
    """A sequence tagger: embeddings, a 2-layer bidirectional LSTM, per-token tag scores."""

    def __init__(self, vocab: int = 500, dim: int = 64, hidden: int = 96, tags: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, ids):
        y, _ = self.lstm(self.embed(ids))
        return torch.log_softmax(self.out(y), dim=-1)


@dataclass(frozen=True)
class TorchEntry:
    factory: Callable[[], nn.Module]
    #: example inputs: ("float", shape) for images, ("tokens", shape, vocab) for token ids
    inputs: tuple[tuple, ...]
    description: str


MODELS: dict[str, TorchEntry] = {
    "mobilenet_v2": TorchEntry(MobileNetV2, (("float", (1, 3, 224, 224)),),
                               "MobileNetV2 1.0, 224x224, ReLU6, depthwise convs"),
    "resnet18": TorchEntry(ResNet18, (("float", (1, 3, 224, 224)),), "ResNet-18, 224x224"),
    "transformer_encoder": TorchEntry(TransformerClassifier, (("tokens", (1, 64), 1000),),
                                      "4-layer pre-norm Transformer encoder classifier, 64 tokens"),
    "lstm_tagger": TorchEntry(LSTMTagger, (("tokens", (1, 32), 500),),
                              "2-layer bidirectional LSTM tagger, 32 tokens"),
}


def names() -> list[str]:
    return sorted(MODELS)


def _randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=generator) * 0.5 + 0.75
            m.bias.data = torch.randn(c, generator=generator) * 0.1
            m.running_mean = torch.randn(c, generator=generator) * 0.1
            m.running_var = torch.rand(c, generator=generator) * 0.5 + 0.75


def example_inputs(name: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for spec in MODELS[name].inputs:
        if spec[0] == "float":
            out.append(torch.randn(*spec[1], generator=g))
        else:
            out.append(torch.randint(0, spec[2], spec[1], generator=g))
    return tuple(out)


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The eval-mode module ``name`` with deterministic weights, and example inputs for it."""
    if name not in MODELS:
        raise KeyError(f"unknown PyTorch zoo model {name!r}; known: {', '.join(names())}")
    torch.manual_seed(seed)
    module = MODELS[name].factory()
    _randomize_batchnorm(module, torch.Generator().manual_seed(seed))
    return module.eval(), example_inputs(name, seed)


def write(name: str, directory, seed: int = 0, fmt: str = "pt2") -> Path:
    """Save ``name`` into ``directory`` as ``NAME.pt2`` (torch.export.save, the default) or as a
    TorchScript archive ``NAME.torchscript.pt`` (``fmt="torchscript"``, traced)."""
    if fmt not in ("pt2", "torchscript"):
        raise ValueError(f"fmt must be 'pt2' or 'torchscript', got {fmt!r}")
    module, inputs = build(name, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # nn.LSTM's flat-weights notice under torch.export, TracerWarnings of its shape checks
        warnings.simplefilter("ignore")
        if fmt == "pt2":
            path = directory / f"{name}.pt2"
            torch.export.save(torch.export.export(module, inputs), path)
        else:
            path = directory / f"{name}.torchscript.pt"
            # traced with autograd on: under no_grad, nn.TransformerEncoderLayer takes its fused
            # inference path (aten::_transformer_encoder_layer_fwd), which ONNX cannot express
            torch.jit.save(torch.jit.trace(module, inputs, check_trace=False), path)
    return path
