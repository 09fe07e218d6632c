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

Backward. With h = x A (N, r) and G = dL/dy (N, out), the chain rule through the two products:
    dL/dB = (alpha/r) h^T G                (r, out)
    dL/dA = (alpha/r) x^T (G B^T)          (in, r)
    dL/dx = G W^T + (alpha/r) (G B^T) A^T  (N, in)
The layer is written as two `F.linear` calls and a scalar product, so each of those pieces is
the already gradient-checked op; tests/test_finetune.py checks the whole layer in float64.
W and b are frozen (`requires_grad=False`), and `F.linear` skips `x^T G` for a weight that does
not require a gradient: the largest product of the backward pass is never computed, which is
where LoRA's speed comes from (besides AdamW touching only the small matrices).

After training, `merge_lora` folds the correction into the weight, W' = W + (alpha/r) A B, and
puts plain `Linear` layers back: the exported model has GPT-2's exact layout and costs nothing
extra at inference.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from autograd import Tensor
from autograd import functional as F
from autograd.nn import Linear, Module, Parameter
from autograd.random import default_rng

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "merged_state_dict", "lora_parameters",
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
        # Scale the narrow (N, r) activation rather than the (N, out) output: same result,
        # rank/out times less work.
        correction = F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)
        return F.linear(x, self.weight, self.bias) + correction

    def merged_weight(self) -> np.ndarray:
        """W + (alpha/r) A B: the plain weight that computes what this layer computes."""
        w = self.weight.data
        return (w + (self.scaling * (self.lora_A.data @ self.lora_B.data))).astype(w.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha:g}")


def _parent_and_name(model: Module, dotted: str) -> tuple[Module, str]:
    parent = model
    *path, name = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    return parent, name


def apply_lora(model: Module, rank: int, alpha: float,
               targets: Iterable[str] = DEFAULT_TARGETS,
               rng: np.random.Generator | None = None) -> list[str]:
    """Freeze every parameter of `model` and wrap the targeted `Linear` layers in `LoRALinear`.

    `targets` are last components of module names (`c_attn` matches `h.3.attn.c_attn`).
    Returns the dotted names of the wrapped layers. Afterwards only the LoRA matrices require a
    gradient; unfreeze anything else you want trained (a new classification head, say) after
    this call. Raises ValueError if no layer matches.
    """
    targets = tuple(targets)
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
