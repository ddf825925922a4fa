"""The ``xarray.Dataset`` one analysis returns, assembled from its finished context."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import xarray as xr

from awch_scale.analysis.context import Analysis
from awch_scale.analysis.statistics import diagonal
from awch_scale.variables import annotate


def analysis_dataset(a: Analysis, target: str | Sequence[str], loss: str) -> xr.Dataset:
    """The dataset of a finished analysis ``a`` (after every stage has run).

    The k x k matrices are stored full, or as their diagonal (dim ``eig``) when named in
    ``analysis.diag_only``; the chunk size, memory plan and seeds join the provenance,
    stored as JSON.

    Args:
        a: the analysis context.
        target: the target as ``analyze_checkpoint`` was given it.
        loss: the loss name.

    Returns:
        Dataset with dims ``eig``/``eig_`` (1..k) and the coordinates the stages added;
        attributes ``D``, ``N``, ``k``, ``n_fit``, ``loss``, ``batch_size``, ``target``,
        ``device``, ``dtype``, ``operator``, ``settings`` (JSON); every registered
        variable annotated (:func:`awch_scale.variables.annotate`).
    """
    s, p = a.settings, a.problem
    data = dict(a.data)
    for name, m in a.matrices.items():
        data[name] = ("eig", diagonal(m)) if name in s.diag_only or m.ndim == 1 else (
            ("eig", "eig_"), m)
    a.provenance.update(chunk_size=p.chunk_size, memory=asdict(a.memory), seeds=a.seeds)
    data["chunk_size"] = ((), p.chunk_size)
    data["provenance"] = ((), json.dumps(a.provenance, sort_keys=True, default=str))
    eig = np.arange(1, s.k + 1)
    ds = xr.Dataset(data, coords={"eig": eig, "eig_": eig, **a.coords})
    ds.attrs.update(
        D=p.D, N=p.N, k=s.k, n_fit=s.fit_points, loss=loss, batch_size=a.batch_size,
        target=target if isinstance(target, str) else ",".join(target),
        device=str(p.device), dtype=str(p.dtype).removeprefix("torch."),
        operator=a.provenance.get("operator", ""),
        settings=s.model_dump_json(),
    )
    return annotate(ds)
