"""Model-merge danger boundaries: where does averaging two models stop being safe?

``scan(model_a, model_b, batches)`` walks a grid of merge coefficients α and evaluates
the merged model θ(α) on the same batches at every point:

* ``linear`` (default): θ(α) = (1 − α)·A + α·B, so α = 0 is A and α = 1 is B. This is
  also "task arithmetic from A": A + α·(B − A).
* ``task`` (needs ``base=``): θ(α) = base + α·((A − base) + (B − base)), the sum of the
  two task vectors scaled by α: α = 0 is the base, α = 0.5 the plain average of A and B,
  α = 1 the full sum "A + B − base". A and B are still the reference endpoints for the
  loss margin and θ.
* per-layer α (either method): ``layer_alpha`` is a dict ``{key prefix: α}`` (a fixed α
  for the state_dict keys that start with the prefix, longest prefix wins; other keys
  follow the grid α) or a callable ``(key, α) -> α_key``.

Only floating-point tensors are interpolated; every other buffer (e.g. BatchNorm's
``num_batches_tracked``) is taken from A. The state_dict keys and shapes must match
(ValueError naming the first key that does not).

At each α, for each batch (x, y): the loss ``loss_fn(model(x), y)`` (default
cross-entropy) and the L2 norm of its gradient over all parameters (model in eval mode).
From these per-batch series:

* ``losses``: the sample-weighted mean loss.
* the gradient-noise series: per-batch gradient norm minus its mean over the batches;
  its fingerprint (``anet_lite.fingerprint.series_fingerprint``, needs >= 16 batches) is
  compared with the fingerprint at A and at B: ``theta_a``, ``theta_b``
  (``similarity``, 1 = the same noise shape). The batches are always taken in the same
  order, so the series of two models line up batch by batch.
* ``f_total`` = Ṡ + P (``anet_lite.metrics.f_total`` with unit weights), where Ṡ =
  ``entropy_rate`` of the per-batch loss series with a window of half the batches (how
  much more erratic the loss is over the second half of the batches than over the
  first) and P = ``processivity(grad_norms, batch losses)``: the correlation of log
  gradient norm and log loss over the batches (+1: the batches the model gets wrong are
  the ones that pull hardest — a coherent model; ~0 or < 0: gradients no longer follow
  the error).

α is **safe** when loss(α) <= (1 + margin) · max(loss(A), loss(B)) AND θ against the
nearer endpoint >= ``theta_min`` (nearer: A for α < 0.5, B for α > 0.5, the better of the
two at 0.5 and for the ``task`` method). The **boundary** is the first unsafe α met when
walking in from each side (from α = 0 up, from α = 1 down); ``safe_intervals`` are the
maximal runs of safe grid points and ``safe_interval`` the longest of them (the first on a
tie). ``MergeScan.explain(lang)`` says it in words (English / Japanese).

Importing this module needs NumPy only; ``scan`` and ``merge_state`` import PyTorch when
called (``pip install 'anet-lite[torch]'``). Built-in model pairs to try it on:
``anet_lite.torch.digits`` (``digits_pairs()``, ``digits_batches()``).
"""

from __future__ import annotations

import contextlib
import copy
import html
import io
import math
import re
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from . import fingerprint
from .metrics import entropy_rate, f_total, processivity

if TYPE_CHECKING:  # (annotations only: torch is imported when a function needs it)
    import torch
    from torch import nn

DEFAULT_ALPHAS = tuple(round(i / 10, 10) for i in range(11))
DEFAULT_MARGIN = 0.1
DEFAULT_THETA_MIN = 0.6
METHODS = ("linear", "task")

LayerAlpha = Union[Mapping[str, float], Callable[[str, float], float], None]

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_MARGIN",
    "DEFAULT_THETA_MIN",
    "METHODS",
    "LayerAlpha",
    "MergeScan",
    "check_compatible",
    "merge_state",
    "one_thread",
    "scan",
]


# ---- merging ------------------------------------------------------------------------------


