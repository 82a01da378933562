"""Class colours: the VOC map recorded in manifests stays as it was; the colours figures draw classes in are
distinct, and none is near the grey that marks ignored and padding pixels."""

import numpy as np

from segshards.writer.format.palette import (
    IGNORE_GREY,
    MIN_DELTA_E,
    default_palette,
    delta_e94,
    distinct_colours,
    lab,
    manifest_palette,
    voc_palette,
)


def smallest_difference(rgb: np.ndarray) -> float:
    """The smallest CIE94 difference between any two of (N, 3) RGB colours."""
    colours = lab(rgb)
    return min(float(np.delete(delta_e94(c, colours), i).min()) for i, c in enumerate(colours))


def test_the_voc_map_recorded_in_manifests_is_unchanged() -> None:
    assert voc_palette(8) == [
        [0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
        [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128],
    ]  # fmt: skip
    assert voc_palette(256)[255] == [224, 224, 192]


def test_lab_agrees_with_known_values() -> None:
    known = lab(np.array([(255, 255, 255), (0, 0, 0), (255, 0, 0)]))
    assert np.allclose(known, [(100, 0, 0), (0, 0, 0), (53.24, 80.09, 67.20)], atol=0.05)


def test_class_colours_are_distinct_and_never_near_the_ignore_grey() -> None:
    colours = np.array(distinct_colours(254))
    assert len({tuple(c) for c in colours}) == 254
    assert smallest_difference(colours[:12]) > 25  # a dozen classes tell apart at a glance
    assert smallest_difference(colours[:80]) > 9  # every COCO class apart from every other
    for anchor in (IGNORE_GREY, (0, 0, 0), (255, 255, 255)):
        assert delta_e94(lab(np.array([anchor]))[0], lab(colours)).min() >= MIN_DELTA_E
    palette = default_palette()  # BGR
    assert palette[0].tolist() == [0, 0, 0] and palette[255].tolist() == [255, 255, 255]
    assert palette[1:255, ::-1].tolist() == colours.tolist()
    # What the VOC map gave 80 COCO classes: near-identical dark reds, and a grey near the ignore grey.
    voc = np.array(voc_palette(81)[1:])
    assert smallest_difference(voc) < 2
    assert delta_e94(lab(np.array([IGNORE_GREY]))[0], lab(voc)).min() < 10


def test_manifest_palette_keeps_only_colours_a_source_chose() -> None:
    voc = voc_palette(4)
    chosen = [[0, 0, 0], [250, 50, 80], [150, 150, 152], voc[3]]  # CVAT labelmap: red, a grey, a VOC default
    palette = manifest_palette({"source": {"palette": chosen}})[:, ::-1]  # as RGB
    defaults = default_palette()[:, ::-1]
    assert palette[1].tolist() == [250, 50, 80]  # the user's own colour
    assert palette[2].tolist() == defaults[2].tolist()  # near the ignore grey: replaced
    assert palette[3].tolist() == defaults[3].tolist()  # the VOC map's: replaced
    coco = manifest_palette({"source": {"palette": voc_palette(81)}})
    assert np.array_equal(coco, default_palette())
    assert np.array_equal(manifest_palette({}), default_palette())
