"""The training losses: InfoNCE over in-batch (and extra) negatives with logQ correction and accidental-hit
masking for the two-tower; per-task weighted binary cross-entropy for the multi-task ranker."""

import torch
import torch.nn.functional as F

MASKED = torch.finfo(torch.float32).min / 2  # a logit no softmax can pick, yet finite (no NaN in gradients)


def info_nce(
    users: torch.Tensor,
    items: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    extra_items: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax: row i scores user i against every item of the batch (its own positive on the diagonal)
    and any extra negatives, then cross-entropy picks the diagonal.

    users, items: [B, D] (row i of items is user i's positive); item_ids: [B] ids to find accidental hits;
    log_q: [B] log of each in-batch item's sampling probability. In-batch negatives are drawn in proportion to
    popularity, so without a correction popular items are pushed down too hard: the logit of item j becomes
    s_ij / t - log q_j (Yi et al., RecSys 2019; subtract, never add: tensorflow/recommenders#219).
    An item that is also the row's positive (the same item twice in the batch) is not a negative: masked.
    """
    logits = users @ items.T / temperature
    hits = item_ids[None, :] == item_ids[:, None]
    if log_q is not None:
        logits = logits - log_q[None, :]
    logits = logits.masked_fill(hits & ~torch.eye(len(item_ids), dtype=torch.bool, device=logits.device), MASKED)
    if extra_items is not None:
        extra = users @ extra_items.T / temperature
        if extra_log_q is not None:
            extra = extra - extra_log_q[None, :]
        extra = extra.masked_fill(extra_ids[None, :] == item_ids[:, None], MASKED)
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits.float(), torch.arange(len(users), device=logits.device))


def multitask_bce(
    logits: torch.Tensor, labels: torch.Tensor, known: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """logits, labels, known: [N, T]; weights: [T]. Each head's BCE over the rows where its label is known
    (a dataset without add-to-carts has none), weighted per task and summed."""
    per_row = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    per_task = (per_row * known).sum(0) / known.sum(0).clamp(min=1)
    return (per_task * weights).sum()
