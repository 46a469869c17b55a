"""The description of one run (command, files, options) passed from the CLI to the worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from gradcli.present.gates import Gates


@dataclass
class Job:
    """Everything a command needs; built by the CLI, sent to the worker as JSON."""

    command: str
    model: str
    input: str | None = None
    target: str | None = None
    loss: str | None = None
    from_logits: bool = False
    class_index: int | str | None = None  # K, "pred" or a .npy file of classes
    output: str | None = None
    logits: bool = False  # differentiate the selected output before its softmax/sigmoid
    layers: list[str] = field(default_factory=list)
    method: str = "vanilla"
    samples: int = 25
    noise: float = 0.15
    seed: int | None = None
    steps: int = 50
    baseline: str | None = None
    batch_size: int | None = None
    training: bool = False
    jit: bool = False
    out: str | None = None
    png: str | None = None
    png_limit: int = 16
    png_style: str | None = None  # signed | magnitude; None: the method's default
    activations: bool = False  # wrt-layer: also write the layers' activations
    top: int | None = None
    per_sample: bool = False
    per_sample_arrays: bool = False
    fail_on: list[str] = field(default_factory=list)
    max_norm: float | None = None
    min_norm: float | None = None
    unsafe: bool = False
    imports: list[str] = field(default_factory=list)
    max_elements: float = 1e8
    wrt: str = "input"
    directions: int = 3
    eps: float | None = None
    rtol: float | None = None
    shard: tuple[int, int] | None = None
    skip: list[int] = field(default_factory=list)
    against: str | None = None  # --against MODEL_B: the same job on B, then the diff
    min_cosine: float | None = None
    max_rel_diff: float | None = None
    min_rank_corr: float | None = None
    top_percent: float = 10.0
    junit: str | None = None  # --junit FILE (of one model: staged with its outputs)

    @property
    def gates(self) -> Gates:
        return Gates(frozenset(self.fail_on), self.max_norm, self.min_norm)
