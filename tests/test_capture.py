"""engine/capture.hooked: every hook restored exactly, whatever happens in the call."""

from __future__ import annotations

import pytest

from gradcli.engine.capture import Hook, first_argument, hooked


class Layer:
    def call(self, x):
        return x + 1

    def activation(self, z):
        return 2 * z


def test_hooks_compose_and_restore_what_the_instance_owned_and_what_its_class_gave():
    layer = Layer()
    own = layer.activation  # an attribute the instance owns (Keras sets activation so)
    layer.__dict__["activation"] = own
    seen_call, seen_act = [], []
    hooks = [
        Hook(layer, "call", first_argument(seen_call)),
        Hook(layer, "activation", first_argument(seen_act)),
        Hook(layer, "activation", lambda original: lambda z: original(z) + 100),  # wraps the first
    ]
    with hooked(hooks):
        assert layer.call(1) == 2 and layer.activation(3) == 106
    assert seen_call == [1] and seen_act == [3]
    assert "call" not in vars(layer) and layer.call(1) == 2  # the class's method again
    assert vars(layer)["activation"] is own  # the instance's own attribute, put back


def test_hooks_are_removed_when_the_call_fails():
    layer = Layer()
    with pytest.raises(RuntimeError), hooked([Hook(layer, "call", first_argument([]))]):
        raise RuntimeError("the model failed")
    assert "call" not in vars(layer)
