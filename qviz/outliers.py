"""Earlier path of :mod:`qviz.activations.outliers` (``from qviz.outliers import recurring_channels`` keeps working).

Examples
--------
>>> import qviz.outliers, qviz.activations.outliers
>>> qviz.outliers.recurring_channels is qviz.activations.outliers.recurring_channels
True
"""

from qviz.activations.outliers import outlier_summary, recurring_channels

__all__ = ["outlier_summary", "recurring_channels"]
