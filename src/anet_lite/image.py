"""Signature-preserving super-resolution: does an upscaler keep a photo's noise signature?

``signature_consistency(original, upscaled)`` (in :mod:`anet_lite.fingerprint`) gives θ in
[0, 1]; this module adds image loading, Pillow's classic upscalers, a verdict in words, and
``compare_upscalers`` over scikit-learn's two sample photographs (china.jpg, flower.jpg, which
ship with scikit-learn). Needs Pillow: ``pip install 'anet-lite[image]'``; the sample images
need scikit-learn. Both are imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .fingerprint import _pillow, signature_consistency

__all__ = [
    "UPSCALERS",
    "compare_upscalers",
    "format_comparison",
    "load_image",
    "sample_images",
    "upscale",
    "verdict",
]

UPSCALERS = ("nearest", "bilinear", "bicubic", "lanczos")
PRESERVED, WEAKENED = 0.9, 0.6  # θ thresholds of the verdict (0.6 is the seed's θ alarm)

_VERDICTS = {
    "en": (
        "signature preserved: the upscale keeps the original's noise fingerprint",
        "signature weakened: the noise fingerprint has shifted (smoothing or invented detail)",
        "signature lost: the upscale's noise no longer matches the original",
    ),
    "ja": (
        "署名保全: アップスケール後もノイズ指紋が元画像と一致しています",
        "署名劣化: ノイズ指紋がずれています（平滑化または細部の捏造）",
        "署名喪失: アップスケール後のノイズが元画像と一致しません",
    ),
}


def verdict(theta: float, lang: str = "en") -> str:
    """θ in words: preserved (>= 0.9), weakened (>= 0.6) or lost."""
    if lang not in _VERDICTS:
        raise ValueError(f"lang must be 'en' or 'ja', got {lang!r}")
    words = _VERDICTS[lang]
    return words[0] if theta >= PRESERVED else words[1] if theta >= WEAKENED else words[2]


def load_image(path: Union[str, Path]) -> np.ndarray:
    """The image at ``path`` as a uint8 (H, W) or (H, W, 3) array (Pillow; palette -> RGB)."""
    Image = _pillow()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("L" if im.mode in ("1", "I", "I;16", "F") else "RGB")
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: not a readable image ({exc})") from None


def upscale(img: np.ndarray, factor: float = 2.0, method: str = "lanczos") -> np.ndarray:
    """``img`` (uint8 (H, W[, 3]) array) enlarged ``factor`` times with Pillow's ``method``."""
    Image = _pillow()
    if method not in UPSCALERS:
        raise ValueError(f"method must be one of {UPSCALERS}, got {method!r}")
    if not (isinstance(factor, (int, float)) and factor >= 1.0):
        raise ValueError(f"factor must be a number >= 1, got {factor!r}")
    a = np.asarray(img)
    if a.ndim not in (2, 3):
        raise ValueError(f"img must be (H, W) or (H, W, 3), got shape {a.shape}")
    im = Image.fromarray(a)
    size = (round(im.size[0] * factor), round(im.size[1] * factor))
    return np.asarray(im.resize(size, resample=getattr(Image, method.upper())))


def sample_images() -> List[Tuple[str, np.ndarray]]:
    """scikit-learn's sample photographs: [("china.jpg", array), ("flower.jpg", array)]."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError("the sample images need scikit-learn: pip install scikit-learn") from exc
    data = load_sample_images()
    return [(Path(f).name, img) for f, img in zip(data.filenames, data.images)]


def compare_upscalers(
    images: Optional[Sequence[Tuple[str, np.ndarray]]] = None,
    *,
    factor: float = 2.0,
    methods: Sequence[str] = UPSCALERS,
    beta: float = 3.0,
) -> List[Dict[str, Any]]:
    """θ of every (image, upscaler) pair: rows {"image", "method", "factor", "theta"}.

    ``images``: (name, array) pairs; default: :func:`sample_images`.
    """
    imgs = sample_images() if images is None else list(images)
    rows = []
    for name, img in imgs:
        for m in methods:
            theta = signature_consistency(img, upscale(img, factor, m), beta=beta)
            rows.append({"image": name, "method": m, "factor": factor, "theta": theta})
    return rows


def format_comparison(rows: Sequence[Dict[str, Any]], lang: str = "en") -> str:
    """The rows of :func:`compare_upscalers` as a small text table with a verdict column."""
    head = ("image", "upscaler", "θ", "verdict") if lang == "en" else ("画像", "方式", "θ", "判定")
    cells = [
        (
            str(r["image"]),
            f"{r['method']} x{r['factor']:g}",
            f"{r['theta']:.4f}",
            verdict(r["theta"], lang).split(":")[0],
        )
        for r in rows
    ]
    from .records.forgetting import _pad, _width  # display width: CJK characters count 2

    widths = [max(_width(c[i]) for c in [head, *cells]) for i in range(3)]
    out = ["  ".join(_pad(c[i], widths[i]) for i in range(3)) + "  " + c[3] for c in [head, *cells]]
    return "\n".join(out)
