"""The weight bound: while a model loads, no weight beyond what its file holds is created."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any

from gradcli.errors import ModelError
from gradcli.load.filechecks import size_text

# ---------------------------------------------------------------- declared parameter counts

# a model's weights all come from its file; what the file cannot hold was never saved
_PARAM_SLACK = 64 << 20


class _WeightBudget:
    def __init__(self, file_bytes: int, label: str, slack: int) -> None:
        self.limit = file_bytes + slack
        self.file_bytes = file_bytes
        self.label = label
        self.used = 0
        self.refusal: ModelError | None = None

    def take(self, shape: Any, dtype: Any) -> None:
        if self.refusal is not None:
            raise self.refusal
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            return  # unknown dims: the variable cannot be allocated either
        count = math.prod(dims) if dims else 1
        itemsize = _itemsize(dtype)
        self.used += count * itemsize
        if self.used > self.limit:
            self.refusal = ModelError(
                f"{self.label}: refused: the model declares a weight of shape {tuple(dims)} "
                f"({count:,} parameters); its weights would need {size_text(self.used)} or "
                f"more, but the file holds {size_text(self.file_bytes)}"
            )
            raise self.refusal


def _itemsize(dtype: Any) -> int:
    import numpy as np

    name = getattr(dtype, "name", None) or (dtype if isinstance(dtype, str) else None)
    try:
        return max(1, np.dtype(name or "float32").itemsize)
    except TypeError:
        return 1


@contextlib.contextmanager
def bounded_weights(
    file_bytes: int, label: str, with_tf_keras: bool = False, slack: int = _PARAM_SLACK
):
    """Refuse, before allocating it, any weight beyond what the model file holds.

    Wraps `Layer.add_weight` of Keras 3 (and of tf_keras, which it then imports) for the
    duration of a load; a refusal is raised again after the loader, whatever the loader
    made of it.
    """
    budget = _WeightBudget(file_bytes, label, slack)
    patches = []
    from gradcli.load import backend

    k3layer_class = backend.keras_layer_class()
    # layer weights only: an optimizer's slots are built from them (bounded with them) and
    # a compiled model that was never trained saved none
    original_k3 = k3layer_class.add_weight
    k3sig = inspect.signature(original_k3)

    def k3_add_weight(self, *args, **kwargs):
        bound = k3sig.bind_partial(self, *args, **kwargs).arguments
        if bound.get("shape") is not None:
            dtype = bound.get("dtype") or getattr(self, "variable_dtype", None)
            budget.take(bound["shape"], dtype)
        return original_k3(self, *args, **kwargs)

    patches.append((k3layer_class, "add_weight", original_k3, k3_add_weight))
    try:
        if with_tf_keras:
            tfk_layer_class = backend.tf_keras_layer_class()
            original_tfk = tfk_layer_class.add_weight
            tfksig = inspect.signature(original_tfk)

            def tfk_add_weight(self, *args, **kwargs):
                bound = tfksig.bind_partial(self, *args, **kwargs).arguments
                if bound.get("shape") is not None:
                    budget.take(bound["shape"], bound.get("dtype") or getattr(self, "dtype", None))
                return original_tfk(self, *args, **kwargs)

            patches.append((tfk_layer_class, "add_weight", original_tfk, tfk_add_weight))
    except ImportError:  # pragma: no cover - tf_keras missing
        pass
    for owner, attr, _, new in patches:
        setattr(owner, attr, new)
    try:
        yield budget
    except Exception:
        if budget.refusal is not None:
            raise budget.refusal from None
        raise
    finally:
        for owner, attr, original, _ in patches:
            setattr(owner, attr, original)
    if budget.refusal is not None:
        raise budget.refusal
