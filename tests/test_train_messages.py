"""The words of `segshards train`'s console lines and refusals: counts pluralised, augmentation named by the
flag a user types, and only classes that scored above 0 called best."""

from segshards.train.cli import summary
from segshards.train.loop import class_line, mismatch
from segshards.train.reports import counted

AUGMENT = {"scale": [0.5, 2.0], "flip": 0.5, "image_fill": 0, "mask_fill": 255}


def test_counts_are_singular_for_one_only() -> None:
    assert [counted(n, "step") for n in (0, 1, 2, 1500)] == ["0 steps", "1 step", "2 steps", "1,500 steps"]
    assert counted(1, "full batch", "full batches") == "1 full batch"
    assert counted(3, "full batch", "full batches") == "3 full batches"


def test_a_split_of_one_sample_is_summarised_in_the_singular() -> None:
    report = {"primary": ["miou"], "splits": {"val": {"miou": 0.5, "samples": 1}}}
    assert summary(report, "val") == "val miou 0.5000 (1 sample)"


def test_resume_refusing_no_augment_names_the_flag() -> None:
    assert mismatch("augment", AUGMENT, None) == (
        "saved with augment: torchvision reference train transform (scale 0.5-2.0, flip 0.5), "
        "this run asks for --no-augment; resume without --no-augment"
    )


def test_resume_refusing_augment_after_no_augment_names_the_flag() -> None:
    assert mismatch("augment", None, AUGMENT | {"flip": 0.0}) == (
        "saved with --no-augment, this run asks for augment: torchvision reference train transform "
        "(scale 0.5-2.0, flip 0.0); resume with --no-augment"
    )


def test_other_resume_differences_show_both_values() -> None:
    assert mismatch("lr", 0.003, 0.01) == (
        "saved with lr=0.003, this run asks for 0.01; resume with the saved settings"
    )
    assert mismatch("augment", AUGMENT, AUGMENT | {"flip": 0.0}).startswith("saved with augment={'scale'")


def test_only_classes_above_zero_are_called_best() -> None:
    present = {"background": 0.0, "person": 0.0, "refrigerator": 0.002, "dog": 0.25, "cat": 0.0}
    assert class_line(present, best=10) == (
        "val IoU per class, best 2 of 5 present: dog 0.250, refrigerator 0.002; 3 scored 0"
    )
    assert class_line(present, best=1) == "val IoU per class, best 1 of 5 present: dog 0.250; 3 scored 0"
    assert (
        class_line({"a": 0.5, "b": 0.25}, best=10)
        == "val IoU per class, best 2 of 2 present: a 0.500, b 0.250"
    )


def test_no_class_above_zero_says_so_instead_of_listing_best() -> None:
    assert class_line({"background": 0.0, "person": 0.0}, best=10) == (
        "val IoU per class: 2 classes present, none above 0"
    )
    assert class_line({"background": 0.0}, best=10) == "val IoU per class: 1 class present, none above 0"