def _torch() -> Any:
    """The torch module, or ImportError naming the extra to install."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "the merge scan needs PyTorch: pip install 'anet-lite[torch]' "
            "(on CPU machines: pip install torch==2.13.0 first)"
        ) from exc
    return torch


def _state(m: Union[nn.Module, Mapping[str, torch.Tensor]], name: str) -> Dict[str, torch.Tensor]:
    if isinstance(m, _torch().nn.Module):
        return {k: v.detach() for k, v in m.state_dict().items()}
    if isinstance(m, Mapping):
        return dict(m)
    raise TypeError(f"{name} must be an nn.Module or a state_dict, got {type(m).__name__}")


def check_compatible(a: Mapping[str, Any], b: Mapping[str, Any], name_b: str = "model_b") -> None:
    """ValueError naming the first key that is missing, extra or of another shape in ``b``."""
    for k in a:
        if k not in b:
            raise ValueError(f"state_dict mismatch: key {k!r} is missing from {name_b}")
    for k in b:
        if k not in a:
            raise ValueError(f"state_dict mismatch: {name_b} has an unexpected key {k!r}")
    for k, v in a.items():
        if tuple(v.shape) != tuple(b[k].shape):
            raise ValueError(
                f"state_dict mismatch: key {k!r} has shape {tuple(v.shape)} in model_a "
                f"but {tuple(b[k].shape)} in {name_b}"
            )


def _key_alpha(key: str, alpha: float, layer_alpha: LayerAlpha) -> float:
    if layer_alpha is None:
        return alpha
    if callable(layer_alpha):
        return float(layer_alpha(key, alpha))
    best = None
    for prefix in layer_alpha:
        if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return alpha if best is None else float(layer_alpha[best])


def merge_state(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    alpha: float,
    *,
    method: str = "linear",
    base: Optional[Mapping[str, torch.Tensor]] = None,
    layer_alpha: LayerAlpha = None,
) -> Dict[str, torch.Tensor]:
    """The merged state_dict at ``alpha`` (see the module doc for the formulas)."""
    torch = _torch()
    out: Dict[str, torch.Tensor] = {}
    for k, va in a.items():
        if not torch.is_floating_point(va):
            out[k] = va.clone()
            continue
        t = _key_alpha(k, alpha, layer_alpha)
        vb = b[k].to(va.dtype)
        if method == "linear":
            out[k] = (1.0 - t) * va + t * vb
        else:
            vbase = base[k].to(va.dtype)  # type: ignore[index]
            out[k] = vbase + t * ((va - vbase) + (vb - vbase))
    return out


# ---- evaluation ---------------------------------------------------------------------------


@dataclass
class _Eval:
    loss: float
    batch_losses: np.ndarray
    grad_norms: np.ndarray
    fingerprint: Optional[np.ndarray]


def _evaluate(model: nn.Module, batches: Sequence[Tuple[Any, Any]], loss_fn: Callable) -> _Eval:
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    losses, gnorms, sizes = [], [], []
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        sq = sum(float(p.grad.detach().pow(2).sum()) for p in params if p.grad is not None)
        losses.append(float(loss.detach()))
        gnorms.append(math.sqrt(sq))
        sizes.append(len(x))
    model.zero_grad(set_to_none=True)
    bl, g = np.asarray(losses), np.asarray(gnorms)
    noise = g - g.mean()
    with np.errstate(all="ignore"):
        fp = fingerprint.series_fingerprint(noise) if np.all(np.isfinite(noise)) else None
    mean_loss = float(np.average(bl, weights=np.asarray(sizes, dtype=np.float64)))
    return _Eval(mean_loss, bl, g, fp)


def _f_total(ev: _Eval) -> float:
    n = len(ev.batch_losses)
    s_dot = entropy_rate(ev.batch_losses, window=max(2, n // 2))
    p = processivity(ev.grad_norms, np.maximum(ev.batch_losses, 0.0))
    return float(f_total(s_dot, p))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (tiny models run ~5x faster);
    the setting is restored after."""
    torch = _torch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---- result -------------------------------------------------------------------------------


def _fmt(a: Optional[float]) -> str:
    return "—" if a is None else f"{a:.2f}".rstrip("0").rstrip(".") if a % 1 else f"{a:.1f}"


