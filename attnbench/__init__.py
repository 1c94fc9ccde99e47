"""attnbench: benchmark attention layers for images (memory, FLOPs, time, quality).

>>> import attnbench
>>> layer = attnbench.mechanism("local", window=50)   # a torch.nn.Module
"""
from .errors import Unavailable, Unsupported, UnsupportedRequest, UserError
from .interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from .registry import mechanism, plugins

__version__ = "0.1.0"

__all__ = [
    "AttentionMechanism",
    "Availability",
    "CostEstimate",
    "ProblemShape",
    "Unavailable",
    "Unsupported",
    "UnsupportedRequest",
    "UserError",
    "mechanism",
    "plugins",
    "__version__",
]
