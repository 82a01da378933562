"""Small from-scratch models: a compact U-Net for masks and a digit classifier with a circle head."""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution (same padding, no bias: BN follows), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class UNet(nn.Module):
    """Compact U-Net (Ronneberger et al. 2015) for per-pixel classification.

    One level per entry of `widths`: two 3x3 conv-BN-ReLU at each, 2x2 max-pool between encoder levels,
    a 2x2 transposed convolution up, concatenation with the encoder's skip, two convs again; a 1x1 conv
    gives `num_classes` logits per pixel. With widths (16, 32, 64, 128) on 56x56 the deepest features are
    7x7 with a receptive field of ~68 px, enough to see a whole 28x28 digit and name it. Inputs whose sides
    are not a multiple of 2**(levels-1) are zero-padded and the logits cropped back.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: tuple[int, ...] = (16, 32, 64),
        stem: int = 1,
    ):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"UNet widths {widths}: need at least two levels")
        self.stem = stem
        self.stride = stem * 2 ** (len(widths) - 1)
        first = in_channels * stem * stem
        self.encoders = nn.ModuleList(
            double_conv(cin, cout) for cin, cout in zip((first, *widths[:-1]), widths, strict=True)
        )
        deep_to_shallow = list(reversed(widths))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(cin, cout, 2, stride=2)
            for cin, cout in zip(deep_to_shallow[:-1], deep_to_shallow[1:], strict=True)
        )
        self.decoders = nn.ModuleList(double_conv(2 * c, c) for c in deep_to_shallow[1:])
        self.head = nn.Conv2d(widths[0], num_classes * stem * stem, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]  # x: (B, C, H, W) float
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if self.stem > 1:
            x = F.pixel_unshuffle(x, self.stem)  # (B, C*s*s, H/s, W/s): cheap first level
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        logits = self.head(x)
        if self.stem > 1:
            logits = F.pixel_shuffle(logits, self.stem)
        return logits[..., :h, :w]  # (B, num_classes, H, W)


class CircleNet(nn.Module):
    """Digit classifier with a circle head, for sets with a class and a circle target (the MNIST circles).

    Two conv blocks (two 3x3 conv-BN-ReLU each, then 2x2 max-pool) take 28x28 to 7x7; the features are
    flattened rather than averaged away, so the shared hidden layer keeps *where* the strokes are, which the
    circle needs. Two heads read the hidden layer: 10 class logits and the enclosing circle (cx, cy, r)
    normalised by the image width and height (so 0..1), from which `circle_pixels` gets pixel units back.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        grid: int = 7,
        widths: tuple[int, int] = (16, 32),
        hidden: int = 256,
        dropout: float = 0.25,
    ):
        super().__init__()
        w1, w2 = widths
        self.features = nn.Sequential(
            double_conv(in_channels, w1), nn.MaxPool2d(2), double_conv(w1, w2), nn.MaxPool2d(2)
        )
        # MNIST's 28x28 pools to 7x7 already; other sizes are averaged onto the same grid.
        self.hidden = nn.Sequential(
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(w2 * grid * grid, hidden),
            nn.ReLU(inplace=True),
        )
        self.classify = nn.Linear(hidden, num_classes)
        self.circle = nn.Linear(hidden, 3)
        nn.init.zeros_(self.circle.weight)
        with torch.no_grad():
            self.circle.bias.copy_(torch.tensor([0.5, 0.5, 0.35]))  # a centred circle of typical size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(self.features(x))  # x: (B, C, H, W) -> h: (B, hidden)
        return self.classify(h), self.circle(h)  # (B, num_classes) logits, (B, 3) normalised circle
