"""`make_loader(augment=..., transform=...)` on a coco-semantic set: one seed gives the same pixels whatever
`num_workers` and after a mid-epoch resume; masks keep their class ids; transforms are seeded per sample;
torchvision `transforms.v2` and albumentations (skipped when absent) run inside the workers."""

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from segshards.loaders import Albumentations, Augment, make_loader
from segshards.writer.cli.main import main
from segshards.writer.errors import ConfigError
from tests.coco_fixtures import write_coco
from tests.test_photo import shard_samples

SIZE = (24, 32)


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    fixture = write_coco(root / "src")
    argv = ["build", "coco-semantic", *fixture.args(), "--out", str(root / "set"), "--jobs", "1"]
    assert main([*argv, "--train", "7", "--val", "0", "--test", "0", "--shard-size", "2"]) == 0
    return root / "set"


def rows(batches: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each sample's (image, mask), by key."""
    out = {}
    for batch in batches:
        for key, image, mask in zip(batch["key"], batch["image"], batch["mask"], strict=True):
            out[key] = (image.numpy().copy(), mask.numpy().copy())
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0])
        np.testing.assert_array_equal(a[key][1], b[key][1])


def test_augmented_pixels_are_the_same_whatever_num_workers(photo_set: Path) -> None:
    runs = [
        rows(make_loader(photo_set, "train", 2, workers, seed=3, size=SIZE, augment=Augment()))
        for workers in (0, 2)
    ]
    assert len(runs[0]) == 7
    assert_same(runs[0], runs[1])
    plain = rows(make_loader(photo_set, "train", 2, seed=3, size=SIZE))
    assert any(not np.array_equal(plain[k][0], runs[0][k][0]) for k in plain)  # augmented, not letterboxed


def test_epochs_draw_other_augmentations(photo_set: Path) -> None:
    loader = make_loader(photo_set, "train", 2, seed=3, size=SIZE, augment=Augment(flip=1.0))
    first, second = rows(loader), rows(loader)
    assert any(not np.array_equal(first[k][0], second[k][0]) for k in first)


def test_a_mid_epoch_resume_gives_the_same_augmented_batches(photo_set: Path) -> None:
    def loader() -> Any:
        return make_loader(photo_set, "train", 2, 2, seed=5, size=SIZE, augment=Augment())

    whole = list(loader())
    first = loader()
    iterator = iter(first)
    next(iterator)
    state = first.state_dict()
    del iterator
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b["key"] for b in rest] == [b["key"] for b in whole[1:]]
    assert_same(rows(rest), rows(whole[1:]))


