"""Model-merge danger boundaries on two pairs of digits MLPs (CPU, a few seconds).

python examples/merge_scan.py [OUT_DIR]    # also writes OUT_DIR/merge_<pair>.html
"""

import sys

from anet_lite.merge import scan
from anet_lite.torch.digits import digits_batches, digits_pairs

batches = digits_batches()  # 400 held-out digits images, 50 batches of 8
for name, (model_a, model_b) in digits_pairs().items():
    res = scan(model_a, model_b, batches)  # alphas 0, 0.1, ..., 1; (1 - a) * A + a * B
    losses = ", ".join(f"{x:.3f}" for x in res.losses)
    print(f"{name}: safe={res.all_safe} interval={res.safe_interval} boundary={res.boundary}")
    print(f"  losses: {losses}\n  {res.explain('en')}")
    if len(sys.argv) > 1:
        res.to_html(f"{sys.argv[1]}/merge_{name}.html", title=name)
