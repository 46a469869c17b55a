"""gradcli: gradients of saved Keras models, from the shell and from Python.

The Python API (wrt_input, wrt_layer, wrt_weights, jacobian, load_model) is imported lazily,
so `import gradcli` stays fast; the first call loads TensorFlow.
"""

from ._version import __version__

_API = ("load_model", "wrt_input", "wrt_layer", "wrt_weights", "jacobian")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradcli' has no attribute {name!r}")


__all__ = ["__version__", *_API]
