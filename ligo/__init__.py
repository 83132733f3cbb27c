"""ligo: grow a small pretrained transformer into a larger one with a learned linear growth operator."""

__version__ = "0.1.0"

from .arch import LigoError, get_spec, register_architecture, supported_types  # noqa: E402
from .operator import GrowthOperator, GrowthPlan  # noqa: E402
from .loop import TrainConfig  # noqa: E402
from .grow import Grower, grow  # noqa: E402

__all__ = ["LigoError", "get_spec", "register_architecture", "supported_types", "GrowthOperator", "GrowthPlan",
           "TrainConfig", "Grower", "grow", "__version__"]
