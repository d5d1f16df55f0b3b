"""``anet-lite sig-check`` (image noise signatures) and ``anet-lite merge-scan`` (model merges)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from ..records.outputs import json_safe as _json_safe
from ._common import EXIT_ALERT, EXIT_OK, EXIT_USAGE
from ._common import err as _err

__all__ = [
    "add_merge_scan_parser",
    "add_sig_check_parser",
    "cmd_merge_scan",
    "cmd_sig_check",
]


# ---- sig-check ----------------------------------------------------------------------------

_SIG_CHECK_EPILOG = """examples:
  anet-lite sig-check photo.png photo_x4.png
  anet-lite sig-check photo.png photo_x4.png --lang ja --json
  anet-lite sig-check --compare --factor 3

θ (0..1) compares the noise fingerprint of ORIGINAL with that of UPSCALED brought back to
ORIGINAL's size (area/BOX filter). >= 0.9 preserved, >= 0.6 weakened, below: lost.
--compare runs Pillow's nearest/bilinear/bicubic/lanczos on scikit-learn's sample photos.
Needs Pillow: pip install 'anet-lite[image]'.

exit codes:
  0  θ computed (whatever its value)
  2  usage or input error (no such file, not an image, sizes that do not fit, no Pillow)
"""


def add_sig_check_parser(sub: Any, fmt: Any) -> None:
    s = sub.add_parser(
        "sig-check",
        help="does an upscaled image keep the original's noise signature? (θ)",
        description="Signature-preserving super-resolution check: θ between the noise "
        "fingerprints of an original image and its upscaled version.",
        epilog=_SIG_CHECK_EPILOG,
        formatter_class=fmt,
    )
    s.add_argument("original", metavar="ORIGINAL", nargs="?")
    s.add_argument("upscaled", metavar="UPSCALED", nargs="?")
    s.add_argument(
        "--compare", action="store_true", help="compare Pillow's upscalers on sample photos"
    )
    s.add_argument("--factor", type=float, default=2.0, help="--compare's scale (default 2)")
    s.add_argument("--beta", type=float, default=3.0, help="θ sensitivity (default 3)")
    s.add_argument("--lang", default="en", choices=("en", "ja"), help="verdict language")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_sig_check)


def cmd_sig_check(args: argparse.Namespace) -> int:
    try:
        from ..image import (
            compare_upscalers,
            format_comparison,
            load_image,
            signature_consistency,
            verdict,
        )

        if args.compare:
            if args.original or args.upscaled:
                _err("sig-check: give ORIGINAL UPSCALED or --compare, not both")
                return EXIT_USAGE
            rows = compare_upscalers(factor=args.factor, beta=args.beta)
            if args.json:
                print(json.dumps(rows, ensure_ascii=False))
            else:
                print(format_comparison(rows, lang=args.lang))
            return EXIT_OK
        if not (args.original and args.upscaled):
            _err("sig-check needs ORIGINAL and UPSCALED (or --compare)")
            return EXIT_USAGE
        orig, up = load_image(args.original), load_image(args.upscaled)
        theta = signature_consistency(orig, up, beta=args.beta)
    except (ImportError, OSError, TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    words = verdict(theta, lang=args.lang)
    if args.json:
        d = {"original": args.original, "upscaled": args.upscaled, "theta": theta}
        d["verdict"] = words
        print(json.dumps(d, ensure_ascii=False))
    else:
        print(f"θ = {theta:.4f}: {words}")
    return EXIT_OK


# ---- merge-scan ---------------------------------------------------------------------------

_MERGE_SCAN_EPILOG = """examples:
  anet-lite merge-scan A.pt B.pt
  anet-lite merge-scan A.pt B.pt --alphas 21 --out merge_report --lang ja
  anet-lite merge-scan A.pt B.pt --arch mypkg.models:make_model --json
  anet-lite merge-scan --demo --out merge_demo

A.pt and B.pt are state_dicts (torch.save(model.state_dict(), path)), loaded with
torch.load(path, weights_only=True). The architecture is the built-in digits MLP
(Linear(64, 64) -> ReLU -> Linear(64, 10), keys hidden.* and out.*) unless --arch
MODULE:FACTORY names a function returning the (untrained) model. The data (--data digits,
the only one built in) is 400 held-out scikit-learn digits images in 50 batches of 8.
Merge: linear, (1 - a) * A + a * B. Safe: loss <= (1 + margin) * max(loss A, loss B)
and noise-fingerprint theta vs the nearer endpoint >= theta-min.
--demo scans the two built-in pairs (shared init: merges well; different inits: a loss
barrier) and writes DIR/merge_shared_init.html and DIR/merge_different_init.html
(DIR defaults to ./merge_scan_demo).

exit codes:
  0  safe at every alpha (--demo: the demo ran)
  1  a danger zone was found
  2  usage or input error (no such file, not a state_dict, keys that do not match)
