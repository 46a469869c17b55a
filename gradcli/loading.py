"""Load saved models into one uniform handle: the public names, gathered from their modules.

The loader table is loaders.py; handles are handles.py (Keras) and savedmodels.py; losses
are losses.py; `--import` is plugins.py; the format of a path is decided in formats.py.
"""

from __future__ import annotations

from .formats import Loader, ModelFormat
from .handles import KerasHandle, LayerInfo, ModelHandle, TensorInfo, _variable_path
from .handles import output_names as _output_names
from .loaders import STRATEGIES, load_model, strategy_for
from .losses import LossSpec, compiled_losses, resolve_loss
from .losses import compiled_losses as _compiled_losses
from .plugins import import_custom_code
from .savedmodels import SavedModelSummary, ServingHandle, describe_savedmodel, module_variables

__all__ = [
    "STRATEGIES",
    "KerasHandle",
    "LayerInfo",
    "Loader",
    "LossSpec",
    "ModelFormat",
    "ModelHandle",
    "SavedModelSummary",
    "ServingHandle",
    "TensorInfo",
    "_compiled_losses",
    "_output_names",
    "_variable_path",
    "compiled_losses",
    "describe_savedmodel",
    "import_custom_code",
    "load_model",
    "module_variables",
    "resolve_loss",
    "strategy_for",
]
