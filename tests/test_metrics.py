"""segshards.train.metrics against hand-computed cases: confusion matrix, IoU, Dice, exact circle IoU, accuracy."""

import math

import pytest
import torch

from segshards.train.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    accuracy,
    binary_iou,
    circle_iou,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    macro_mean,
    pixel_accuracy,
)
from segshards.train.scores import CircleMetrics, SegmentationMetrics

# target / prediction pairs (t, p) over the kept pixels: (0,0) (1,1) (1,2) (2,2) (2,0); one pixel ignored.
TARGET = torch.tensor([[0, 1, 1], [2, 2, IGNORE_INDEX]], dtype=torch.uint8)
PRED = torch.tensor([[0, 1, 2], [2, 0, 1]])
MATRIX = [[1, 0, 0], [0, 1, 1], [1, 0, 1]]


def test_confusion_matrix_counts_non_ignored_pixels_rows_truth_columns_prediction() -> None:
    matrix = confusion_matrix(PRED, TARGET, 3)
    assert matrix.dtype == torch.int64
    assert matrix.tolist() == MATRIX
    assert int(matrix.sum()) == 5


def test_iou_and_dice_per_class_by_hand() -> None:
    matrix = torch.tensor(MATRIX)
    # class 0: TP 1, FP 1, FN 0; class 1: TP 1, FP 0, FN 1; class 2: TP 1, FP 1, FN 1
    assert iou_per_class(matrix) == pytest.approx([1 / 2, 1 / 2, 1 / 3])
    assert dice_per_class(matrix) == pytest.approx([2 / 3, 2 / 3, 2 / 4])
    assert pixel_accuracy(matrix) == pytest.approx(3 / 5)
    for iou, dice in zip(iou_per_class(matrix), dice_per_class(matrix), strict=True):
        assert dice == pytest.approx(2 * iou / (1 + iou))


def test_accumulating_batches_equals_one_big_batch() -> None:
    acc = ConfusionMatrix(3)
    acc.update(PRED[:1], TARGET[:1])
    acc.update(PRED[1:], TARGET[1:])
    assert acc.result().tolist() == MATRIX
    assert ConfusionMatrix(3).result().tolist() == [[0] * 3] * 3


def test_class_absent_from_truth_and_prediction_is_excluded_not_counted_as_one() -> None:
    matrix = confusion_matrix(PRED, TARGET, 4)  # class 3 appears nowhere
    assert iou_per_class(matrix)[3] is None
    assert dice_per_class(matrix)[3] is None
    assert macro_mean(dice_per_class(matrix)) == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert macro_mean(dice_per_class(matrix), [1, 2, 3]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert macro_mean([None, None]) is None


def test_class_predicted_but_absent_from_truth_scores_zero() -> None:
    target = torch.zeros(2, 2, dtype=torch.uint8)
    pred = torch.tensor([[0, 3], [0, 0]])
    assert iou_per_class(confusion_matrix(pred, target, 4)) == [3 / 4, None, None, 0.0]


def test_binary_iou_with_empty_masks() -> None:
    empty = torch.zeros(4, 4, dtype=torch.uint8)
    some = empty.clone()
    some[1:3, 1:3] = 1  # 4 pixels
    assert binary_iou(confusion_matrix(empty, empty, 2)) is None  # nothing anywhere: undefined, not 1
    assert binary_iou(confusion_matrix(some, empty, 2)) == 0.0  # predicted on an empty truth
    assert binary_iou(confusion_matrix(empty, some, 2)) == 0.0  # missed everything
    assert binary_iou(confusion_matrix(some, some, 2)) == 1.0
    half = empty.clone()
    half[1:3, 1] = 1  # 2 of the 4 pixels, no false positives
    assert binary_iou(confusion_matrix(half, some, 2)) == 0.5
    with pytest.raises(ValueError, match="2x2"):
        binary_iou(torch.tensor(MATRIX))


def test_all_pixels_ignored() -> None:
    target = torch.full((2, 2), IGNORE_INDEX, dtype=torch.uint8)
    matrix = confusion_matrix(torch.zeros(2, 2), target, 2)
    assert matrix.tolist() == [[0, 0], [0, 0]]
    assert pixel_accuracy(matrix) is None
    assert iou_per_class(matrix) == [None, None]


def test_confusion_matrix_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(PRED, TARGET[:1], 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(PRED, TARGET, 2)


def test_grid_report_macro_dice_over_digits_background_apart() -> None:
    # 11 classes: background 0, digit d is class d + 1. Digits 0 and 1 present, the others absent everywhere.
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 2]]], dtype=torch.uint8)
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]]]), 11).permute(0, 3, 1, 2)
    metrics = SegmentationMetrics(["background"] + [str(d) for d in range(10)])
    metrics.update(logits.float(), {"image": target[:, None], "mask": target}, torch.tensor(0.5))
    report = metrics.result()
    # background: TP 1, FP 2, FN 1 -> 2/5; digit 0: TP 2, FP 1 -> 4/5; digit 1: TP 2, FN 2 -> 4/6
    assert report["dice_background"] == pytest.approx(2 / 5)
    assert report["dice_per_class"]["0"] == pytest.approx(4 / 5)
    assert report["dice_per_class"]["1"] == pytest.approx(4 / 6)
    assert report["dice_per_class"]["9"] is None
    assert report["dice_macro"] == pytest.approx((4 / 5 + 4 / 6) / 2)
    assert report["samples"] == 1 and report["loss"] == 0.5


