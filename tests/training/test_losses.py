"""The losses on hand-computed cases: InfoNCE is cross-entropy over the logits matrix, logQ subtracts log q,
accidental hits are masked, gradients reach both towers; the multi-task BCE masks unknown labels."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import info_nce, multitask_bce


def test_info_nce_is_cross_entropy_over_the_logits_matrix():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = info_nce(users, items, torch.tensor([1, 2]), temperature=0.5)
    # Row 0 logits: [1, 0.6] / 0.5 = [2, 1.2], target 0; row 1: [0, 0.8] / 0.5 = [0, 1.6], target 1.
    expected = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
                - math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))) / 2  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    logits = users @ items.T / 0.5
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(2)).item(), rel=1e-6)


def test_log_q_correction_subtracts_log_q_from_every_column():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    q = torch.tensor([0.9, 0.1])
    loss = info_nce(users, items, torch.tensor([1, 2]), temperature=1.0, log_q=q.log())
    logits = users @ items.T - q.log()[None, :]
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(2)).item(), rel=1e-6)
    # The popular item 0 is a weaker negative for user 1 after the correction, so that user's loss falls.
    plain = F.cross_entropy(users @ items.T, torch.arange(2), reduction="none")
    corrected = F.cross_entropy(logits, torch.arange(2), reduction="none")
    assert corrected[1] < plain[1]


def test_accidental_hits_are_masked_but_each_row_keeps_its_positive():
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 hold the same item 7
    loss = info_nce(users, items, torch.tensor([7, 7, 3]), temperature=1.0)
    logits = users @ items.T
    logits[0, 1] = logits[1, 0] = -1e30  # item 7 is not a negative of a row whose positive is item 7
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(3)).item(), rel=1e-6)


def test_extra_negatives_join_the_softmax_and_their_hits_are_masked():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    extra = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    loss = info_nce(users, items, torch.tensor([1, 2]), 1.0, extra_items=extra, extra_ids=torch.tensor([9, 1]))
    logits = torch.cat([users @ items.T, users @ extra.T], dim=1)
    logits[0, 3] = -1e30  # extra item 1 is row 0's own positive
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(2)).item(), rel=1e-6)


def test_gradients_flow_to_users_and_items():
    users = torch.randn(4, 3, requires_grad=True)
    items = torch.randn(4, 3, requires_grad=True)
    info_nce(F.normalize(users, dim=-1), F.normalize(items, dim=-1), torch.arange(4), 0.1).backward()
    assert users.grad.abs().sum() > 0 and items.grad.abs().sum() > 0
    assert torch.isfinite(users.grad).all() and torch.isfinite(items.grad).all()


def test_multitask_bce_ignores_heads_without_labels_and_weights_tasks():
    logits = torch.tensor([[0.0, 5.0], [0.0, -5.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    known = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the second task has no labels in this data
    loss = multitask_bce(logits, labels, known, torch.tensor([2.0, 1.0]))
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)
