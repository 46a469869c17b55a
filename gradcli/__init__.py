"""gradcli: gradients of saved Keras models, from the shell and from Python.

The Python API (info, wrt_input, wrt_layer, wrt_weights, jacobian, check, diff, influence,
merge, load_model and their Result) is imported lazily, so `import gradcli` stays fast; the
first call loads TensorFlow. `help(gradcli.wrt_input)` documents each function's keyword arguments.
"""

from gradcli._version import __version__ as __version__


def _api() -> tuple[str, ...]:
    """The public names: one function per command of the table (commands/), load_model and
    Result. Read on first use: importing gradcli imports nothing else (`python -m gradcli`
    makes sys.path safe before anything is imported from it)."""
    from gradcli.commands import api_specs

    return (*api_specs(), "load_model", "Result")


def __getattr__(name: str):
    if name == "__all__":
        return ["__version__", *_api()]
    if name in _api():
        from gradcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_api()})