def test_foreground_report_has_iou() -> None:
    target = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8)
    logits = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # predicts [[0,1],[1,0]]
    metrics = SegmentationMetrics(["background", "foreground"])
    metrics.update(logits, {"image": target[:, None], "mask": target}, torch.tensor(0.0))
    report = metrics.result()
    assert report["iou"] == pytest.approx(2 / 3)
    assert report["iou_per_class"] == {"background": pytest.approx(1 / 2), "foreground": pytest.approx(2 / 3)}


def lens_iou(d: float, r: float) -> float:
    """Two equal circles at distance d, by the textbook formula."""
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    return lens / (2 * math.pi * r * r - lens)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((5, 5, 2), (5, 5, 2), 1.0),  # identical
        ((0, 0, 1), (3, 0, 1), 0.0),  # disjoint
        ((0, 0, 1), (2, 0, 1), 0.0),  # touching from outside
        ((0, 0, 1), (0, 0, 2), 0.25),  # concentric: (1/2)^2
        ((0.5, 0, 1), (0, 0, 2), 0.25),  # contained off-centre: still (r_small/r_large)^2
        ((1, 0, 1), (0, 0, 2), 0.25),  # touching from inside
        ((0, 0, 2), (0.3, 0.4, 1), 0.25),  # contained, the other argument order
        ((0, 0, 1), (1, 0, 1), lens_iou(1, 1)),  # lens: 0.24301
        ((0, 0, 3), (0, 2, 3), lens_iou(2, 3)),
        ((0, 0, 0), (0, 0, 0), 1.0),  # two identical points
        ((0, 0, 0), (1, 0, 0), 0.0),
        ((0, 0, 0), (0, 0, 1), 0.0),  # a point against a disc
        ((0, 0, -1), (0, 0, 1), 0.0),  # a negative radius counts as 0
    ],
)
def test_circle_iou_closed_form(a: tuple[float, ...], b: tuple[float, ...], expected: float) -> None:
    got = circle_iou(torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32))
    assert got.dtype == torch.float64
    assert float(got[0]) == pytest.approx(expected, abs=1e-9)
    assert float(circle_iou(torch.tensor([b]), torch.tensor([a]))[0]) == pytest.approx(expected, abs=1e-9)


def test_lens_hand_value() -> None:
    # equal unit circles one radius apart: lens = 2pi/3 - sqrt(3)/2 = 1.228370, union = 2pi - lens
    assert lens_iou(1, 1) == pytest.approx(1.2283696986 / (2 * math.pi - 1.2283696986))


