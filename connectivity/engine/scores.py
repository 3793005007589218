"""Scores of pairs as detectors (issue 23): the ROC curve and its area, of a score (a path's
energy barrier, or minus its lowest margin) that should be higher for one kind of pair
(adversarial ends) than for the other (natural ends).

The curve and the area are scikit-learn's (``roc_curve``, ``roc_auc_score``: the area by the
trapezoidal rule over every threshold, so tied scores count one half, the Mann-Whitney
statistic), in float64: torchmetrics' float32 area would show rounding in the third digit of
large sets.
"""

from __future__ import annotations

import math

import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _roc_curve
from torch import Tensor


def _checked(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """``(scores, positive)`` as float64 and long, with non-finite scores' pairs left out.

    Raises:
        ValueError: other shapes than two ``(N,)`` tensors.
    """
    scores, positive = torch.as_tensor(scores).cpu(), torch.as_tensor(positive).cpu()
    if scores.dim() != 1 or scores.shape != positive.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and positive {tuple(positive.shape)} must be two "
            "(N,) tensors"
        )
    finite = torch.isfinite(scores.double())
    return scores.double()[finite], positive.bool()[finite].long()


def auroc(scores: Tensor, positive: Tensor) -> float:
    """The area under the ROC curve of ``scores`` ``(N,)`` as a detector of ``positive``
    ``(N,)`` (bool: the kind the score should rank higher): the chance that a random positive
    scores above a random negative, ties counting one half. NaN where either kind is missing
    (after leaving out non-finite scores)."""
    scores, positive = _checked(scores, positive)
    if int(positive.sum()) in (0, positive.numel()):
        return math.nan
    return float(roc_auc_score(positive.numpy(), scores.numpy()))


def roc_curve(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(false positive rate, true positive rate, threshold)`` of ``scores`` as a detector of
    ``positive`` (see :func:`auroc`), each ``(K,)``, from the highest threshold down."""
    scores, positive = _checked(scores, positive)
    fpr, tpr, thresholds = _roc_curve(positive.numpy(), scores.numpy(), drop_intermediate=False)
    return torch.from_numpy(fpr), torch.from_numpy(tpr), torch.from_numpy(thresholds)
