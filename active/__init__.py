"""Active learning and subset selection: selectors, scalable clustering and active covering.

The selector API lives in `active.selectors`; `active.clustering` clusters a pool once for
Cluster-Margin; `active.covering` finds all positives with few queries. Bad input (an empty pool,
NaN features, bad labels or budgets, unknown names) is refused up front by `active.validation` as a
`SelectionInputError`, a `ValueError` with a one-line message.
"""

from active.clustering import cluster_margin_clusters
from active.selectors import (
    SELECTORS,
    Pool,
    Selection,
    Selector,
    gradient_embeddings,
    make_selector,
)
from active.validation import SelectionInputError

__all__ = [
    "SELECTORS",
    "Pool",
    "Selection",
    "SelectionInputError",
    "Selector",
    "cluster_margin_clusters",
    "gradient_embeddings",
    "make_selector",
]