@dataclass
class MergeScan:
    """The result of ``scan``: per-α series, the safe set and the boundaries."""

    alphas: List[float]
    losses: List[float]
    grad_norms: List[float]  # mean per-batch gradient norm at each α
    theta_a: List[float]
    theta_b: List[float]
    f_total: List[float]
    safe: List[bool]
    safe_interval: Optional[Tuple[float, float]]
    boundary: Tuple[Optional[float], Optional[float]]  # (from A's side, from B's side)
    safe_intervals: List[Tuple[float, float]] = field(default_factory=list)
    loss_a: float = float("nan")
    loss_b: float = float("nan")
    loss_limit: float = float("nan")
    margin: float = DEFAULT_MARGIN
    theta_min: float = DEFAULT_THETA_MIN
    method: str = "linear"

    @property
    def all_safe(self) -> bool:
        return all(self.safe)

    def theta_near(self, i: int) -> float:
        a = self.alphas[i]
        if self.method == "linear" and a < 0.5:
            return self.theta_a[i]
        if self.method == "linear" and a > 0.5:
            return self.theta_b[i]
        return max(self.theta_a[i], self.theta_b[i])

    def worst(self) -> int:
        """Index of the highest loss on the grid."""
        return int(np.argmax(self.losses))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "method": self.method,
            "alphas": list(self.alphas),
            "losses": list(self.losses),
            "grad_norms": list(self.grad_norms),
            "theta_a": list(self.theta_a),
            "theta_b": list(self.theta_b),
            "f_total": list(self.f_total),
            "safe": list(self.safe),
            "safe_interval": None if self.safe_interval is None else list(self.safe_interval),
            "safe_intervals": [list(iv) for iv in self.safe_intervals],
            "boundary": {"from_a": self.boundary[0], "from_b": self.boundary[1]},
            "loss_a": self.loss_a,
            "loss_b": self.loss_b,
            "loss_limit": self.loss_limit,
            "margin": self.margin,
            "theta_min": self.theta_min,
            "all_safe": self.all_safe,
        }

    def explain(self, lang: str = "en") -> str:
        """Two or three sentences: the verdict, the safe range, the worst point, advice."""
        if lang not in ("en", "ja"):
            raise ValueError(f"lang must be 'en' or 'ja', got {lang!r}")
        ja = lang == "ja"
        w = self.worst()
        wa, wl = self.alphas[w], self.losses[w]
        ratio = wl / max(max(self.loss_a, self.loss_b), 1e-12)
        lim = f"{self.loss_limit:.3g}"
        if self.all_safe:
            if ja:
                return (
                    f"α = {_fmt(self.alphas[0])}〜{_fmt(self.alphas[-1])} の全域で"
                    "マージは安全です。"
                    f"損失は上限 {lim}（両端の最大損失 +{self.margin:.0%}）以内、"
                    f"近い側の端点とのノイズ指紋一致度 θ も {self.theta_min} 以上を保っています"
                    f"（最大損失 {wl:.3g}, α = {_fmt(wa)}）。"
                )
            return (
                f"Merging is safe across α = {_fmt(self.alphas[0])}..{_fmt(self.alphas[-1])}: "
                f"the loss stays within {lim} (the endpoints' worst loss + {self.margin:.0%}) "
                f"and the gradient-noise fingerprint keeps θ >= {self.theta_min} against the "
                f"nearer endpoint (highest loss {wl:.3g} at α = {_fmt(wa)})."
            )
        bad = [i for i, s in enumerate(self.safe) if not s]
        i0 = bad[0]
        why_loss = self.losses[i0] > self.loss_limit
        th = self.theta_near(i0)
        lo, hi = self.boundary
        if ja:
            side = f"A 側からは α = {_fmt(lo)}、B 側からは α = {_fmt(hi)} で危険域に入ります。"
            if self.safe_interval is None:
                safe = "安全な α はグリッド上にありません。"
            else:
                s0, s1 = self.safe_interval
                safe = f"最も広い安全区間は α = {_fmt(s0)}〜{_fmt(s1)} です。"
            cause = (
                f"α = {_fmt(self.alphas[i0])} で損失 {self.losses[i0]:.3g} が上限 {lim} を超え"
                if why_loss
                else f"α = {_fmt(self.alphas[i0])} でノイズ指紋一致度 θ = {th:.2f} が "
                f"{self.theta_min} を下回り"
            )
            return (
                f"マージに危険域があります: {side}{cause}、"
                f"最悪点は α = {_fmt(wa)}（損失 {wl:.3g}、端点の {ratio:.1f} 倍）です。{safe}"
                "安全区間の中でのみマージするか、共通の初期値から学習したモデル同士で"
                "マージするか、ニューロンの並べ替え（パーミュテーション整列）を先に行ってください。"
            )
        side = f"from A's side the danger zone starts at α = {_fmt(lo)}, from B's at α = {_fmt(hi)}"
        if self.safe_interval is None:
            safe = "No α on the grid is safe."
        else:
            s0, s1 = self.safe_interval
            safe = f"The widest safe interval is α = {_fmt(s0)}..{_fmt(s1)}."
        cause = (
            f"at α = {_fmt(self.alphas[i0])} the loss {self.losses[i0]:.3g} exceeds the limit {lim}"
            if why_loss
            else f"at α = {_fmt(self.alphas[i0])} the noise-fingerprint θ = {th:.2f} falls below "
            f"{self.theta_min}"
        )
        return (
            f"Merging has a danger zone: {side}; {cause}, and the worst point is α = {_fmt(wa)} "
            f"(loss {wl:.3g}, {ratio:.1f}x the endpoints'). {safe} Merge only inside a "
            "safe interval, or merge models fine-tuned from one shared initialisation, or "
            "align their neurons (permutation matching) first."
        )

    def plot_svg(self, title: str = "") -> str:
        """The loss and θ curves over α, with the danger zone shaded, as an SVG string.

        Needs matplotlib (imported here, not at module import).
        """
        from matplotlib.backends.backend_svg import FigureCanvasSVG
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.0, 4.2))
        FigureCanvasSVG(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(self.alphas, self.losses, "o-", color="tab:red", label="loss")
        ax.axhline(self.loss_limit, color="tab:red", ls=":", lw=1, label="loss limit")
        ax.set_xlabel("α (0 = A, 1 = B)" if self.method == "linear" else "α")
        ax.set_ylabel("mean loss")
        ax2 = ax.twinx()
        ax2.plot(self.alphas, self.theta_a, "s--", color="tab:blue", ms=4, label="θ vs A")
        ax2.plot(self.alphas, self.theta_b, "^--", color="tab:green", ms=4, label="θ vs B")
        ax2.axhline(self.theta_min, color="gray", ls=":", lw=1)
        ax2.set_ylim(-0.02, 1.05)
        ax2.set_ylabel("θ")
        step = (self.alphas[1] - self.alphas[0]) / 2 if len(self.alphas) > 1 else 0.05
        for a, s in zip(self.alphas, self.safe):
            if not s:
                ax.axvspan(a - step, a + step, color="tab:red", alpha=0.12, lw=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = buf.getvalue()
        # matplotlib copies label text into XML comments; drop them (the text is drawn as paths)
        return re.sub(r"<!--.*?-->", "", svg[svg.find("<svg") :], flags=re.S)

    def to_html(
        self, path: Optional[Union[str, Any]] = None, *, title: str = "Merge scan", lang: str = "en"
    ) -> str:
        """A self-contained HTML page (inline SVG plot, table, explanation); written to
        ``path`` when given. Returns the HTML. All text is escaped."""
        e = html.escape
        try:
            plot = self.plot_svg(title)
        except ImportError:
            plot = "<p>(no plot: pip install matplotlib)</p>"
        rows = "".join(
            f"<tr class='{'ok' if s else 'bad'}'><td>{a:.3g}</td><td>{lo:.4g}</td>"
            f"<td>{g:.4g}</td><td>{ta:.3f}</td><td>{tb:.3f}</td><td>{ft:.3f}</td>"
            f"<td>{'safe' if s else 'DANGER'}</td></tr>"
            for a, lo, g, ta, tb, ft, s in zip(
                self.alphas,
                self.losses,
                self.grad_norms,
                self.theta_a,
                self.theta_b,
                self.f_total,
                self.safe,
            )
        )
        doc = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{e(title)}</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            "tr.bad{background:#fde0e0}</style></head><body>"
            f"<h1>{e(title)}</h1><p>{e(self.explain(lang))}</p>{plot}"
            "<table><tr><th>α</th><th>loss</th><th>grad norm</th><th>θ vs A</th>"
            f"<th>θ vs B</th><th>F_Total</th><th>verdict</th></tr>{rows}</table>"
            f"<p>{e(f'method={self.method}, margin={self.margin}, theta_min={self.theta_min}')}"
            "</p></body></html>\n"
        )
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(doc)
        return doc


# ---- scan ---------------------------------------------------------------------------------


def _runs(alphas: Sequence[float], safe: Sequence[bool]) -> List[Tuple[float, float]]:
    runs: List[Tuple[float, float]] = []
    start = None
    for i, s in enumerate(safe):
        if s and start is None:
            start = i
        if start is not None and (not s or i == len(safe) - 1):
            end = i if s else i - 1
            runs.append((alphas[start], alphas[end]))
            start = None
    return runs


def scan(
    model_a: Union[nn.Module, Mapping[str, torch.Tensor]],
    model_b: Union[nn.Module, Mapping[str, torch.Tensor]],
    batches: Sequence[Tuple[Any, Any]],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    method: str = "linear",
    base: Union[nn.Module, Mapping[str, torch.Tensor], None] = None,
    layer_alpha: LayerAlpha = None,
    loss_fn: Optional[Callable] = None,
    margin: float = DEFAULT_MARGIN,
    theta_min: float = DEFAULT_THETA_MIN,
    model: Optional[nn.Module] = None,
) -> MergeScan:
    """Scan the merges of ``model_a`` and ``model_b`` over ``alphas`` (see the module doc).

    ``model_a``/``model_b``/``base`` are modules or state_dicts; ``model`` is the module
    the merged weights are loaded into (default: a deep copy of ``model_a``, which must
    then be a module). ``batches`` is a list of (x, y) with at least 16 batches.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "task" and base is None:
        raise ValueError("method='task' needs base= (the model both were fine-tuned from)")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    if not (isinstance(theta_min, (int, float)) and 0.0 <= theta_min <= 1.0):
        raise ValueError(f"theta_min must be in [0, 1], got {theta_min!r}")
    al = [float(a) for a in alphas]
    if not al or not all(math.isfinite(a) for a in al):
        raise ValueError("alphas must be a non-empty list of finite numbers")
    if any(b <= a for a, b in zip(al, al[1:])):
        raise ValueError("alphas must be strictly increasing")
    batches = list(batches)
    if len(batches) < fingerprint.MIN_LENGTH:
        raise ValueError(
            f"batches: need at least {fingerprint.MIN_LENGTH} batches for a gradient-noise "
            f"fingerprint, got {len(batches)}"
        )
    torch = _torch()
    nn = torch.nn
    sa, sb = _state(model_a, "model_a"), _state(model_b, "model_b")
    check_compatible(sa, sb, "model_b")
    sbase = None
    if base is not None:
        sbase = _state(base, "base")
        check_compatible(sa, sbase, "base")
    if model is None:
        if not isinstance(model_a, nn.Module):
            raise TypeError("model= is needed when model_a is a state_dict")
        model = copy.deepcopy(model_a)
    else:
        model = copy.deepcopy(model)
    loss_fn = loss_fn or nn.functional.cross_entropy

    def run(state: Mapping[str, torch.Tensor]) -> _Eval:
        with torch.no_grad():
            model.load_state_dict(state)
        return _evaluate(model, batches, loss_fn)

    with one_thread():
        return _scan(run, sa, sb, sbase, al, method, layer_alpha, float(margin), theta_min)


def _scan(run, sa, sb, sbase, al, method, layer_alpha, margin, theta_min) -> MergeScan:
    ev_a, ev_b = run(sa), run(sb)
    limit = (1.0 + float(margin)) * max(ev_a.loss, ev_b.loss)
    res = MergeScan(
        alphas=al,
        losses=[],
        grad_norms=[],
        theta_a=[],
        theta_b=[],
        f_total=[],
        safe=[],
        safe_interval=None,
        boundary=(None, None),
        loss_a=ev_a.loss,
        loss_b=ev_b.loss,
        loss_limit=limit,
        margin=float(margin),
        theta_min=float(theta_min),
        method=method,
    )
    for i, a in enumerate(al):
        if method == "linear" and layer_alpha is None and a in (0.0, 1.0):
            ev = ev_a if a == 0.0 else ev_b
        else:
            ev = run(merge_state(sa, sb, a, method=method, base=sbase, layer_alpha=layer_alpha))
        res.losses.append(ev.loss)
        res.grad_norms.append(float(ev.grad_norms.mean()))
        res.theta_a.append(fingerprint.similarity(ev.fingerprint, ev_a.fingerprint))
        res.theta_b.append(fingerprint.similarity(ev.fingerprint, ev_b.fingerprint))
        res.f_total.append(_f_total(ev))
        ok = math.isfinite(ev.loss) and ev.loss <= limit and res.theta_near(i) >= theta_min
        res.safe.append(bool(ok))
    res.safe_intervals = _runs(al, res.safe)
    if res.safe_intervals:
        res.safe_interval = max(res.safe_intervals, key=lambda iv: iv[1] - iv[0])
    if not res.all_safe:
        lo = next(a for a, s in zip(al, res.safe) if not s)
        hi = next(a for a, s in zip(reversed(al), reversed(res.safe)) if not s)
        res.boundary = (lo, hi)
    return res
