"""The order options appear in in a command's help: groups of field and presentation-option
names that several commands' layouts share (light)."""

from __future__ import annotations

from gradcli.commands.spec import REPORT_FILES

OBJECTIVE = ("target", "loss", "from_logits", "class_index", "output")
DIFF_GATES = ("min_cosine", "max_rel_diff", "min_rank_corr", "top_percent")
AGAINST = ("against", *DIFF_GATES)
RUN = (
    "batch_size",
    "training",
    "jit",
    "out",
    "output_format",
    "as_json",
    "quiet",
    "fail_on",
    "max_norm",
    "min_norm",
    "unsafe",
    "imports",
    "shard",
    REPORT_FILES,
    "onednn",
    "debug",
)
# a command that runs no TensorFlow (diff): its --debug shows tracebacks only ("trace")
REPORTS = ("output_format", "as_json", REPORT_FILES, "quiet", "trace")
