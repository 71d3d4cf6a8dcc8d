"""Dataset-level mIoU (mmseg semantics) against an independent confusion-matrix computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from groupvit.errors import InputError
from groupvit.evaluate.miou import IoUAccumulator, SegmentationReport


def confusion_reference(pairs, num_classes, ignore=255):
    """IoU per class, mIoU and pixel accuracy from one confusion matrix over all images."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, label in pairs:
        for gt_value, pred_value in zip(label.ravel().tolist(), pred.ravel().tolist(), strict=True):
            if gt_value != ignore:
                matrix[gt_value, pred_value] += 1
    ious = []
    for c in range(num_classes):
        union = matrix[c, :].sum() + matrix[:, c].sum() - matrix[c, c]
        ious.append(matrix[c, c] / union if union else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    return np.array(ious), sum(present) / len(present), np.trace(matrix) / matrix.sum()


def test_two_by_two_by_hand():
    acc = IoUAccumulator(3)
    acc.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [2, 255]]))
    result = acc.compute()
    # class 0: I 1 U 1; class 1: I 1, pred 2 (the ignored pixel is dropped), gt 1 -> U 2; class 2: I 0 U 1.
    np.testing.assert_allclose(result.iou, [1.0, 0.5, 0.0])
    assert result.miou == pytest.approx(0.5)
    assert result.pixel_accuracy == pytest.approx(2 / 3)
    np.testing.assert_allclose(result.accuracy, [1.0, 1.0, 0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_maps_match_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    pairs = []
    for _ in range(4):
        shape = tuple(rng.integers(5, 40, size=2))
        # Classes 5 and 6 never appear in the ground truth; class 6 is never predicted either.
        label = rng.integers(0, 5, size=shape)
        label[rng.random(shape) < 0.2] = 255
        # Half of the pixels right, the rest random among 0..5.
        pred = np.where((rng.random(shape) < 0.5) & (label != 255), label, rng.integers(0, 6, size=shape))
        pairs.append((pred, label))
    acc = IoUAccumulator(num_classes)
    for pred, label in pairs:
        acc.update(torch.from_numpy(pred), label)
    result = acc.compute()
    ious, miou, pixel_accuracy = confusion_reference(pairs, num_classes)
    np.testing.assert_allclose(result.iou, ious, rtol=0, atol=1e-6)
    assert math.isnan(result.iou[6]) and result.iou[5] == 0.0  # absent everywhere -> NaN; only predicted -> 0
    assert abs(result.miou - miou) < 1e-6
    assert abs(result.pixel_accuracy - pixel_accuracy) < 1e-6


def test_dataset_level_is_not_the_mean_of_per_image_scores():
    acc = IoUAccumulator(2)
    acc.update(np.zeros((1, 1), dtype=int), np.zeros((1, 1), dtype=int))  # image 1: perfect, 1 pixel
    acc.update(np.zeros((1, 9), dtype=int), np.ones((1, 9), dtype=int))  # image 2: all wrong, 9 pixels
    result = acc.compute()
    np.testing.assert_allclose(result.iou, [1 / 10, 0.0])
    assert result.miou == pytest.approx(0.05)


def test_out_of_range_values_count_in_no_bin():
    # mmseg uses histc over 0..C-1: a prediction of 9 counts nowhere, its ground-truth pixel still counts.
    acc = IoUAccumulator(2)
    acc.update(np.array([[9, 1]]), np.array([[0, 1]]))
    result = acc.compute()
    np.testing.assert_allclose(result.iou, [0.0, 1.0])
    assert result.pixel_accuracy == pytest.approx(0.5)


def test_bad_input_and_empty():
    acc = IoUAccumulator(2)
    with pytest.raises(InputError, match="differ in shape"):
        acc.update(np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int))
    result = acc.compute()
    assert math.isnan(result.miou) and math.isnan(result.pixel_accuracy)
    with pytest.raises(InputError):
        IoUAccumulator(0)


def test_report_table_and_json():
    acc = IoUAccumulator(3)
    acc.update(np.array([[0, 1]]), np.array([[0, 1]]))
    report = SegmentationReport(acc.compute(), ("background", "cat", "dog"), 1, 0.5)
    data = report.to_dict()
    assert data["mIoU"] == 100.0 and data["per_class"]["dog"] == {"IoU": None, "Acc": None}
    table = report.table()
    assert "dog" in table and "nan" in table and "mIoU 100.00" in table


def test_group_oracle_gives_each_group_its_majority_label():
    from groupvit.evaluate.miou import group_oracle_labels

    groups = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 2]])
    label = np.array([[5, 5, 5], [3, 5, 3], [255, 255, 0]])
    # group 0 holds labels 5, 5, 3 -> 5; group 1 holds 5, 5, 3 -> 5; group 2 holds 0 (ignored pixels do not vote)
    np.testing.assert_array_equal(group_oracle_labels(groups, label), [[5, 5, 5], [5, 5, 5], [0, 0, 0]])
    # ties go to the smaller label; a group of ignored pixels stays ignored
    np.testing.assert_array_equal(group_oracle_labels(np.array([[7, 7]]), np.array([[2, 1]])), [[1, 1]])
    np.testing.assert_array_equal(group_oracle_labels(np.array([[0, 1]]), np.array([[255, 4]])), [[255, 4]])
    with pytest.raises(InputError, match="differ in shape"):
        group_oracle_labels(np.zeros((2, 2)), np.zeros((2, 3)))
