"""The one compiled-tape core every engine runs on: what a tape over one model needs besides
its own body (never prints, never touches paths).

- input and target specs, and the dtype each input is fed in;
- `Compiled`: a tf.function traced once for any batch size, AutoGraph only when the model's
  own code needs it;
- `TapeCore.step(fn, ...)`: one compiled function `fn(xs, ys, valid, *extra)` with its errors
  mapped to one GradientError line and, under --jit (never in training mode), a batch shorter
  than the longest seen padded with copies of its last row (the copies are masked out by
  `masked_total` and their rows dropped by `Call.rows`);
- the objective's per-sample values, the model's variables (all, or a subset by name).

What runs on it: engine.batched (per-sample objective gradients w.r.t. inputs, layers,
weights; the finite-difference check drives it), engine.persample (per-sample weight
gradients), engine.jacobian. Room for more without a fourth tape:
- Hessian-vector products (issue 26): a step whose `extra` are the vectors (`extra_specs`),
  its body `with tf.autodiff.ForwardAccumulator(variables, vectors) as acc: with
  tf.GradientTape() as tape: total = core.masked_total(core.objective_of(xs, ys), valid)`,
  returning the objective, the gradient and `acc.jvp(gradient)` (forward-over-backward);
  batching, padding, error mapping and the mean over batches are the core's and the caller's.
- Streams of per-sample gradients (issue 29): engine.persample's step over
  `core.variables(names)` (a layer, the last layer), reduced inside the step (norms, a seeded
  random projection) and yielded batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.engine.objective import Objective
from gradcli.engine.tokens import input_dtype
from gradcli.errors import GradcliError, GradientError, UsageError, first_line, param
from gradcli.load.backend import keras, tf
from gradcli.load.handles import ModelHandle

VALID = tf.TensorSpec((), tf.int32)  # rows of a call that are not padding
# what TensorFlow raises for a computation it cannot do: one GradientError line
MAPPED: tuple[type[BaseException], ...] = (
    tf.errors.OpError,
    ValueError,
    TypeError,
    LookupError,
    NotImplementedError,
)


def tf_variable(v: Any) -> Any:
    """Keras 3 variables wrap a tf.Variable; a tape watches the latter."""
    return v.value if isinstance(v, keras.Variable) else v


def check_training(handle: ModelHandle, training: bool) -> None:
    """Training mode needs Keras layers; an exported function has no such mode."""
    if training and not handle.supports_training:
        raise UsageError(
            f"{param('training')} needs a Keras model; a SavedModel export runs its "
            "serving function in inference mode"
        )


def to_numpy(x: Any) -> np.ndarray | None:
    if isinstance(x, tf.IndexedSlices):  # a sparse gradient where dense was asked for
        return tf.convert_to_tensor(x).numpy()
    return None if x is None else x.numpy()


class Compiled:
    """A tf.function traced once for any batch size, without AutoGraph.

    gradcli's own code has no tensor-dependent Python control flow, and converting it costs
    about a second per trace; a model whose own Python code needs AutoGraph (`if tensor:`)
    gets a second trace with it.
    """

    def __init__(self, fn: Any, signature: list, jit: bool = False) -> None:
        self.fn = fn
        self.signature = signature
        self.jit = jit
        self.autograph = False
        self.function = self._make()
        self.traced = False

    def _make(self) -> Any:
        return tf.function(
            self.fn,
            input_signature=self.signature,
            jit_compile=self.jit,
            reduce_retracing=True,
            autograph=self.autograph,
        )

    def __call__(self, *args: Any) -> Any:
        if self.traced:
            return self.function(*args)
        try:
            out = self.function(*args)
        except tf.errors.OperatorNotAllowedInGraphError:
            self.autograph = True
            self.function = self._make()
            out = self.function(*args)
        self.traced = True
        return out


@dataclass
class Call:
    """One call of a step: its outputs (tensors), and how many of its rows are real."""

    outputs: Any
    valid: int
    padded: bool

    def rows(self, x: Any) -> np.ndarray | None:
        """A per-row output as NumPy, the padding rows dropped."""
        a = to_numpy(x)
        return a[: self.valid] if self.padded and a is not None else a


class Step:
    """One compiled tape function `fn(xs, ys, valid, *extra)` of a TapeCore."""

    def __init__(
        self,
        core: TapeCore,
        fn: Callable[..., Any],
        *,
        what: str,
        targets: Sequence[np.ndarray],
        extra_specs: Sequence[Any],
        pad: bool,
        catch: tuple[type[BaseException], ...],
    ) -> None:
        self.core = core
        self.what = what
        self.pad = pad and core.jit and not core.training
        self.catch = catch
        self.longest = 0  # rows of the longest call so far (--jit pads shorter ones to it)
        self.padded_rows = 0  # rows of padding computed and dropped, in all
        signature = [core.input_specs, target_specs(targets), VALID, *extra_specs]
        self.compiled = Compiled(fn, signature, core.jit)

    def _padded(self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> tuple:
        """Under XLA (--jit), a batch shorter than the longest this function has run so far,
        usually the last one, is padded to that length with copies of its last row, so that
        XLA does not compile the function again for one more shape (1.4 s for the bench
        Transformer, where a call takes 0.07 s); each function keeps its own longest, so
        IG's short forward passes are not padded to the tape's rows. Not in training mode,
        where copies would change the batch statistics (BatchNorm); not without XLA, where
        a new shape costs nothing. Returns (inputs, targets, valid rows)."""
        rows = len(inputs[0]) if len(inputs) else 0
        self.longest = max(self.longest, rows)
        if not self.pad or rows == 0 or rows == self.longest:
            return list(inputs), list(targets), rows
        extra = self.longest - rows

        def pad(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])

        self.padded_rows += extra
        return [pad(x) for x in inputs], [pad(t) for t in targets], rows

    def __call__(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = (), *extra: Any
    ) -> Call:
        inputs, targets, valid = self._padded(inputs, targets)
        padded = bool(inputs) and len(inputs[0]) != valid
        try:
            out = self.compiled(inputs, targets, np.int32(valid), *extra)
        except GradcliError:
            raise
        except self.catch as exc:
            raise GradientError(f"{self.what}: {first_line(exc)}") from exc
        return Call(out, valid, padded)


def target_specs(targets: Sequence[np.ndarray]) -> list[Any]:
    return [tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)) for t in targets]


class TapeCore:
    """What every compiled tape over one model and objective shares."""

    def __init__(
        self,
        handle: ModelHandle,
        objective: Objective | None,
        *,
        training: bool = False,
        jit: bool = False,
        check_mode: bool = True,
    ) -> None:
        self.handle = handle
        self.objective = objective
        self.training = training
        self.jit = jit
        if check_mode:
            check_training(handle, training)
        self.input_dtypes = [input_dtype(i.dtype) for i in handle.inputs]
        self.input_specs = [
            tf.TensorSpec((None, *info.shape), tf.as_dtype(dt))
            for info, dt in zip(handle.inputs, self.input_dtypes, strict=True)
        ]
        self.steps: list[Step] = []

    def variables(self, names: Sequence[str] | None = None) -> tuple[list[str], list[Any]]:
        """The model's trainable variables (all, or those named), as the tape watches them."""
        named = self.handle.named_variables()
        if names is not None:
            wanted = set(names)
            named = [(n, v) for n, v in named if n in wanted]
        return [n for n, _ in named], [tf_variable(v) for _, v in named]

    def objective_of(self, xs: list, ys: list, training: bool | None = None) -> Any:
        """The per-sample objective o (B,) of one model call."""
        assert self.objective is not None
        mode = self.training if training is None else training
        outputs = self.objective.model_outputs(self.handle, xs, mode)
        return self.objective.per_sample(outputs, ys)

    @staticmethod
    def masked_total(o: Any, valid: Any) -> Any:
        """The sum of o over its real rows: padding (rows from `valid` on) is out of the sum,
        so out of every gradient; without padding the mask is all ones and changes nothing."""
        keep = tf.cast(tf.range(tf.shape(o)[0]) < valid, o.dtype)
        return tf.reduce_sum(o * keep)

    def step(
        self,
        fn: Callable[..., Any],
        *,
        what: str,
        targets: Sequence[np.ndarray] = (),
        extra_specs: Sequence[Any] = (),
        pad: bool = True,
        catch: tuple[type[BaseException], ...] = MAPPED,
    ) -> Step:
        """A compiled step `fn(xs, ys, valid, *extra)`; its errors become
        `GradientError(f"{what}: <first line>")` (gradcli's own errors pass through)."""
        step = Step(
            self,
            fn,
            what=what,
            targets=targets,
            extra_specs=extra_specs,
            pad=pad,
            catch=catch,
        )
        self.steps.append(step)
        return step

    @property
    def padded_rows(self) -> int:
        return sum(s.padded_rows for s in self.steps)
