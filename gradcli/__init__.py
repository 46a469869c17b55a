"""gradcli: gradients of saved Keras models, from the shell and from Python.

The Python API (wrt_input, wrt_layer, wrt_weights, jacobian, check, diff, load_model and
their Result) is imported lazily, so `import gradcli` stays fast; the first call loads
TensorFlow. `help(gradcli.wrt_input)` documents each function's keyword arguments.
"""

from gradcli._version import __version__

_API = (
    "wrt_input",
    "wrt_layer",
    "wrt_weights",
    "jacobian",
    "check",
    "diff",
    "load_model",
    "Result",
)


def __getattr__(name: str):
    if name in _API:
        from gradcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


__all__ = ["__version__", *_API]
