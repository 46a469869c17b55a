"""`--shard auto`: which shard this process is, from the scheduler's environment (stdlib only;
read by the CLI when it reads the option, for every command that takes `--shard`).

An array job of N tasks runs the same command N times; each task must know its index K
(0-based) and the count N. Two schedulers are read:

- Kubernetes Indexed Jobs set `JOB_COMPLETION_INDEX` (0 to `spec.completions` - 1) in every
  container. Kubernetes does not give pods the completions count (kubernetes/kubernetes#106009:
  the Job spec is not reachable through the downward API), so the manifest sets it itself as
  `JOB_COMPLETIONS`, to the same number as `spec.completions`.
- Slurm job arrays set `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`,
  `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_MAX` and `SLURM_ARRAY_TASK_STEP`. Task IDs need not
  start at 0 (`--array=1-8`) and may step (`--array=0-14:2`): K is the task's position in the
  range, `(ID - MIN) / STEP`. A list that is no range (`--array=1,3,7`) has no such position
  and is refused, as is a range whose COUNT disagrees with MIN, MAX and STEP.

Both at once, neither, or values that are not integers or do not fit together are a usage
error (exit 2) naming the variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gradcli.errors import UsageError, param

K8S_INDEX = "JOB_COMPLETION_INDEX"
K8S_COUNT = "JOB_COMPLETIONS"
SLURM_ID = "SLURM_ARRAY_TASK_ID"
SLURM_COUNT = "SLURM_ARRAY_TASK_COUNT"
SLURM_MIN = "SLURM_ARRAY_TASK_MIN"
SLURM_MAX = "SLURM_ARRAY_TASK_MAX"
SLURM_STEP = "SLURM_ARRAY_TASK_STEP"

AUTO = "auto"


def _auto(reason: str) -> UsageError:
    return UsageError(f"{param('shard', AUTO)}: {reason}")


def _integer(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise _auto(f"{name}={text!r} is not an integer") from None


def _checked(k: int, n: int, names: str) -> tuple[int, int]:
    if n < 1 or not 0 <= k < n:
        raise _auto(f"{names} give shard {k}/{n}; need 0 <= K < N")
    return k, n


def _kubernetes(env: Mapping[str, str]) -> tuple[int, int]:
    k, n = _integer(env, K8S_INDEX), _integer(env, K8S_COUNT)
    if n is None:
        raise _auto(
            f"{K8S_INDEX} is set but {K8S_COUNT} is not; Kubernetes does not tell pods the "
            f"completions count: set {K8S_COUNT} in the Job's env to its spec.completions"
        )
    assert k is not None
    return _checked(k, n, f"{K8S_INDEX}={k} and {K8S_COUNT}={n}")


def _slurm(env: Mapping[str, str]) -> tuple[int, int]:
    task = _integer(env, SLURM_ID)
    assert task is not None
    count, low, high = (_integer(env, v) for v in (SLURM_COUNT, SLURM_MIN, SLURM_MAX))
    step = _integer(env, SLURM_STEP) or 1
    if low is None or (count is None and high is None):
        raise _auto(
            f"{SLURM_ID} is set but not {SLURM_MIN} with {SLURM_COUNT} or {SLURM_MAX}: "
            "is this a task of a Slurm job array (sbatch --array)?"
        )
    if step < 1:
        raise _auto(f"{SLURM_STEP}={step}: expected a positive step")
    if count is None:
        assert high is not None
        count = (high - low) // step + 1
    names = f"{SLURM_ID}={task}, {SLURM_MIN}={low}, {SLURM_COUNT}={count}"
    if high is not None and low + (count - 1) * step != high:
        raise _auto(
            f"{names}, {SLURM_MAX}={high}, {SLURM_STEP}={step} are not one range: the array's "
            "task IDs must be a range like --array=0-7 or 1-15:2, not a list"
        )
    if (task - low) % step:
        raise _auto(f"{names}, {SLURM_STEP}={step}: the task ID is not in the range")
    return _checked((task - low) // step, count, names)


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(K, N) of this task of an array job, from Kubernetes' or Slurm's variables in `env`
    (default: the process environment)."""
    env = os.environ if env is None else env
    k8s = _integer(env, K8S_INDEX) is not None
    slurm = _integer(env, SLURM_ID) is not None
    if k8s and slurm:
        raise _auto(f"both {K8S_INDEX} (Kubernetes) and {SLURM_ID} (Slurm) are set; give K/N")
    if k8s:
        return _kubernetes(env)
    if slurm:
        return _slurm(env)
    raise _auto(
        f"no array-job variables: expected {K8S_INDEX} with {K8S_COUNT} (a Kubernetes Indexed "
        f"Job) or {SLURM_ID} with {SLURM_COUNT} (a Slurm job array)"
    )
