"""Builders for "legacy" Keras model files, written from scratch for gradcli's tests.

These create models the way tf.keras 2 (2017-2023) would have written them, so the tests
can check that gradcli loads them:

* :func:`build_tfkeras_savedmodel` - a tf_keras (Keras 2) functional model with a custom
  layer, two outputs and a compiled loss per output, saved as a TF SavedModel directory
  (``save_format="tf"``; the directory has ``keras_metadata.pb``).
* :func:`build_old_h5` - an HDF5 file as Keras 2.0.x wrote it: written by tf_keras, then its
  root ``training_config`` / ``keras_version`` attributes are rewritten with h5py to hold
  old-style optimizer arguments (``lr``, ``decay``) and ``keras_version="2.0.8"``.
* :func:`build_onednn_crash_case` - a Keras 3 strided 1x1 ``Conv2D`` model and input batch
  used to check the oneDNN gradient crash workaround.

TensorFlow, Keras and tf_keras are imported inside functions only (importing this module
is cheap). The custom layer class ``Scale`` is created lazily on first access of
``legacy_builders.Scale`` (or by :func:`scale_layer_class`) because it must subclass
``tf_keras.layers.Layer``; it is registered as ``"legacy>Scale"``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

#: Legacy Keras version written into the rewritten ``.h5`` file.
OLD_KERAS_VERSION = "2.0.8"

#: Optimizer config as Keras 2.0.x wrote it in ``training_config`` (old argument names).
OLD_ADAM_CONFIG: dict[str, Any] = {
    "class_name": "Adam",
    "config": {
        "lr": 0.0010000000474974513,
        "beta_1": 0.8999999761581421,
        "beta_2": 0.9990000128746033,
        "decay": 0.0,
        "epsilon": 1e-07,
        "amsgrad": False,
    },
}


@functools.cache
def scale_layer_class() -> type:
    """Return the custom tf_keras layer ``Scale`` (registered as ``"legacy>Scale"``).

    ``Scale`` multiplies its input by one trainable scalar weight named ``"alpha"``.
    """
    import tf_keras

    @tf_keras.utils.register_keras_serializable(package="legacy")
    class Scale(tf_keras.layers.Layer):
        """Multiply the input by a trainable scalar ``alpha``."""

        def __init__(self, initial_value: float = 1.5, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.initial_value = float(initial_value)

        def build(self, input_shape: Any) -> None:
            self.alpha = self.add_weight(
                name="alpha",
                shape=(),
                initializer=tf_keras.initializers.Constant(self.initial_value),
                trainable=True,
            )
            super().build(input_shape)

        def call(self, inputs: Any) -> Any:
            return inputs * self.alpha

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "initial_value": self.initial_value}

    Scale.__module__ = __name__
    Scale.__qualname__ = "Scale"
    return Scale


def __getattr__(name: str) -> Any:
    # PEP 562: ``legacy_builders.Scale`` builds (and registers) the class on first access.
    if name == "Scale":
        return scale_layer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _weights_by_name(model: Any) -> dict[str, Any]:
    return {v.name: v.numpy().copy() for v in model.weights}


def build_tfkeras_savedmodel(directory: Path, *, legacy_optimizer: bool = True) -> dict[str, Any]:
    """Write a tf_keras functional model with a custom layer as a TF SavedModel directory.

    Architecture: ``Input((5,), name="x") -> Dense(8, tanh, name="h") -> Scale(name="scale")``
    then two heads ``Dense(3, name="cls")`` (logits) and ``Dense(1, name="reg")``. Compiled
    with ``{"cls": SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"}``, loss
    weights ``{"cls": 1.0, "reg": 0.5}`` and Adam, trained one step (so the optimizer slots
    exist), then saved with ``model.save(str(directory), save_format="tf")``.

    ``legacy_optimizer=True`` (default) uses ``tf_keras.optimizers.legacy.Adam``, the
    ``OptimizerV2`` that tf.keras used up to TF 2.10: its slot variables are saved as
    SavedModel slot variables, which ``tf.saved_model.load`` restores with
    ``optimizer.add_slot`` (and fails with ``AttributeError: '_UserObject' object has no
    attribute 'add_slot'`` when tf_keras cannot be imported). ``False`` uses the newer
    ``tf_keras.optimizers.Adam`` (the default of TF 2.11-2.15), which has no slot variables
    in the object graph.

    Returns a dict with:

    * ``"path"``: the directory (``Path``);
    * ``"input_name"`` (``"x"``), ``"output_names"`` (``["cls", "reg"]``);
    * ``"layer_names"``: ``["x", "h", "scale", "cls", "reg"]``;
    * ``"weights"``: ``{variable name: ndarray}`` for the trained weights, e.g.
      ``"h/kernel:0"``, ``"scale/alpha:0"``, ``"cls/bias:0"``;
    * ``"h_kernel"``, ``"h_bias"``, ``"alpha"``, ``"cls_kernel"``, ``"cls_bias"``,
      ``"reg_kernel"``, ``"reg_bias"``: the same arrays under short keys;
    * ``"x"``: a float32 input batch of shape ``(4, 5)``; ``"y_cls"`` (int, ``(4,)``) and
      ``"y_reg"`` (float32, ``(4, 1)``): targets for it;
    * ``"outputs"``: ``{"cls": logits, "reg": prediction}`` of the saved model on ``x``;
    * ``"loss_weights"``: ``{"cls": 1.0, "reg": 0.5}``.
    """
    import numpy as np
    import tf_keras

    directory = Path(directory)
    scale_cls = scale_layer_class()
    tf_keras.utils.set_random_seed(0)

    inp = tf_keras.Input((5,), name="x")
    h = tf_keras.layers.Dense(8, activation="tanh", name="h")(inp)
    s = scale_cls(name="scale")(h)
    cls = tf_keras.layers.Dense(3, name="cls")(s)
    reg = tf_keras.layers.Dense(1, name="reg")(s)
    model = tf_keras.Model(inp, [cls, reg], name="legacy_two_head")
    loss_weights = {"cls": 1.0, "reg": 0.5}
    optimizers = tf_keras.optimizers.legacy if legacy_optimizer else tf_keras.optimizers
    model.compile(
        optimizer=optimizers.Adam(learning_rate=1e-3),
        loss={
            "cls": tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "reg": "mse",
        },
        loss_weights=loss_weights,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype("float32")
    y_cls = rng.integers(0, 3, size=(4,)).astype("int64")
    y_reg = rng.normal(size=(4, 1)).astype("float32")
    model.train_on_batch(x, {"cls": y_cls, "reg": y_reg})

    model.save(str(directory), save_format="tf")

    out_cls, out_reg = (t.numpy() for t in model(x, training=False))
    weights = _weights_by_name(model)
    return {
        "path": directory,
        "input_name": "x",
        "output_names": ["cls", "reg"],
        "layer_names": [layer.name for layer in model.layers],
        "weights": weights,
        "h_kernel": weights["h/kernel:0"],
        "h_bias": weights["h/bias:0"],
        "alpha": weights["scale/alpha:0"],
        "cls_kernel": weights["cls/kernel:0"],
        "cls_bias": weights["cls/bias:0"],
        "reg_kernel": weights["reg/kernel:0"],
        "reg_bias": weights["reg/bias:0"],
        "x": x,
        "y_cls": y_cls,
        "y_reg": y_reg,
        "outputs": {"cls": out_cls, "reg": out_reg},
        "loss_weights": dict(loss_weights),
    }


def build_old_h5(path: Path, *, as_keras_2_0: bool = True) -> dict[str, Any]:
    """Write an ``.h5`` file as Keras 2.0.x wrote it (or, with ``as_keras_2_0=False``, as
    tf_keras 2.21 writes it).

    A tf_keras Sequential model ``Input((4,)) -> Dense(6, relu, name="d1") ->
    Dense(2, name="out")`` is compiled with loss ``"mse"`` and the legacy Adam, saved with
    ``model.save(path, save_format="h5")``. With ``as_keras_2_0=True`` h5py then rewrites:

    * root ``training_config``: ``"optimizer_config"`` becomes :data:`OLD_ADAM_CONFIG`
      (``{"class_name": "Adam", "config": {"lr": ..., "decay": 0.0, ...}}``) and a
      ``"sample_weight_mode": None`` key is added, as Keras 2.0.x wrote;
    * root and ``/model_weights`` ``keras_version``: :data:`OLD_KERAS_VERSION` (``"2.0.8"``).

    Returns a dict with ``"path"``, ``"layer_names"`` (``["d1", "out"]``), ``"weights"``
    (``{variable name: ndarray}``, e.g. ``"d1/kernel:0"``), the short keys ``"d1_kernel"``,
    ``"d1_bias"``, ``"out_kernel"``, ``"out_bias"``, a float32 batch ``"x"`` of shape
    ``(3, 4)``, its prediction ``"y_pred"``, the file's ``"training_config"`` (dict) and
    ``"keras_version"`` (str).
    """
    import h5py
    import numpy as np
    import tf_keras

    path = Path(path)
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((4,)),
            tf_keras.layers.Dense(6, activation="relu", name="d1"),
            tf_keras.layers.Dense(2, name="out"),
        ],
        name="old_seq",
    )
    model.compile(optimizer=tf_keras.optimizers.legacy.Adam(learning_rate=1e-3), loss="mse")
    model.save(str(path), save_format="h5")

    with h5py.File(path, "r+") as f:
        raw = f.attrs["training_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if as_keras_2_0:
            config["optimizer_config"] = json.loads(json.dumps(OLD_ADAM_CONFIG))
            config["sample_weight_mode"] = None
            f.attrs["training_config"] = json.dumps(config)
            for attrs in (f.attrs, f["model_weights"].attrs):
                if "keras_version" in attrs:
                    attrs["keras_version"] = OLD_KERAS_VERSION
        raw_version = f.attrs.get("keras_version", "")
        keras_version = raw_version.decode() if isinstance(raw_version, bytes) else raw_version

    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    weights = _weights_by_name(model)
    return {
        "path": path,
        "layer_names": [layer.name for layer in model.layers],
        "weights": weights,
        "d1_kernel": weights["d1/kernel:0"],
        "d1_bias": weights["d1/bias:0"],
        "out_kernel": weights["out/kernel:0"],
        "out_bias": weights["out/bias:0"],
        "x": x,
        "y_pred": model(x, training=False).numpy(),
        "training_config": config,
        "keras_version": str(keras_version),
    }


def build_onednn_crash_case(batch_size: int = 16, seed: int = 0) -> tuple[Any, Any]:
    """Return ``(model, x)``: a Keras 3 strided 1x1 conv model and a random input batch.

    ``Input((60, 60, 8)) -> Conv2D(16, 1, strides=2, padding="same", use_bias=False)``;
    ``x`` is float32 of shape ``(batch_size, 60, 60, 8)``. Used to check gradients of
    ``sum(y**2)`` w.r.t. the input and the kernel under oneDNN.

    With TF 2.21 on CPU and oneDNN on (the default), any gradient through this layer
    (eager or ``tf.function``, any batch size, input-only or kernel-only) kills the process
    in ``Conv2DBackpropFilter`` (SIGSEGV, SIGABRT with a glibc heap message, or SIGBUS);
    the forward pass is fine. ``TF_ENABLE_ONEDNN_OPTS=0`` in the environment before
    ``import tensorflow`` avoids it. Only call the gradient in a subprocess.
    """
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    inp = keras.Input((60, 60, 8), name="image")
    out = keras.layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="conv")(inp)
    model = keras.Model(inp, out, name="onednn_case")
    x = np.random.default_rng(seed).normal(size=(batch_size, 60, 60, 8)).astype("float32")
    return model, x


if __name__ == "__main__":
    # Self-check: build everything into a temporary directory and print a summary.
    # (Run the oneDNN case forward only: its gradient can kill the process.)
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        for label, build in [
            ("savedmodel", lambda: build_tfkeras_savedmodel(Path(tmp) / "sm")),
            ("old_h5", lambda: build_old_h5(Path(tmp) / "old.h5")),
        ]:
            start = time.perf_counter()
            info = build()
            print(f"{label}: {time.perf_counter() - start:.1f}s {sorted(info['weights'])}")
        model, x = build_onednn_crash_case()
        print("onednn case forward:", tuple(model(x).shape))
