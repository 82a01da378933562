"""Metrics: a confusion matrix over non-ignored pixels with IoU and Dice from it, exact circle IoU, accuracy.

Definitions (per split; pixels whose truth is `IGNORE_INDEX` count nowhere):
- confusion matrix C (int64): C[t, p] = number of pixels of true class t predicted as p, accumulated with
  `torch.bincount` over the whole split, so every ratio below is over all pixels of the split at once.
- per class k: TP = C[k, k], FP = column sum - TP, FN = row sum - TP;
  IoU_k = TP / (TP + FP + FN), Dice_k = 2 TP / (2 TP + FP + FN) (= 2 IoU / (1 + IoU)).
- a class absent from both truth and prediction on the whole split (TP + FP + FN = 0) has no IoU or Dice:
  it is reported as None and left out of the macro mean (the mmsegmentation / torchmetrics convention),
  never counted as 1 or as 0.
- macro mean: the plain mean over the chosen classes that have a value (for the MNIST digit grid: digits
  0..9, i.e. mask classes 1..10; background is reported on its own).
- `miou`: the macro mean of IoU over every class present in the truth or the prediction (TP + FP + FN > 0),
  background included, as torchvision's segmentation reference reports it (without its NaN);
  `miou_objects`: the same mean with the background class left out.
- pixel accuracy: sum of the diagonal over the sum of the matrix (correct pixels over counted pixels).
- binary IoU: IoU of class 1 (foreground) of a 2-class matrix.
- circle IoU: area(A and B) / area(A or B) of two discs, exact closed form: 0 when disjoint, the smaller
  disc over the larger, (r_small / r_large)^2, when one contains the other, else the lens area. Negative
  radii count as 0; two zero-area discs score 1 if they coincide, else 0.
- accuracy: fraction of samples whose arg-max class equals the label.
"""

import math

import torch

from segshards.writer.format.schema import IGNORE

IGNORE_INDEX = IGNORE  # the format's ignore id, as metrics name it (ignore_index, as torch does)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = truth, columns = prediction, ignored pixels left out."""
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(
            f"confusion_matrix: target class outside 0..{num_classes - 1} (and not {ignore_index})"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates `confusion_matrix` over batches (on the device of the first batch)."""

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        counts = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        self.matrix = counts if self.matrix is None else self.matrix + counts

    def result(self) -> torch.Tensor:
        """The int64 matrix on the CPU (zeros before any update)."""
        if self.matrix is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.matrix.cpu()


def _tp_fp_fn(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = matrix.to(torch.int64)
    tp = m.diagonal()
    return tp, m.sum(0) - tp, m.sum(1) - tp


def iou_per_class(matrix: torch.Tensor) -> list[float | None]:
    """IoU of each class; None for a class absent from both truth and prediction."""
    tp, fp, fn = _tp_fp_fn(matrix)
    return [None if d == 0 else t / d for t, d in zip(tp.tolist(), (tp + fp + fn).tolist(), strict=True)]


def dice_per_class(matrix: torch.Tensor) -> list[float | None]:
    """Dice (F1) of each class; None for a class absent from both truth and prediction."""
    tp, fp, fn = _tp_fp_fn(matrix)
    return [
        None if d == 0 else 2 * t / d for t, d in zip(tp.tolist(), (2 * tp + fp + fn).tolist(), strict=True)
    ]


def binary_iou(matrix: torch.Tensor) -> float | None:
    """IoU of the foreground (class 1) of a 2x2 matrix; None when neither truth nor prediction has any."""
    if matrix.shape != (2, 2):
        raise ValueError(f"binary_iou: expected a 2x2 confusion matrix, got {tuple(matrix.shape)}")
    return iou_per_class(matrix)[1]


def macro_mean(values: list[float | None], classes: list[int] | range | None = None) -> float | None:
    """Mean of `values` over `classes` (default: all), skipping None; None if every one is None."""
    chosen = [values[k] for k in (range(len(values)) if classes is None else classes)]
    present = [v for v in chosen if v is not None]
    return sum(present) / len(present) if present else None


def pixel_accuracy(matrix: torch.Tensor) -> float | None:
    """Correct pixels over counted pixels; None when no pixel counted."""
    total = int(matrix.sum())
    return int(matrix.diagonal().sum()) / total if total else None


def circle_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exact IoU of discs given as (..., 3) rows (cx, cy, r); returns (...) float64.

    Lens area for two circles at centre distance d with radii r1, r2 (|r1 - r2| < d < r1 + r2):
    r1^2 acos((d^2 + r1^2 - r2^2) / (2 d r1)) + r2^2 acos((d^2 + r2^2 - r1^2) / (2 d r2))
    - sqrt((-d + r1 + r2)(d + r1 - r2)(d - r1 + r2)(d + r1 + r2)) / 2.
    """
    if pred.shape != target.shape or pred.shape[-1:] != (3,):
        raise ValueError(
            f"circle_iou: expected matching (..., 3) tensors, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    p, t = pred.double(), target.double()
    r1, r2 = p[..., 2].clamp(min=0), t[..., 2].clamp(min=0)
    d = torch.hypot(p[..., 0] - t[..., 0], p[..., 1] - t[..., 1])
    small, large = torch.minimum(r1, r2), torch.maximum(r1, r2)
    safe_d = d.clamp(min=1e-12)
    safe_r1, safe_r2 = r1.clamp(min=1e-12), r2.clamp(min=1e-12)
    a1 = ((d * d + r1 * r1 - r2 * r2) / (2 * safe_d * safe_r1)).clamp(-1, 1).acos()
    a2 = ((d * d + r2 * r2 - r1 * r1) / (2 * safe_d * safe_r2)).clamp(-1, 1).acos()
    kite = ((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)).clamp(min=0).sqrt()
    lens = r1 * r1 * a1 + r2 * r2 * a2 - kite / 2
    inter = torch.where(
        d >= r1 + r2, torch.zeros_like(d), torch.where(d <= large - small, math.pi * small**2, lens)
    )
    union = math.pi * (r1 * r1 + r2 * r2) - inter
    degenerate = (d == 0).double()  # both discs of zero area: same point or not
    return torch.where(union > 0, inter / union.clamp(min=1e-300), degenerate)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Fraction of rows of (N, K) logits whose arg-max equals (N,) labels; None for no rows."""
    if len(labels) == 0:
        return None
    return (logits.argmax(dim=1) == labels).double().mean().item()
