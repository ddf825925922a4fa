"""Figures from a store. Kept for compatibility: the drawing code lives in
:mod:`awch_scale.report` (one code path for ``awch-scale plot`` and ``awch-scale report``).
"""

from __future__ import annotations

from .report import FIGURES, build_report, save_figures

__all__ = ["FIGURES", "build_report", "save_figures"]
