"""The yardstick of benchmarks/train.py: the same models and training step in PyTorch (eager,
CPU, float32), timed the same way, so that the two can be measured side by side on one machine.

PyTorch is not a dependency of this project. Install it into a separate environment and let
benchmarks/train.py run this script with that environment's Python:

    python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    python benchmarks/train.py --pytorch /tmp/torchvenv/bin/python

Run alone, it takes a configuration as JSON (what benchmarks/train.py passes) and prints one
JSON line: `pytorch_train.py '{"model": {"vocab_size": 65, ...}, "batch": 12, "steps": 30}'`.

Two architectures, as in benchmarks/train.py:
- "gpt2" (the default): pre-LN blocks, fused causal attention (scaled_dot_product_attention),
  tanh GELU, tied output head; AdamW with weight decay 0.1 and gradient clipping at 1.0.
- "llama" (the modern recipe, gpt.core.llama): RMSNorm without bias, rotary embeddings
  (rotate-half), optional RMSNorm of each head's queries and keys (QK-norm), ReLU² or SwiGLU
  MLP, no biases, untied output head; torch.optim.Muon (Nesterov, five Newton-Schulz steps)
  for the blocks' matrices and AdamW for embeddings, head and gains, clipping at 1.0.
PyTorch uses the spec's "threads" intra-op threads (0 or absent: its default, one per core).
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        heads = self.c_attn(self.ln_1(x)).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = heads.permute(2, 0, 3, 1, 4)                     # each (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                 n_embd: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def loss(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T                  # tied output head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


# ----------------------------------------------------------------------------------------------
# The modern model: gpt.core.llama.Llama with the options of LlamaConfig.


def rotate(x, cos, sin):
    """Rotate-half RoPE of x (B, H, T, D): channel i pairs with channel i + D/2; cos and sin
    (T, D/2) of the angles position * frequency."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, n_embd, n_head, n_kv_head, intermediate_size, mlp, qk_norm, eps):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, n_embd // n_head
        kv_width = n_kv_head * self.head_size
        self.eps = eps
        self.input_norm = nn.RMSNorm(n_embd, eps=eps)
        self.q_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.k_proj = nn.Linear(n_embd, kv_width, bias=False)
        self.v_proj = nn.Linear(n_embd, kv_width, bias=False)
        self.o_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.q_norm = nn.RMSNorm(self.head_size, eps=eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_size, eps=eps) if qk_norm else None
        self.post_norm = nn.RMSNorm(n_embd, eps=eps)
        self.gate_proj = nn.Linear(n_embd, intermediate_size, bias=False) \
            if mlp == "swiglu" else None
        self.up_proj = nn.Linear(n_embd, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        H, H_kv, D = self.n_head, self.n_kv_head, self.head_size
        h = self.input_norm(x)
        q = self.q_proj(h).view(B, T, H, D)
        k = self.k_proj(h).view(B, T, H_kv, D)
        v = self.v_proj(h).view(B, T, H_kv, D).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = rotate(q.transpose(1, 2), cos, sin)
        k = rotate(k.transpose(1, 2), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H_kv != H)
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.post_norm(x)
        if self.gate_proj is not None:
            hidden = F.silu(self.gate_proj(h)) * self.up_proj(h)
        else:
            hidden = F.relu(self.up_proj(h)).square()
        return x + self.down_proj(hidden)


class Llama(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, n_kv_head=None,
                 intermediate_size=None, mlp="relu2", qk_norm=True, rope_theta=10000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, **ignored):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        intermediate_size = intermediate_size or 4 * n_embd
        self.embed_tokens = nn.Embedding(vocab_size, n_embd)
        self.layers = nn.ModuleList(
            LlamaBlock(n_embd, n_head, n_kv_head, intermediate_size, mlp, qk_norm, rms_norm_eps)
            for _ in range(n_layer))
        self.norm = nn.RMSNorm(n_embd, eps=rms_norm_eps)
        self.lm_head = None if tie_word_embeddings else \
            nn.Linear(n_embd, vocab_size, bias=False)
        head_size = n_embd // n_head
        inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_size, 2).float() / head_size)
        angles = torch.outer(torch.arange(block_size).float(), inv_freq)      # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def loss(self, idx, targets):
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.embed_tokens(idx)
        for block in self.layers:
            x = block(x, cos, sin)
        x = self.norm(x)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = x @ head.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def llama_optimizers(model: Llama, spec: dict) -> list:
    """Muon for the blocks' 2-D weights, AdamW for embeddings, head and gains, as
    autograd.optim.muon_with_adamw groups them."""
    matrices = [p for p in model.layers.parameters() if p.dim() == 2]
    matrix_ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in matrix_ids]
    muon = torch.optim.Muon(matrices, lr=spec.get("muon_lr", 0.02), momentum=0.95,
                            nesterov=True, weight_decay=0.0)
    adamw = torch.optim.AdamW(rest, lr=4e-3, betas=(0.8, 0.95), weight_decay=0.0)
    return [muon, adamw]


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec.get("arch", "gpt2") == "llama":
        model = Llama(**spec["model"])
        optimizers = llama_optimizers(model, spec)
    else:
        model = GPT(**spec["model"])
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizers = [torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                         {"params": no_decay, "weight_decay": 0.0}],
                                        lr=1e-3, betas=(0.9, 0.99))]
    batch, block, vocab = spec["batch"], spec["model"]["block_size"], spec["model"]["vocab_size"]
    x = torch.randint(0, vocab, (batch, block))
    y = torch.randint(0, vocab, (batch, block))

    def step():
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        model.loss(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            optimizer.step()

    for _ in range(3):
        step()
    times, cpu_times = [], []
    for _ in range(spec["steps"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    times.sort()
    cpu_times.sort()
    median = times[len(times) // 2]
    print(json.dumps({"ms_per_iter": median * 1e3, "best_ms": times[0] * 1e3,
                      "cpu_ms_per_iter": cpu_times[len(cpu_times) // 2] * 1e3,
                      "tokens_per_sec": batch * block / median,
                      "params": sum(p.numel() for p in model.parameters()),
                      "threads": torch.get_num_threads(), "version": torch.__version__}))


if __name__ == "__main__":
    main()