def test_augmented_masks_hold_only_source_class_ids_or_ignore(photo_set: Path) -> None:
    raw = shard_samples(photo_set)
    for key, (_, mask) in rows(make_loader(photo_set, "train", 4, size=SIZE, augment=Augment())).items():
        source = cv2.imdecode(np.frombuffer(raw[key]["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= set(np.unique(source)) | {255}


def test_augment_needs_a_size_and_an_augment(photo_set: Path, grid_set: Path) -> None:
    with pytest.raises(ConfigError, match=r"augment: needs size=\(H, W\)"):
        make_loader(grid_set, "train", 4, augment=Augment())
    with pytest.raises(ConfigError, match="augment 'yes': must be an Augment"):
        make_loader(photo_set, "train", 4, augment="yes")  # type: ignore[arg-type]


def noisy_flip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A transform drawing from torch's global generator: flip both, and add noise to the image."""
    if torch.rand(()) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    return (image.int() + torch.randint(0, 9, image.shape)).clamp(0, 255).byte(), mask


def test_a_transform_is_seeded_per_sample_whatever_num_workers(photo_set: Path) -> None:
    torch.manual_seed(123)
    plain = rows(make_loader(photo_set, "train", 2, seed=1, size=SIZE))
    untouched = torch.rand(3)  # the caller's generator after a loader without transform (DataLoader draws)
    torch.manual_seed(123)
    in_process = rows(make_loader(photo_set, "train", 2, seed=1, size=SIZE, transform=noisy_flip))
    assert torch.equal(torch.rand(3), untouched)  # the transform's seeding left it as it was
    runs = [in_process, rows(make_loader(photo_set, "train", 2, 2, seed=1, size=SIZE, transform=noisy_flip))]
    assert_same(runs[0], runs[1])
    assert all(not np.array_equal(plain[k][0], runs[0][k][0]) for k in plain)


def test_a_transform_of_the_wrong_shape_is_one_clear_error(photo_set: Path) -> None:
    def crop(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image[:, :10], mask

    with pytest.raises(ConfigError, match=r"transform returned an image of shape \(3, 10, 32\)"):
        list(make_loader(photo_set, "train", 2, size=SIZE, transform=crop))


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda i, m: (i.float() / 255, m), r"an image of dtype float32; the batch holds uint8 \(0-255\)"),
        (lambda i, m: (i, m.long() + 300), r"a mask with values 300\.\.\d+, outside uint8's 0-255"),
        (lambda i, m: (i.int() - 1, m), r"an image with values -1\.\.\d+, outside"),
        (lambda i, m: (i.bfloat16(), m), r"an image of dtype bfloat16; the batch holds uint8"),
    ],
    ids=["normalised image", "class ids past 255", "negative pixels", "bfloat16"],
)
def test_a_transform_result_a_uint8_row_cannot_hold_is_refused_not_cast(
    photo_set: Path, transform: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"train-\d+\.tar:\w+: transform returned " + message):
        list(make_loader(photo_set, "train", 2, size=SIZE, transform=transform))


def test_whole_numbers_within_0_255_are_taken_as_they_are(photo_set: Path) -> None:
    plain = rows(make_loader(photo_set, "train", 2, size=SIZE))
    assert_same(
        plain,
        rows(make_loader(photo_set, "train", 2, size=SIZE, transform=lambda i, m: (i.long(), m.long()))),
    )


def test_an_error_inside_a_transform_names_its_sample(photo_set: Path) -> None:
    def fails(image: torch.Tensor, mask: torch.Tensor) -> Any:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as caught:
        list(make_loader(photo_set, "train", 2, size=SIZE, transform=fails))
    assert any(note.startswith("raised by the loader's transform on ") and ".tar:" in note
               for note in caught.value.__notes__)  # fmt: skip


def test_an_albumentations_pipeline_given_as_it_is_is_refused_up_front(photo_set: Path) -> None:
    class Compose:  # what albumentations' Compose looks like to the loader
        __module__ = "albumentations.core.composition"

        def __call__(self, **arrays: Any) -> Any:
            return arrays

    with pytest.raises(
        ConfigError, match=r"albumentations takes named arrays; pass Albumentations\(compose\)"
    ):
        make_loader(photo_set, "train", 2, size=SIZE, transform=Compose())


def test_augment_on_a_set_of_png_images_is_refused_up_front(grid_set: Path) -> None:
    with pytest.raises(ConfigError, match=r"^augment: the set stores png images; only JPEG photographs"):
        make_loader(grid_set, "train", 2, size=(32, 32), augment=Augment())


@pytest.mark.parametrize("size", [256, (256,), ("a", 2), (2.5, 3), (True, True)])
def test_a_size_that_is_not_two_whole_numbers_is_one_clear_error(photo_set: Path, size: Any) -> None:
    with pytest.raises(ConfigError, match=r"^size .*: must be \(H, W\), two whole numbers >= 1$"):
        make_loader(photo_set, "train", 2, size=size)


def torchvision_pair(image: torch.Tensor, mask: torch.Tensor) -> Any:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    pipeline = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomResizedCrop(SIZE, antialias=True)])
    return pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))


def test_torchvision_transforms_v2_in_the_workers(photo_set: Path) -> None:
    pytest.importorskip("torchvision")
    runs = [
        rows(make_loader(photo_set, "train", 2, w, size=SIZE, augment=Augment(), transform=torchvision_pair))
        for w in (0, 2)
    ]
    assert_same(runs[0], runs[1])
    raw = shard_samples(photo_set)
    for key, (_, mask) in runs[0].items():
        source = cv2.imdecode(np.frombuffer(raw[key]["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= set(np.unique(source)) | {255}


def test_albumentations_in_the_workers(photo_set: Path) -> None:
    albumentations = pytest.importorskip("albumentations")
    compose = albumentations.Compose(
        [albumentations.HorizontalFlip(p=0.5), albumentations.RandomBrightnessContrast(p=1.0)]
    )
    runs = [
        rows(make_loader(photo_set, "train", 2, w, size=SIZE, transform=Albumentations(compose)))
        for w in (0, 2)
    ]
    assert_same(runs[0], runs[1])