"""


def add_merge_scan_parser(sub: Any, fmt: Any) -> None:
    m = sub.add_parser(
        "merge-scan",
        help="scan the merges of two models for a danger zone (loss barrier, θ)",
        description="Model-merge danger boundaries: evaluate (1 - a) * A + a * B on a grid of "
        "a and report the safe interval and where merging stops being safe.",
        epilog=_MERGE_SCAN_EPILOG,
        formatter_class=fmt,
    )
    m.add_argument("a", metavar="A.pt", nargs="?")
    m.add_argument("b", metavar="B.pt", nargs="?")
    m.add_argument("--demo", action="store_true", help="scan the built-in digits pairs")
    m.add_argument("--data", default="digits", choices=("digits",), help="evaluation data")
    m.add_argument("--arch", metavar="MODULE:FACTORY", help="model factory (default: digits MLP)")
    m.add_argument("--alphas", type=int, default=11, help="grid points from 0 to 1 (default 11)")
    m.add_argument("--margin", type=float, default=0.1, help="relative loss margin (default 0.1)")
    m.add_argument("--theta-min", type=float, default=0.6, help="θ threshold (default 0.6)")
    m.add_argument("--out", metavar="DIR", help="write the HTML report(s) here")
    m.add_argument("--lang", default="en", choices=("en", "ja"), help="explanation language")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_merge_scan)


def _merge_factory(spec: Optional[str]) -> Any:
    from ..torch.digits import digits_mlp

    if not spec:
        return digits_mlp
    import importlib

    mod, sep, fn = spec.partition(":")
    if not (mod and sep and fn):
        raise ValueError(f"--arch {spec!r}: expected MODULE:FACTORY")
    try:
        factory = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--arch {spec!r}: {e}") from None
    if not callable(factory):
        raise ValueError(f"--arch {spec!r}: not callable")
    return factory


def _load_state_dict(path: str) -> Any:
    import torch

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors)")
    return sd


def _merge_summary(name: str, res: Any, lang: str) -> str:
    ja = lang == "ja"
    iv = res.safe_interval
    if iv is None:
        interval = "なし" if ja else "none"
    else:
        interval = f"{iv[0]:g}〜{iv[1]:g}" if ja else f"{iv[0]:g}..{iv[1]:g}"
    verdict = (
        ("安全" if res.all_safe else "危険域あり") if ja else ("SAFE" if res.all_safe else "DANGER")
    )
    head = "安全区間" if ja else "safe interval"
    return f"{name}: {verdict}; {head} α = {interval}\n  {res.explain(lang)}"


def cmd_merge_scan(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401

        from ..merge import scan
        from ..torch.digits import digits_batches, digits_pairs
    except ImportError as e:
        _err(f"merge-scan needs PyTorch: pip install 'anet-lite[torch]' ({e})")
        return EXIT_USAGE
    if args.alphas < 2:
        _err(f"--alphas must be >= 2, got {args.alphas}")
        return EXIT_USAGE
    alphas = [round(i / (args.alphas - 1), 10) for i in range(args.alphas)]
    out = Path(args.out) if args.out else None
    try:
        if args.demo:
            if args.a or args.b or args.arch:
                raise ValueError("merge-scan: give A.pt B.pt or --demo, not both")
            pairs = [(n, a, b, None) for n, (a, b) in digits_pairs().items()]
            out = out or Path("merge_scan_demo")
        else:
            if not (args.a and args.b):
                raise ValueError("merge-scan needs A.pt and B.pt (or --demo)")
            factory = _merge_factory(args.arch)
            model = factory()
            sa, sb = _load_state_dict(args.a), _load_state_dict(args.b)
            try:
                model.load_state_dict(sa)
            except RuntimeError as e:
                raise ValueError(f"{args.a} does not fit the architecture: {e}") from None
            pairs = [(f"{Path(args.a).name} + {Path(args.b).name}", sa, sb, model)]
        batches = digits_batches()
        results = []
        for name, a, b, model in pairs:
            res = scan(
                a, b, batches, alphas, margin=args.margin, theta_min=args.theta_min, model=model
            )
            results.append((name, res))
        paths = []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name, res in results:
                fname = f"merge_{name}.html" if args.demo else "merge_scan.html"
                paths.append(str(out / fname))
                res.to_html(out / fname, title=f"Merge scan: {name}", lang=args.lang)
    except (TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{e.filename or ''}: {e.strerror or e}")
        return EXIT_USAGE
    danger = any(not r.all_safe for _, r in results)
    code = EXIT_OK if (args.demo or not danger) else EXIT_ALERT
    if args.json:
        d = {"exit_code": code, "reports": paths}
        d["scans"] = {n: r.to_dict() for n, r in results}
        print(json.dumps(_json_safe(d), ensure_ascii=False))
    else:
        for name, res in results:
            print(_merge_summary(name, res, args.lang))
        for pth in paths:
            print(f"report: {pth}")
    return code
