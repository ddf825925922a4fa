"""The analysis of one checkpoint (SPEC 2-7): :func:`analyze_checkpoint` and its stages."""

from awch_scale.analysis.checkpoint import analyze_checkpoint

__all__ = ["analyze_checkpoint"]
