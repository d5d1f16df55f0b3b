"""Reading one step's inputs: floats, NumPy scalars, 0-d tensors (without importing torch)."""

from __future__ import annotations

import math
from typing import Any, Optional

from .._validate import as_number


class Signals:
    """One step's inputs as Python floats (None = not given)."""

    __slots__ = (
        "grad_norm",
        "loss",
        "lr",
        "noise",
        "param_norm",
        "processivity",
        "step",
        "step_norm",
        "time",
        "update_lr",
    )

    def __init__(
        self,
        loss: float,
        step: Optional[int],
        grad_norm: Optional[float],
        step_norm: Optional[float],
        noise: Optional[float],
        lr: Optional[float],
        time: Optional[float],
        param_norm: Optional[float] = None,
        processivity: Optional[float] = None,
        update_lr: Optional[float] = None,
    ) -> None:
        self.loss = loss  # (one assignment per field: cheaper than tuple unpacking)
        self.step = step
        self.grad_norm = grad_norm
        self.step_norm = step_norm
        self.noise = noise
        self.lr = lr
        self.time = time
        self.param_norm = param_norm
        self.processivity = processivity
        self.update_lr = update_lr


def _lenient(x: Any) -> Optional[float]:
    if x is None:
        return None
    try:
        return float(x)
    except Exception:
        return math.nan  # garbage after the first call reads as "not a number", never raises


def read_inputs(
    loss: Any,
    step: Any,
    grad_norm: Any,
    step_norm: Any,
    noise: Any,
    lr: Any,
    time: Any,
    param_norm: Any = None,
    processivity: Any = None,
    update_lr: Any = None,
    *,
    strict: bool,
) -> Signals:
    """Convert; with ``strict`` (the first call) a bad type raises TypeError naming it."""
    if strict:
        vals = {}
        for name, v in (
            ("loss", loss),
            ("grad_norm", grad_norm),
            ("step_norm", step_norm),
            ("noise", noise),
            ("lr", lr),
            ("time", time),
            ("param_norm", param_norm),
            ("processivity", processivity),
            ("update_lr", update_lr),
        ):
            if v is None and name == "loss":
                raise TypeError("loss is required and must be a real number, got None")
            vals[name] = None if v is None else as_number(v, name)
        if step is not None and (
            isinstance(step, bool) or not float(as_number(step, "step")).is_integer()
        ):
            raise TypeError(f"step must be an integer, got {step!r}")
        st = None if step is None else int(step)
        return Signals(
            vals["loss"],
            st,
            vals["grad_norm"],
            vals["step_norm"],
            vals["noise"],
            vals["lr"],
            vals["time"],
            vals["param_norm"],
            vals["processivity"],
            vals["update_lr"],
        )
    # (Monitor.update inlines the fast path for inputs that all convert)
    return read_lenient(
        loss, step, grad_norm, step_norm, noise, lr, time, param_norm, processivity, update_lr
    )


def read_lenient(
    loss: Any,
    step: Any,
    grad_norm: Any,
    step_norm: Any,
    noise: Any,
    lr: Any,
    time: Any,
    param_norm: Any,
    processivity: Any,
    update_lr: Any = None,
) -> Signals:
    """What cannot be converted reads as NaN (a step as None); never raises."""
    lf = _lenient(loss)
    try:
        st = None if step is None else int(step)
    except Exception:
        st = None
    return Signals(
        math.nan if lf is None else lf,
        st,
        _lenient(grad_norm),
        _lenient(step_norm),
        _lenient(noise),
        _lenient(lr),
        _lenient(time),
        _lenient(param_norm),
        _lenient(processivity),
        _lenient(update_lr),
    )
