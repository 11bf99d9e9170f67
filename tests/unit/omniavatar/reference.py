"""An independent float64 implementation of the OmniAvatar DiT forward, written from upstream's
forward (time embedding, blocks with audio injection, head) independently of diffusers.

It reads Wan-native tensor names (the names in the official files) and applies LoRA pairs unmerged,
y = W x + b + scale·B(A x), the way peft runs upstream. Tests compare the diffusers-based model, loaded
through the project's conversions with LoRA merged, against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reference_dit(
    weights: dict[str, torch.Tensor],
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]],
    lora_scale: float,
    num_heads: int,
    latents: torch.Tensor,
    y: torch.Tensor,
    timestep: float,
    context: torch.Tensor,
    audio: torch.Tensor,
) -> torch.Tensor:
    """Velocity (16, T, h, w) for one sample.

    Args:
        weights: Wan-native tensors with OmniAvatar's full tensors already overlaid (33-channel patch embedding).
        lora: target weight name -> (lora_A (r, in), lora_B (out, r)).
        latents: (16, T, h, w) noisy latent; y: (17, T, h, w) reference latent + mask.
        context: (text_len, text_dim); audio: (4T - 3, audio_dim).
    """
    w = {k: v.double() for k, v in weights.items()}
    pairs = {k: (a.double(), b.double()) for k, (a, b) in lora.items()}

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        out = x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
        if f"{name}.weight" in pairs:
            a, b = pairs[f"{name}.weight"]
            out = out + lora_scale * ((x @ a.T) @ b.T)
        return out

    dim = w["patch_embedding.weight"].shape[0]
    head_dim = dim // num_heads
    _, frames, height, width = latents.shape
    gh, gw = height // 2, width // 2

    # 1. time embedding: sinusoid [cos | sin] with ω_k = 10000^(-k/half)
    freq_dim = w["time_embedding.0.weight"].shape[1]
    half = freq_dim // 2
    angles = timestep * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    e0 = torch.cat([torch.cos(angles), torch.sin(angles)])
    t_emb = linear(F.silu(linear(e0, "time_embedding.0")), "time_embedding.2")  # (D,)
    t_mod = linear(F.silu(t_emb), "time_projection.1").view(6, dim)

    # 2. text
    ctx = linear(F.gelu(linear(context.double(), "text_embedding.0"), approximate="tanh"), "text_embedding.2")

    # 3. audio: first row x4, groups of 4 rows frame-major, LayerNorm(eps 1e-5), one projection per audio block
    a = audio.double()
    a = torch.cat([a[:1].repeat(3, 1), a]).reshape(frames, -1)  # (T, 4C)
    hidden = w["audio_proj.proj.weight"].shape[0]
    z = F.layer_norm(
        linear(a, "audio_proj.proj"),
        (hidden,),
        w["audio_proj.norm_out.weight"],
        w["audio_proj.norm_out.bias"],
        eps=1e-5,
    )
    num_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    audio_terms = {l: linear(z, f"audio_cond_projs.{l - 2}") for l in range(2, num_layers // 2 + 1)}  # (T, D)

    # 4. patchify (frame, row, column) order
    x = torch.cat([latents.double(), y.double()])[None]
    x = F.conv3d(x, w["patch_embedding.weight"], w["patch_embedding.bias"], stride=(1, 2, 2))
    x = x.flatten(2)[0].T  # (N, D)
    frame_of_token = torch.arange(frames).repeat_interleave(gh * gw)

    # 5. RoPE: per head, complex pairs split (t, h, w) = (c - 2·(c//3), c//3, c//3) with c = head_dim / 2
    c = head_dim // 2
    sizes = (c - 2 * (c // 3), c // 3, c // 3)
    pos = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(gh), torch.arange(gw), indexing="ij"), -1)
    pos = pos.reshape(-1, 3).double()
    parts = []
    for axis, n in enumerate(sizes):
        theta = torch.pow(10000.0, -2 * torch.arange(n, dtype=torch.float64) / (2 * n))
        parts.append(pos[:, axis : axis + 1] * theta[None])
    rot = torch.polar(torch.ones(pos.shape[0], c, dtype=torch.float64), torch.cat(parts, 1))  # (N, c)

    def rope(t: torch.Tensor) -> torch.Tensor:  # (N, heads, head_dim)
        tc = torch.view_as_complex(t.reshape(*t.shape[:-1], c, 2).contiguous())
        return torch.view_as_real(tc * rot[:, None]).flatten(-2)

    def rms(t: torch.Tensor, name: str) -> torch.Tensor:
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + 1e-6) * w[f"{name}.weight"]

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.reshape(t.shape[0], num_heads, head_dim).transpose(0, 1) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(head_dim), -1) @ v
        return att.transpose(0, 1).reshape(-1, dim)

    def layer_norm(t: torch.Tensor, name: str | None = None) -> torch.Tensor:
        if name is None:
            return F.layer_norm(t, (dim,), eps=1e-6)
        return F.layer_norm(t, (dim,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-6)

    # 6. blocks
    for l in range(num_layers):
        b = f"blocks.{l}"
        if l in audio_terms:
            x = x + audio_terms[l][frame_of_token]
        e = w[f"{b}.modulation"][0] + t_mod  # (6, D): shift, scale, gate (msa), shift, scale, gate (mlp)
        u = layer_norm(x) * (1 + e[1]) + e[0]
        q = rms(linear(u, f"{b}.self_attn.q"), f"{b}.self_attn.norm_q")
        k = rms(linear(u, f"{b}.self_attn.k"), f"{b}.self_attn.norm_k")
        v = linear(u, f"{b}.self_attn.v")
        q = rope(q.reshape(-1, num_heads, head_dim)).reshape(-1, dim)
        k = rope(k.reshape(-1, num_heads, head_dim)).reshape(-1, dim)
        x = x + e[2] * linear(attention(q, k, v), f"{b}.self_attn.o")
        u = layer_norm(x, f"{b}.norm3")
        q = rms(linear(u, f"{b}.cross_attn.q"), f"{b}.cross_attn.norm_q")
        k = rms(linear(ctx, f"{b}.cross_attn.k"), f"{b}.cross_attn.norm_k")
        v = linear(ctx, f"{b}.cross_attn.v")
        x = x + linear(attention(q, k, v), f"{b}.cross_attn.o")
        u = layer_norm(x) * (1 + e[4]) + e[3]
        x = x + e[5] * linear(F.gelu(linear(u, f"{b}.ffn.0"), approximate="tanh"), f"{b}.ffn.2")

    # 7. head: modulation + t_emb (not t_mod)
    shift = w["head.modulation"][0, 0] + t_emb
    scale = w["head.modulation"][0, 1] + t_emb
    out = linear(layer_norm(x) * (1 + scale) + shift, "head.head")  # (N, 64)

    # 8. unpatchify: feature ((p_t·2 + p_y)·2 + p_x)·16 + channel
    out = out.reshape(frames, gh, gw, 2, 2, -1)  # (T, gh, gw, p_y, p_x, 16)
    return out.permute(5, 0, 1, 3, 2, 4).reshape(-1, frames, height, width)


def t5_bucket(relative: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """T5 relative positions: bidirectional buckets, 16 per direction; exact below 8, logarithmic up to max_distance."""
    half = num_buckets // 2
    exact = half // 2
    n = abs(relative)
    if n < exact:
        b = n
    else:
        b = min(half - 1, exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact)))
    return half * (relative > 0) + b


def reference_umt5(weights: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan's UMT5 encoder in float64 from Wan-native names: (n,) ids -> (n, d)."""
    w = {k: v.double() for k, v in weights.items()}

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w[name]

    n = ids.shape[0]
    heads = w["blocks.0.pos_embedding.embedding.weight"].shape[1]
    x = w["token_embedding.weight"][ids]
    num_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    buckets = torch.tensor([[t5_bucket(j - i) for j in range(n)] for i in range(n)])
    for i in range(num_layers):
        b = f"blocks.{i}"
        h = norm(x, f"{b}.norm1.weight")
        q, k, v = (h @ w[f"{b}.attn.{p}.weight"].T for p in "qkv")
        q, k, v = (t.reshape(n, heads, -1).transpose(0, 1) for t in (q, k, v))  # (heads, n, d_kv)
        bias = w[f"{b}.pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # (heads, n, n)
        logits = q @ k.transpose(1, 2) + bias  # no 1/sqrt(d) scaling
        logits = logits.masked_fill(mask[None, None, :] == 0, float("-inf"))
        att = torch.softmax(logits, -1) @ v
        x = x + att.transpose(0, 1).reshape(n, -1) @ w[f"{b}.attn.o.weight"].T
        h = norm(x, f"{b}.norm2.weight")
        gated = F.gelu(h @ w[f"{b}.ffn.gate.0.weight"].T, approximate="tanh") * (h @ w[f"{b}.ffn.fc1.weight"].T)
        x = x + gated @ w[f"{b}.ffn.fc2.weight"].T
    return norm(x, "norm.weight")
