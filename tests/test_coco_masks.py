"""Instance RLEs and overlap policies (writer/coco_masks.py) on hand-made cases and against pycocotools."""

import contextlib
import io
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segshards.writer.sources.coco_annotations import Annotation
from segshards.writer.sources.coco_masks import Instance, annotation_rle, compose, one_runs, string_counts
from segshards.writer.sources.photos import BadRecord
from tests.coco_fixtures import disc, fixture_images, fixture_json, list_rle, random_polygon, rect, string_rle


def ann(segmentation: Any, *, ann_id: int = 7, crowd: bool = False) -> Annotation:
    return Annotation(ann_id, 3, 1, crowd, segmentation)


def decoded(segmentation: Any, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(annotation_rle(ann(segmentation), h, w, "f.json")).astype(bool)


def test_string_counts_decode_what_pycocotools_encodes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 40, size=2)
        mask = np.asfortranarray(rng.random((h, w)) < rng.random())
        counts = mask_utils.encode(mask.astype(np.uint8))["counts"].decode()
        runs = string_counts(counts, "x")
        assert sum(runs) == h * w
        assert np.array_equal(decoded({"size": [int(h), int(w)], "counts": counts}, h, w), mask)


def test_rectangle_polygon_fills_the_half_open_pixel_box() -> None:
    expected = np.zeros((8, 10), bool)
    expected[2:5, 2:6] = True
    assert np.array_equal(decoded([rect(2, 2, 6, 5)], 8, 10), expected)


def test_each_segmentation_form_matches_pycocotools_annToMask() -> None:
    """Polygons (one and two parts), list-count and string-count RLE: the same pixels as COCO.annToMask."""
    data = fixture_json(fixture_images())
    rng = np.random.default_rng(1)
    data["annotations"].append(
        {"id": 999, "image_id": 2, "category_id": 18, "iscrowd": 0,
         "segmentation": [random_polygon(rng, 60, 80, vertices=9), random_polygon(rng, 60, 80, vertices=7)]}
    )  # fmt: skip
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    for a in data["annotations"]:
        h, w = sizes[a["image_id"]]
        assert np.array_equal(decoded(a["segmentation"], h, w), coco.annToMask(a).astype(bool)), a["id"]


@pytest.mark.parametrize(
    ("segmentation", "reason", "message"),
    [
        ([], "bad-polygon", "empty segmentation"),
        ([[1, 1, 5, 1]], "bad-polygon", "polygon part 0 has 2 point(s), needs at least 3"),
        ([[1, 1]], "bad-polygon", "polygon part 0 has 1 point(s), needs at least 3"),
        (
            [rect(0, 0, 4, 4), [1, 1, 5, 1, 5]],
            "bad-polygon",
            "polygon part 1 has 2 point(s), needs at least 3",
        ),
        ([[1, 1, 5, 1, 5, 5, 1]], "bad-polygon", "polygon part 0 has an odd number (7) of coordinates"),
        ([[1, 1, 5, 1, 5, float("nan")]], "bad-polygon", "polygon part 0 is not a list of finite numbers"),
        ([[1, 1, 5, 1, 5, True]], "bad-polygon", "polygon part 0 is not a list of finite numbers"),
        ({"size": [10, 10], "counts": [80]}, "bad-rle", "RLE runs cover 80 pixels, the image has 100"),
        ({"size": [10, 10], "counts": [110, -10]}, "bad-rle", "outside 0..2**32-1"),
        ({"size": [10, 10], "counts": "5@"}, "bad-rle", "negative run length"),
        ({"size": [10, 8], "counts": [80]}, "rle-size", "RLE size 10x8 (HxW) disagrees with image 10x10"),
        ({"size": [10, 10], "counts": "0"}, "bad-rle", "RLE runs cover 0 pixels"),
        ({"size": [10, 10], "counts": "\x7f"}, "bad-rle", "compressed RLE counts hold"),
        ({"size": [10, 10], "counts": "o"}, "bad-rle", "end in the middle of a number"),
        ({"size": [10, 10], "counts": 5}, "bad-rle", "RLE counts are int"),
        ({"counts": [100]}, "missing-key", "RLE segmentation has no 'size'"),
    ],
)
def test_bad_geometry_is_named(segmentation: Any, reason: str, message: str) -> None:
    with pytest.raises(BadRecord) as caught:
        annotation_rle(ann(segmentation), 10, 10, "f.json")
    assert caught.value.reason == reason
    assert message in str(caught.value)
    assert str(caught.value).startswith("f.json: annotation 7 (image 3): ")


