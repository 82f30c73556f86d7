"""Moved to :mod:`dclnet.data.splits` (the query/gallery lists are data, built before any model).

This name stays importable so that code written against ``dclnet.evaluation.splits`` keeps
working; new code imports from :mod:`dclnet.data.splits`.
"""

from dclnet.data.splits import (
    DATASETS,
    DIRECTIONS,
    QUERY_MODALITY,
    RULES,
    EvalSplit,
    ProtocolSettings,
    build_splits,
    needed_paths,
)

__all__ = [
    "DATASETS",
    "DIRECTIONS",
    "QUERY_MODALITY",
    "RULES",
    "EvalSplit",
    "ProtocolSettings",
    "build_splits",
    "needed_paths",
]
