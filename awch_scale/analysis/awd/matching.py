"""Matched batches and probe partners (SPEC section 4), index bookkeeping only.

Everything here works on integer labels and the target-layer inputs a_p and draws
from one ``numpy.random.Generator``, so a seed fixes every index the AWD analysis
uses; the indices are stored, and any AWD number can be recomputed from them.

Class-balanced batch of size B: with C the number of classes present in the analysis
set, every class gets floor(B/C) samples and the B mod C left over go to classes
picked at random without replacement (the same classes in both batches of a draw).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    classes = np.unique(labels)
    return classes, [np.flatnonzero(labels == c) for c in classes]


def _class_counts(n_classes: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Samples per class of one class-balanced batch: floor(B/C), +1 for B mod C random classes."""
    counts = np.full(n_classes, batch_size // n_classes, dtype=np.int64)
    extra = batch_size % n_classes
    if extra:
        counts[rng.choice(n_classes, extra, replace=False)] += 1
    return counts


def squared_distances(feats: Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """||a_r - a_c||^2 for r in rows, c in cols, float64 (n_rows, n_cols).

    Expanded as |a|^2 + |b|^2 - 2 a.b in float64 (clamped at 0), so memory is
    O((n_rows + n_cols) d_in) rather than O(n_rows n_cols d_in).
    """
    a = feats[torch.as_tensor(rows, device=feats.device)].to(torch.float64)
    b = feats[torch.as_tensor(cols, device=feats.device)].to(torch.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0).cpu().numpy()


def match_one_to_one(feats: Tensor, nu: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Reorder ``mu`` so that nu[s] <-> mu[s] minimises sum_s ||a_mu[s] - a_nu[s]||^2.

    A linear assignment (``scipy.optimize.linear_sum_assignment``) on the squared
    distances of the target-layer inputs; ``nu`` and ``mu`` must have equal length.
    """
    if len(nu) != len(mu):
        raise ValueError(f"cannot match {len(nu)} samples one-to-one with {len(mu)}")
    if len(nu) == 0:
        return mu.copy()
    # a square cost matrix: linear_sum_assignment's row indices are 0..n-1, in order
    _, cols = linear_sum_assignment(squared_distances(feats, nu, mu))
    return mu[cols]


def matched_draws(
    labels: np.ndarray,
    feats: Tensor,
    batch_size: int,
    n_draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """T draws of two disjoint class-balanced batches nu, mu with one-to-one partners.

    Args:
        labels: integer labels of the analysis set, shape (N,).
        feats: target-layer inputs a_p, shape (N, d_in) (any device).
        batch_size: B.
        n_draws: T.
        rng: the generator every random choice is drawn from.

    Returns:
        ``(nu, mu)``, int64 arrays of shape (T, B): indices into the analysis set,
        slot s of nu matched to slot s of mu (same class; within each class the
        matching minimises the total squared distance of target-layer inputs).
        Slots are grouped by class, classes in increasing label order.

    Raises:
        ValueError: a class has fewer samples than two disjoint batches can need.
    """
    labels = np.asarray(labels)
    classes, members = _class_members(labels)
    n_cls = len(classes)
    need = batch_size // n_cls + (1 if batch_size % n_cls else 0)
    short = [(int(c), len(m)) for c, m in zip(classes, members, strict=True) if len(m) < 2 * need]
    if short:
        c, n = short[0]
        raise ValueError(
            f"class {c} has {n} samples in the analysis set, but two disjoint class-balanced "
            f"batches of B = {batch_size} over {n_cls} classes can need {2 * need} of it "
            f"({len(short)} class(es) short); lower the batch size or enlarge the analysis set"
        )
    nu = np.empty((n_draws, batch_size), dtype=np.int64)
    mu = np.empty((n_draws, batch_size), dtype=np.int64)
    for t in range(n_draws):
        counts = _class_counts(n_cls, batch_size, rng)
        pos = 0
        for idx, n_c in zip(members, counts, strict=True):
            if n_c == 0:
                continue
            pick = rng.choice(idx, 2 * n_c, replace=False)
            nu_c, mu_c = pick[:n_c], pick[n_c:]
            nu[t, pos:pos + n_c] = nu_c
            mu[t, pos:pos + n_c] = match_one_to_one(feats, nu_c, mu_c)
            pos += n_c
    return nu, mu


def _probe_set(labels: np.ndarray, n_probe: int, n_partner_batches: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The probe set, ``n_probe`` of the N samples drawn without replacement (the first
    draw from ``rng`` of both partner rules), and an empty (P, R) int64 array for the
    partners. Shared by :func:`probe_partners` and :func:`reference_probe_partners`.

    Raises:
        ValueError: n_probe is not in 1..N.
    """
    n = labels.shape[0]
    if not 0 < n_probe <= n:
        raise ValueError(f"n_probe = {n_probe} must be in 1..N = {n}")
    probe_idx = rng.choice(n, n_probe, replace=False).astype(np.int64)
    return probe_idx, np.empty((n_probe, n_partner_batches), dtype=np.int64)


def probe_partners(
    labels: np.ndarray,
    feats: Tensor,
    batch_size: int,
    n_probe: int,
    n_partner_batches: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The probe set P and, per probe, the partners from R partner batches.

    For each probe p (``n_probe`` samples drawn without replacement) and r = 1..R, a
    class-balanced batch mu_r of size B not containing p is drawn; the partner is the
    sample of p's class in mu_r nearest to p in target-layer input. Only the
    same-class part of mu_r can matter, so only it is drawn: n_y = floor(B/C) samples
    of p's class, plus one when p's class is among the B mod C classes picked at
    random for the left-over slots. When B < C that count can be 0 (p's class absent
    from mu_r); the batch is then conditioned on containing p's class (n_y = 1).

    Returns:
        ``(probe_idx (P,), probe_partner (P, R))``, int64 indices into the analysis set.

    Raises:
        ValueError: n_probe > N, or a probe's class has too few other samples.
    """
    labels = np.asarray(labels)
    probe_idx, partners = _probe_set(labels, n_probe, n_partner_batches, rng)
    classes, members = _class_members(labels)
    n_cls = len(classes)
    where = {int(c): i for i, c in enumerate(classes)}
    for i, p in enumerate(probe_idx):
        ci = where[int(labels[p])]
        others = members[ci][members[ci] != p]
        dist = None  # distances from p to its class, computed once per probe
        for r in range(n_partner_batches):
            n_y = max(int(_class_counts(n_cls, batch_size, rng)[ci]), 1)
            if len(others) < n_y:
                raise ValueError(
                    f"class {int(classes[ci])} has {len(others) + 1} samples; a partner batch "
                    f"of B = {batch_size} needs {n_y} of them besides the probe"
                )
            if dist is None:
                dist = squared_distances(feats, np.array([p]), others)[0]
            pos = rng.choice(len(others), n_y, replace=False)
            partners[i, r] = others[pos[int(np.argmin(dist[pos]))]]
    return probe_idx, partners


# --------------------------------------------------------------------------- reference rule
#
# The partner rule of the authors' AW-CH reference code (``AWD_cuda.cal_C_cuda``, called
# from ``cal_C_cuda_multi.py`` with ``batch_size=64, sample_number=20``), read from its
# published source:
#
# - the analysis samples are visited in the batches of one shuffled pass
#   (``DataLoader(shuffle=True)``, batches of 64: its "processing batches");
# - for every processing batch and every class, ``sample_number`` anchors are drawn
#   uniformly without replacement from all samples of that class (all of them when the
#   class is smaller), independently of the batch (an anchor may lie in the batch);
# - each sample's partner is the same-class anchor nearest in Euclidean distance of the
#   cached target-layer inputs a; when that nearest distance is below 1e-6 (the sample
#   itself, or an exact duplicate) the second nearest is taken.
#
# Here a processing batch is one draw nu_t (B samples), so anchors are redrawn per draw.

REFERENCE_SELF_DISTANCE = 1e-6
"""The reference's self test: a nearest anchor closer than this (Euclidean) is skipped."""


def _check_reference(labels: np.ndarray, n_anchors: int) -> tuple[np.ndarray, list[np.ndarray]]:
    if int(n_anchors) < 2:
        raise ValueError(f"n_anchors = {n_anchors} must be >= 2 (the reference skips the "
                         "sample itself, so a class needs a second anchor)")
    classes, members = _class_members(labels)
    small = [(int(c), len(m)) for c, m in zip(classes, members, strict=True) if len(m) < 2]
    if small:
        raise ValueError(f"class {small[0][0]} has {small[0][1]} sample; the reference "
                         "partner rule needs at least 2 per class")
    return classes, members


def reference_anchor_partners(feats: Tensor, samples: np.ndarray, sample_labels: np.ndarray,
                              classes: np.ndarray, members: list[np.ndarray],
                              n_anchors: int, rng: np.random.Generator) -> np.ndarray:
    """Partners of ``samples`` under the reference rule, with one fresh set of anchors.

    For every class c, min(N_c, n_anchors) anchors are drawn without replacement from the
    class (``rng.permutation``); the partner of p is its nearest same-class anchor in
    Euclidean distance of the target-layer inputs, or the second nearest when the
    nearest is closer than :data:`REFERENCE_SELF_DISTANCE`.

    Returns:
        int64 indices into the analysis set, shape ``samples.shape``.
    """
    anchors = [m[rng.permutation(len(m))[:min(len(m), int(n_anchors))]] for m in members]
    out = np.empty(len(samples), dtype=np.int64)
    for c, anc in zip(classes, anchors, strict=True):
        rows = np.flatnonzero(sample_labels == c)
        if len(rows) == 0:
            continue
        dist = np.sqrt(squared_distances(feats, samples[rows], anc))
        order = np.argsort(dist, axis=1, kind="stable")
        first = dist[np.arange(len(rows)), order[:, 0]]
        pick = np.where(first < REFERENCE_SELF_DISTANCE, order[:, 1], order[:, 0])
        out[rows] = anc[pick]
    return out


def reference_draws(
    labels: np.ndarray,
    feats: Tensor,
    batch_size: int,
    n_draws: int,
    n_anchors: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """T draws nu (B samples) with partners mu by the reference's anchor rule.

    nu: consecutive B-sample slices of shuffled passes over the analysis set (a new
    ``rng.permutation(N)`` whenever a pass is used up; the reference makes one pass with
    B = 64 and keeps a partial last batch, which full draws of B cannot hold: T = N/B
    draws reproduce its pass exactly when B divides N). Batches are not class-balanced.
    mu: for each draw, fresh anchors (:func:`reference_anchor_partners`). mu is neither
    disjoint from nu nor one-to-one: one anchor can partner several samples.

    Returns:
        ``(nu, mu)``, int64 arrays (T, B), slot s of nu partnered with slot s of mu.

    Raises:
        ValueError: B > N, n_anchors < 2, or a class with fewer than 2 samples.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} analysis samples")
    classes, members = _check_reference(labels, n_anchors)
    stream = np.concatenate([rng.permutation(n)
                             for _ in range(-(-(n_draws * batch_size) // n))])
    nu = stream[: n_draws * batch_size].reshape(n_draws, batch_size).astype(np.int64)
    mu = np.empty_like(nu)
    for t in range(n_draws):
        mu[t] = reference_anchor_partners(feats, nu[t], labels[nu[t]], classes, members,
                                          n_anchors, rng)
    return nu, mu


def reference_probe_partners(
    labels: np.ndarray,
    feats: Tensor,
    n_probe: int,
    n_partner_batches: int,
    n_anchors: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Probe set and R partners per probe by the reference's anchor rule.

    The probe set is drawn as in :func:`probe_partners`; partner r of every probe is
    its nearest anchor among a fresh set of ``n_anchors`` anchors per class (one set
    per r, shared by all probes, as one processing batch shares its anchors). The
    reference itself uses every sample with its one draw partner for ``C1_dia_w_dia``
    (R = 1, all samples as probes).

    Returns:
        ``(probe_idx (P,), probe_partner (P, R))``, int64 indices into the analysis set.
    """
    labels = np.asarray(labels)
    probe_idx, partners = _probe_set(labels, n_probe, n_partner_batches, rng)
    classes, members = _check_reference(labels, n_anchors)
    for r in range(n_partner_batches):
        partners[:, r] = reference_anchor_partners(feats, probe_idx, labels[probe_idx],
                                                   classes, members, n_anchors, rng)
    return probe_idx, partners