def inst(cls: int, mask: np.ndarray, ann_id: int, *, crowd: bool = False) -> Instance:
    return Instance(cls, crowd, ann_id, mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((4, 6), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_overlap_policies_by_hand() -> None:
    # A large class-3 box under a small class-1 box, a class-2 box across its corner, one crowd pixel.
    big, small, right = box(0, 0, 4, 3), box(1, 1, 3, 2), box(3, 0, 6, 1)
    crowd = box(5, 3, 6, 4)
    items = [inst(3, big, 1), inst(1, small, 2), inst(2, right, 3), inst(2, crowd, 4, crowd=True)]
    assert compose(items, 4, 6, "ignore").tolist() == [
        [3, 3, 3, 255, 2, 2],
        [3, 255, 255, 3, 0, 0],
        [3, 3, 3, 3, 0, 0],
        [0, 0, 0, 0, 0, 255],
    ]
    assert compose(items, 4, 6, "max").tolist() == [
        [3, 3, 3, 3, 2, 2],
        [3, 3, 3, 3, 0, 0],
        [3, 3, 3, 3, 0, 0],
        [0, 0, 0, 0, 0, 255],
    ]
    assert compose(items, 4, 6, "z-order").tolist() == [
        [3, 3, 3, 2, 2, 2],
        [3, 1, 1, 3, 0, 0],
        [3, 3, 3, 3, 0, 0],
        [0, 0, 0, 0, 0, 255],
    ]


def test_same_class_overlap_is_not_ignored_and_ties_put_the_higher_id_on_top() -> None:
    a, b = box(0, 0, 3, 2), box(2, 0, 5, 2)  # equal areas, overlapping at column 2
    assert compose([inst(1, a, 1), inst(1, b, 2)], 4, 6, "ignore")[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert compose([inst(2, a, 9), inst(1, b, 4)], 4, 6, "z-order")[0].tolist() == [2, 2, 2, 1, 1, 0]
    assert compose([inst(2, a, 3), inst(1, b, 4)], 4, 6, "z-order")[0].tolist() == [2, 2, 1, 1, 1, 0]


def test_crowd_wins_over_every_instance_and_the_result_is_c_ordered() -> None:
    m = disc(20, 30, 10, 10, 6)
    crowd = {"size": [20, 30], "counts": list_rle(m)["counts"]}
    out = compose(
        [inst(4, np.ones((20, 30), bool), 1), Instance(1, True, 2, mask_utils.frPyObjects(crowd, 20, 30))],
        20,
        30,
        "ignore",
    )
    assert out.flags.c_contiguous and out.dtype == np.uint8
    assert np.array_equal(out == 255, m) and set(np.unique(out[~m])) == {4}
    assert string_rle(m)["size"] == [20, 30]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown overlap policy"):
        compose([], 2, 2, "min")


def painted(instances: list[Instance], h: int, w: int, overlap: str) -> np.ndarray:
    """The reference: decode every instance with pycocotools and paint, per policy."""
    out = np.zeros((h, w), np.uint8)
    things = [i for i in instances if not i.crowd]
    masks = {i.ann_id: mask_utils.decode(i.rle).astype(bool) for i in instances}
    if overlap == "z-order":
        for i in sorted(things, key=lambda i: (-int(masks[i.ann_id].sum()), i.ann_id)):
            out[masks[i.ann_id]] = i.cls
    else:
        seen = np.zeros((h, w), np.int16)
        for c in sorted({i.cls for i in things}):
            m = np.any([masks[i.ann_id] for i in things if i.cls == c], axis=0)
            out[m] = c
            seen += m
        if overlap == "ignore":
            out[seen > 1] = 255
    for i in instances:
        if i.crowd:
            out[masks[i.ann_id]] = 255
    return out


@pytest.mark.parametrize("overlap", ["ignore", "z-order", "max"])
def test_run_sweep_equals_painting_decoded_masks(overlap: str) -> None:
    rng = np.random.default_rng(5)
    for trial in range(30):
        h, w = (int(v) for v in rng.integers(1, 90, size=2))
        instances = []
        for ann_id in range(int(rng.integers(0, 12))):
            parts = [random_polygon(rng, h, w, vertices=int(rng.integers(3, 12)))]
            crowd = bool(rng.random() < 0.15)
            segmentation = list_rle(decoded(parts, h, w)) if crowd else parts
            rle = annotation_rle(ann(segmentation, ann_id=ann_id), h, w, "f.json")
            instances.append(Instance(int(rng.integers(1, 6)), crowd, ann_id, rle))
        assert np.array_equal(compose(instances, h, w, overlap), painted(instances, h, w, overlap)), trial


def test_one_runs_decodes_many_strings_at_once() -> None:
    rng = np.random.default_rng(3)
    masks = [rng.random((int(h), int(w))) < rng.random() for h, w in rng.integers(1, 30, size=(25, 2))]
    masks += [np.zeros((3, 4), bool), np.ones((3, 4), bool)]
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    starts, ends, owner = one_runs(rles)
    for k, m in enumerate(masks):
        flat = np.zeros(m.size, bool)
        for a, b in zip(starts[owner == k], ends[owner == k], strict=True):
            flat[a:b] = True
        assert np.array_equal(flat, m.T.ravel()), k
