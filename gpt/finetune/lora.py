"""LoRA: fine-tune a big weight matrix through a small low-rank correction.

Full fine-tuning changes every number of a (in, out) weight W. LoRA (Hu et al. 2021) keeps W
frozen and learns a correction of rank r instead:

    y = x W + b + (alpha / r) * (x A) B          A: (in, r),  B: (r, out),  r << in, out

so a layer trains r * (in + out) numbers instead of in * out (for GPT-2's 768 x 2304 c_attn
at r = 16: 49,152 instead of 1,769,472). Two choices make it behave:

- B starts at zero, so x A B = 0 and the wrapped model computes exactly what the pretrained one
  did; A starts random (uniform +-1/sqrt(in), like a Linear's weight) so that the gradient of B,
  (alpha/r) (x A)^T G, is not zero and training can move away from the start.
- alpha / r scales the correction. With alpha fixed, a larger rank does not mean larger updates,
  so a learning rate found at one rank carries over to another.

The layer is one fused op, `lora_linear`, with its backward derived by hand. With x flattened
to X (N, in), H = s X A (N, r) where s = alpha/r, and G = dL/dY (N, out):
    Y     = X W + b + H B
    dL/dB = H^T G                          (r, out)
    dL/dH = G B^T,  so with the factor s:  dL/d(XA) = s G B^T   (N, r)
    dL/dA = X^T (s G B^T)                  (in, r)
    dL/dX = G W^T + (s G B^T) A^T          (N, in)
    dL/dW = X^T G,  dL/db = sum_n G_n      (only if they require a gradient)
Written as two `F.linear` calls and an addition it would be the same math, but with three more
graph nodes and a separate (N, out) array for H B; fused, H B is added into Y in place.
W and b are frozen (`requires_grad=False`), so `X^T G`, the largest product of the backward
pass, is never computed; with the tied embedding frozen too, the output head's weight gradient
(C x vocabulary) and the embedding scatter go as well. That, and AdamW touching only the small
matrices, is where LoRA's speed comes from; the price is the two thin products X A and H B
(2 r (in + out) per row, against in * out for the layer), so the saving grows with the width.
tests/test_finetune.py checks the layer against finite differences in float64.

After training, `merge_lora` folds the correction into the weight, W' = W + (alpha/r) A B, and
puts plain `Linear` layers back: the exported model has its family's exact layout (GPT-2's, or
Llama's) and costs nothing extra at inference.

Which layers get adapters: those a model class names in its `lora_targets` (gpt.core.llama.Llama:
the attention's q_proj, k_proj, v_proj, o_proj and the MLP's gate_proj, up_proj, down_proj),
else GPT-2's `DEFAULT_TARGETS`. Embeddings, norms and the output head stay as they are.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from autograd import Tensor
from autograd.nn import Linear, Module, Parameter
from autograd.random import default_rng

__all__ = ["LoRALinear", "lora_linear", "apply_lora", "merge_lora", "merged_state_dict", "lora_parameters",
           "DEFAULT_TARGETS"]

# The Linear layers of a GPT-2 block: attention's qkv and output projections, and the MLP's two.
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")


class LoRALinear(Module):
    """A frozen `Linear` plus a trainable low-rank correction (alpha/rank) A B.

    It keeps the wrapped layer's Parameters under the same names (`weight`, `bias`), so its
    state dict is the base layer's plus `lora_A` and `lora_B`.
    """

    def __init__(self, base: Linear, rank: int, alpha: float,
                 rng: np.random.Generator | None = None):
        super().__init__()
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
        rng = rng if rng is not None else default_rng()
        n_in, n_out = base.weight.shape
        dtype = base.weight.dtype
        self.in_features, self.out_features = n_in, n_out
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.weight = base.weight
        self.bias = base.bias
        # Frozen: no gradient is computed for them, and optimizers skip them.
        self.weight.requires_grad = False
        self.weight.grad = None
        if self.bias is not None:
            self.bias.requires_grad = False
            self.bias.grad = None
        bound = 1.0 / np.sqrt(n_in)
        self.lora_A = Parameter(rng.uniform(-bound, bound, (n_in, self.rank)).astype(dtype))
        self.lora_B = Parameter(np.zeros((self.rank, n_out), dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return lora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scaling)

    def merged_weight(self) -> np.ndarray:
        """W + (alpha/r) A B: the plain weight that computes what this layer computes."""
        w = self.weight.data
        return (w + (self.scaling * (self.lora_A.data @ self.lora_B.data))).astype(w.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha:g}")


def lora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                scaling: float) -> Tensor:
    """y = x W + b + scaling * (x A) B as one node; the backward is derived in the module
    docstring. x (..., in), W (in, out), b (out,) or None, A (in, r), B (r, out)."""
    w, a, b_lora = weight.data, lora_A.data, lora_B.data
    n_in, n_out = w.shape
    if x.shape[-1] != n_in or a.shape[0] != n_in or b_lora.shape[1] != n_out \
            or a.shape[1] != b_lora.shape[0]:
        raise ValueError(f"lora_linear: shapes do not fit: x {x.shape}, W {w.shape}, "
                         f"A {a.shape}, B {b_lora.shape}")
    x_shape = x.shape
    x2 = x.data.reshape(-1, n_in)                     # X (N, in)
    y2 = x2 @ w                                       # (N, out)
    if bias is not None:
        y2 += bias.data
    h = x2 @ a                                        # (N, r)
    h *= scaling                                      # H = s X A: scale the thin side
    y2 += h @ b_lora                                  # in place: no (N, out) temporary kept

    def backward(g):
        g2 = g.reshape(-1, n_out)                     # G (N, out)
        gb_lora = h.T @ g2 if lora_B.requires_grad else None
        gh = g2 @ b_lora.T                            # (N, r)
        gh *= scaling                                 # dL/d(XA) = s G B^T
        ga = x2.T @ gh if lora_A.requires_grad else None
        gx = None
        if x.requires_grad:
            gx = g2 @ w.T
            gx += gh @ a.T
            gx = gx.reshape(x_shape)
        gw = x2.T @ g2 if weight.requires_grad else None
        gbias = g2.sum(axis=0) if bias is not None and bias.requires_grad else None
        grads = (gx, gw, gbias, ga, gb_lora)
        return grads if bias is not None else grads[:2] + grads[3:]

    parents = (x, weight, bias, lora_A, lora_B) if bias is not None \
        else (x, weight, lora_A, lora_B)
    return Tensor._make(y2.reshape(*x_shape[:-1], n_out), parents, backward, "lora_linear")


def _parent_and_name(model: Module, dotted: str) -> tuple[Module, str]:
    parent = model
    *path, name = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    return parent, name


def apply_lora(model: Module, rank: int, alpha: float,
               targets: Iterable[str] | None = None,
               rng: np.random.Generator | None = None) -> list[str]:
    """Freeze every parameter of `model` and wrap the targeted `Linear` layers in `LoRALinear`.

    `targets` are last components of module names (`c_attn` matches `h.3.attn.c_attn`); None
    means the model's own `lora_targets` (a class attribute), or GPT-2's DEFAULT_TARGETS.
    Returns the dotted names of the wrapped layers. Afterwards only the LoRA matrices require a
    gradient; unfreeze anything else you want trained (a new classification head, say) after
    this call. Raises ValueError if no layer matches.
    """
    targets = tuple(targets if targets is not None
                    else getattr(model, "lora_targets", DEFAULT_TARGETS))
    model.requires_grad_(False)
    chosen = [name for name, module in model.named_modules()
              if isinstance(module, Linear) and name.rsplit(".", 1)[-1] in targets]
    if not chosen:
        raise ValueError(f"apply_lora: no Linear layer named {list(targets)} in "
                         f"{type(model).__name__}")
    for name in chosen:
        parent, attr = _parent_and_name(model, name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, rng))
    return chosen


def lora_parameters(model: Module) -> list[Parameter]:
    """The A and B matrices of every LoRA layer in `model`."""
    return [p for m in model.modules() if isinstance(m, LoRALinear)
            for p in (m.lora_A, m.lora_B)]


def merged_state_dict(model: Module) -> dict[str, np.ndarray]:
    """`model.state_dict()` as if every LoRA layer were merged: W + (alpha/r) A B under the
    layer's `weight` name, and no `lora_A`/`lora_B` keys. The model itself is not changed
    (to save a checkpoint in the middle of training)."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state.pop(f"{name}.lora_A")
            state.pop(f"{name}.lora_B")
            state[f"{name}.weight"] = module.merged_weight()
    return state


def merge_lora(model: Module) -> Module:
    """Fold every LoRA layer into its weight, in place, and put a plain `Linear` back.

    The Linear gets the LoRA layer's own weight and bias Parameters, now holding
    W + (alpha/r) A B. They stay frozen, as LoRA left them: call `model.requires_grad_(True)`
    to train the merged model further. Returns `model`.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        module.weight.data[...] = module.merged_weight()
        # A throwaway generator: building the Linear must not consume the library's random
        # stream (that would change what a seeded run draws next).
        plain = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       rng=np.random.default_rng(0), dtype=module.weight.dtype)
        plain.weight = module.weight
        plain.bias = module.bias
        plain.train(module.training)
        parent, attr = _parent_and_name(model, name)
        setattr(parent, attr, plain)
    return model