def test_circle_iou_matches_rasterised_area() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(20, 3, generator=generator) * torch.tensor([4.0, 4.0, 2.0]) + torch.tensor([0, 0, 0.5])
    b = torch.rand(20, 3, generator=generator) * torch.tensor([4.0, 4.0, 2.0]) + torch.tensor([0, 0, 0.5])
    axis = torch.linspace(-3, 7, 401, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    for p, q in zip(a, b, strict=True):
        in_p = (xs - p[0]) ** 2 + (ys - p[1]) ** 2 <= p[2] ** 2
        in_q = (xs - q[0]) ** 2 + (ys - q[1]) ** 2 <= q[2] ** 2
        raster = (in_p & in_q).sum().item() / max((in_p | in_q).sum().item(), 1)
        assert float(circle_iou(p[None], q[None])[0]) == pytest.approx(raster, abs=1e-2)


def test_circle_iou_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        circle_iou(torch.zeros(2, 2), torch.zeros(2, 2))


def test_accuracy() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(logits, torch.tensor([1, 0, 0, 0])) == 0.75
    assert accuracy(logits[:0], torch.tensor([], dtype=torch.int64)) is None


def test_circle_report_per_class() -> None:
    image = torch.zeros(3, 1, 28, 28)
    logits = torch.nn.functional.one_hot(torch.tensor([3, 3, 5]), 10).float()
    truth = torch.tensor([[14.0, 14.0, 10.0], [14.0, 14.0, 10.0], [10.0, 10.0, 5.0]])
    predicted = torch.tensor([[14.0, 14.0, 10.0], [14.0, 14.0, 5.0], [10.0, 10.0, 5.0]]) / 28  # normalised
    metrics = CircleMetrics([str(d) for d in range(10)])
    batch = {"image": image, "label": torch.tensor([3, 3, 7]), "circle": truth}
    metrics.update((logits, predicted), batch, torch.tensor(1.0))
    report = metrics.result()
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["accuracy_per_class"]["3"] == 1.0 and report["accuracy_per_class"]["7"] == 0.0
    assert report["accuracy_per_class"]["0"] is None
    assert report["circle_iou"] == pytest.approx((1 + 0.25 + 1) / 3)
    assert report["circle_iou_per_class"]["3"] == pytest.approx(0.625)


def coco_like_report() -> dict[str, object]:
    """4 classes (background, cat, dog, bird); two truth pixels ignored (255), bird nowhere.

    truth      [[0, 0, 1, 1], [2, 2, 255, 255]]
    prediction [[0, 1, 1, 1], [2, 0, 2,   1  ]]
    Counted pixels: 6. C = background: 1 right, 1 as cat; cat: 2 right; dog: 1 right, 1 as background.
    """
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]], dtype=torch.uint8)
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 1]]])
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    metrics = SegmentationMetrics(["background", "cat", "dog", "bird"])
    metrics.update(logits, {"image": target[:, None], "mask": target}, torch.tensor(1.0))
    return metrics.result()


def test_iou_per_class_is_keyed_by_name_with_absent_classes_none() -> None:
    report = coco_like_report()
    # background: TP 1, FP 1 (dog predicted background), FN 1 -> 1/3; cat: TP 2, FP 1 -> 2/3;
    # dog: TP 1, FN 1 -> 1/2; bird: in neither truth nor prediction -> None
    assert report["iou_per_class"] == {
        "background": pytest.approx(1 / 3),
        "cat": pytest.approx(2 / 3),
        "dog": pytest.approx(1 / 2),
        "bird": None,
    }


def test_miou_averages_present_classes_background_included() -> None:
    assert coco_like_report()["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # 0.5


def test_miou_objects_leaves_background_out() -> None:
    assert coco_like_report()["miou_objects"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # 7/12


def test_pixel_accuracy_counts_only_non_ignored_pixels() -> None:
    report = coco_like_report()
    assert report["pixel_accuracy"] == pytest.approx(4 / 6)  # the two 255 pixels count nowhere
    assert sum(map(sum, report["confusion_matrix"])) == 6


def test_a_class_only_predicted_counts_zero_in_miou() -> None:
    target = torch.zeros(1, 2, 2, dtype=torch.uint8)
    pred = torch.tensor([[[0, 0], [0, 3]]])  # bird predicted on one background pixel
    metrics = SegmentationMetrics(["background", "cat", "dog", "bird"])
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    metrics.update(logits, {"image": target[:, None], "mask": target}, torch.tensor(0.0))
    report = metrics.result()
    assert report["miou"] == pytest.approx((3 / 4 + 0.0) / 2)  # background 3/4, bird 0; cat, dog absent
    assert report["miou_objects"] == 0.0
