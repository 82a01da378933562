"""segshards.train.models: output shapes for any input size, stems, channels; the circle head's starting point."""

import pytest
import torch

from segshards.train.models import CircleNet, UNet


@pytest.mark.parametrize(
    ("widths", "stem", "size"),
    [
        ((8, 16), 1, (28, 28)),
        ((8, 16, 32), 1, (28, 28)),
        ((16, 32, 64), 2, (56, 56)),
        ((8, 16, 32), 2, (30, 27)),
    ],
)
def test_unet_logits_match_the_input_size(widths: tuple[int, ...], stem: int, size: tuple[int, int]) -> None:
    model = UNet(in_channels=1, num_classes=11, widths=widths, stem=stem).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, 11, *size)


def test_unet_colour_input_and_channels_last() -> None:
    model = UNet(in_channels=3, num_classes=5, widths=(8, 16, 32)).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 40, 48).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (2, 5, 40, 48)


def test_unet_needs_two_levels() -> None:
    with pytest.raises(ValueError, match="two levels"):
        UNet(widths=(16,))


def test_unet_sizes_for_the_docs() -> None:
    assert sum(p.numel() for p in UNet(widths=(8, 16, 32)).parameters()) == 29_490
    assert sum(p.numel() for p in UNet(num_classes=11, widths=(16, 32, 64), stem=2).parameters()) == 118_236


def test_circle_net_heads_and_initial_circle() -> None:
    model = CircleNet(widths=(16, 32)).eval()
    with torch.no_grad():
        logits, circle = model(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 10) and circle.shape == (4, 3)
    # the circle head starts at a centred circle (normalised units) whatever the input
    assert torch.allclose(circle, torch.tensor([0.5, 0.5, 0.35]).expand(4, 3))
    with torch.no_grad():
        assert model(torch.rand(2, 1, 36, 36))[1].shape == (2, 3)  # other sizes pool onto the same 7x7 grid
