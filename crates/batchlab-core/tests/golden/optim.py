"""Golden values for `batchlab_core::optim` (the tests in `src/optim.rs`).

torch is not installed where these numbers were made, so this file implements PyTorch's
*documented* update equations in NumPy (float64), step by step, as written in the algorithm
boxes of the torch.optim documentation (PyTorch 2.x):

  - SGD (momentum, dampening, nesterov, weight_decay):
    https://pytorch.org/docs/stable/generated/torch.optim.SGD.html
  - Adam (coupled weight_decay, amsgrad=False):
    https://pytorch.org/docs/stable/generated/torch.optim.Adam.html
  - AdamW (decoupled weight_decay, amsgrad=False):
    https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html
  - torch.nn.utils.clip_grad_norm_ (norm_type=2): clip_coef = max_norm / (total_norm + 1e-6),
    the gradients are multiplied by min(clip_coef, 1).
    https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_norm_.html

Problem: the quadratic L(p) = 1/2 p^T A p - b^T p, gradient g = A p - b, from P0, five steps
at lr = LR (the same A, b, P0, LR as `golden_problem()` in the Rust tests).

Run: python3 crates/batchlab-core/tests/golden/optim.py
It prints, per case, the parameters after each step (repr: shortest round-trip decimals), and
for the clipping cases the gradient norm before clipping and whether it was clipped.
"""

import numpy as np

A = np.array(
    [
        [2.0, 0.5, 0.0, -0.3],
        [0.5, 1.0, 0.2, 0.0],
        [0.0, 0.2, 0.5, 0.1],
        [-0.3, 0.0, 0.1, 3.0],
    ]
)
B = np.array([1.0, -0.5, 0.25, 2.0])
P0 = np.array([1.0, -2.0, 0.5, 3.0])
LR = 0.1
STEPS = 5


def grad(p):
    return A @ p - B


def clip(g, max_norm):
    """torch.nn.utils.clip_grad_norm_(norm_type=2)."""
    total = float(np.sqrt(np.sum(g * g)))
    coef = max_norm / (total + 1e-6)
    clipped = coef < 1.0
    return g * min(coef, 1.0), total, clipped


def sgd(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, max_norm=None):
    """torch.optim.SGD algorithm box."""
    p = P0.copy()
    b = None
    out = []
    for t in range(1, STEPS + 1):
        g = grad(p)
        info = None
        if max_norm is not None:
            g, total, clipped = clip(g, max_norm)
            info = (total, clipped)
        if weight_decay != 0.0:
            g = g + weight_decay * p
        if momentum != 0.0:
            if t > 1:
                b = momentum * b + (1.0 - dampening) * g
            else:
                b = g.copy()
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        p = p - lr * g
        out.append((p.copy(), info))
    return out


def adam(lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, max_norm=None):
    """torch.optim.Adam (decoupled=False) / torch.optim.AdamW (decoupled=True) algorithm boxes."""
    p = P0.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t in range(1, STEPS + 1):
        g = grad(p)
        info = None
        if max_norm is not None:
            g, total, clipped = clip(g, max_norm)
            info = (total, clipped)
        if decoupled:
            p = p - lr * weight_decay * p
        elif weight_decay != 0.0:
            g = g + weight_decay * p
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1**t)
        v_hat = v / (1.0 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append((p.copy(), info))
    return out


CASES = [
    ("sgd", sgd(LR)),
    ("sgd_weight_decay", sgd(LR, weight_decay=0.05)),
    ("momentum", sgd(LR, momentum=0.9)),
    ("momentum_dampening", sgd(LR, momentum=0.9, dampening=0.3)),
    ("nesterov", sgd(LR, momentum=0.9, nesterov=True)),
    ("nesterov_weight_decay", sgd(LR, momentum=0.8, weight_decay=0.05, nesterov=True)),
    ("sgd_clip", sgd(LR, max_norm=2.0)),
    ("momentum_clip", sgd(LR, momentum=0.9, max_norm=2.0)),
    ("adam", adam(LR)),
    ("adam_weight_decay", adam(LR, weight_decay=0.05)),
    ("adamw", adam(LR, weight_decay=0.05, decoupled=True)),
    ("adamw_clip", adam(LR, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, decoupled=True, max_norm=2.0)),
]


def rust(x):
    return "[" + ", ".join(repr(float(v)) for v in x) + "]"


for name, out in CASES:
    print(f"// {name}")
    print("&[")
    for p, _ in out:
        print(f"    {rust(p)},")
    print("],")
    if out[0][1] is not None:
        norms = [info[0] for _, info in out]
        flags = [info[1] for _, info in out]
        print(f"// {name}: grad norms before clipping, clipped?")
        print(f"&{rust(norms)},")
        print("&[" + ", ".join("true" if f else "false" for f in flags) + "],")
