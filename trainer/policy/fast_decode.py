"""A KV-cached decoder for Qwen2 and Llama checkpoints: the sampling loop's forward passes on CPU.

Why: through transformers, most of a small model's decoding step is spent outside arithmetic
(dispatching ~85 modules a token, growing the cache by concatenation; bench/README.md,
``decode.py``). This decoder runs the same computation as plain tensor operations on the model's
own parameters: fused q/k/v and gate/up projections, a cache preallocated for the whole
generation, rotary tables computed once, grouped-query attention without repeating keys.

It reads the weights when ``prefill`` is called (so a policy trained between two generations is
decoded with its new weights) and never writes them. Its logits match the transformers forward
to float rounding (tests compare them at every step, with left padding and rows leaving the batch).
``prefill_after`` continues rows whose earlier tokens' keys and values were kept (``export``): it
runs only their new tokens, so a multi-turn rollout need not prefill its whole context each turn.
``FastDecoder.unsupported(model)`` says why a model cannot use it (another architecture, sliding
windows, scaled rotary embeddings, ...); ``HFPolicy`` then keeps the transformers path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FastDecoder"]

_ARCHES = ("qwen2", "llama")


@dataclass
class _Layer:
    ln1: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    ln2: torch.Tensor
    wgu: torch.Tensor
    wdown: torch.Tensor


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers computes it (in float32, then back to the input's dtype)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class FastDecoder:
    """Prefill a left-padded batch, then decode one token per row per ``step``.

    ``prefill(input_ids, attention_mask, capacity)`` returns the last position's logits [B, V];
    ``step(tokens)`` appends one token per row and returns the next logits; ``select(rows)`` keeps
    only those rows, in that order (finished rows leave the batch; a repeated row is copied).
    Positions start at each row's first real token. Each row's tokens fill a contiguous run of
    cache slots that ends at ``length`` (left padding before it): ``export(row)`` copies its keys
    and values, ``prefill_after(past, ...)`` starts a batch from such copies.
    """

    def __init__(self, model: Any) -> None:
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"FastDecoder cannot run this model: {reason}")
        cfg = model.config
        self.model = model
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        theta = float(cfg.rope_parameters["rope_theta"])
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        self.layers: list[_Layer] = []
        # the cache of every layer in one tensor [layers, 2 (keys, values), B, kv heads, capacity, head_dim],
        # so that one row's keys and values are copied out (``export``) or in (``prefill_after``) at once
        self.kv = torch.zeros(0)
        self.keys: list[torch.Tensor] = []                  # views of self.kv: [B, kv heads, capacity, head_dim]
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros(0, 0, dtype=torch.bool)    # [B, capacity]: which cache slots hold real tokens
        self.position = torch.zeros(0, dtype=torch.long)    # [B]: the next token's position per row
        self.start = torch.zeros(0, dtype=torch.long)       # [B]: the slot of each row's first real token
        self.length = 0                                      # cache slots filled (the same for every row)

    @staticmethod
    def unsupported(model: Any) -> str:
        """Why ``model`` cannot be decoded here ("" when it can)."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in _ARCHES:
            return f"architecture {getattr(cfg, 'model_type', None)!r} (supported: {', '.join(_ARCHES)})"
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default" or "rope_theta" not in rope:
            return f"rotary embedding {rope!r} (only the default type)"
        layer_types = getattr(cfg, "layer_types", None) or []
        if getattr(cfg, "use_sliding_window", False) or "sliding_attention" in layer_types:
            return "sliding-window attention"
        if getattr(cfg, "hidden_act", "silu") != "silu":
            return f"activation {cfg.hidden_act!r}"
        if getattr(cfg, "mlp_bias", False):
            return "biased MLP"
        return ""

    # ------------------------------------------------------------------ weights
    def _read_weights(self) -> None:
        self.layers = []
        for layer in self.model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            biases = [p.bias for p in (att.q_proj, att.k_proj, att.v_proj)]
            self.layers.append(_Layer(
                ln1=layer.input_layernorm.weight.detach(),
                wqkv=torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach(),
                bqkv=None if any(b is None for b in biases) else torch.cat(biases).detach(),
                wo=att.o_proj.weight.detach(),
                bo=None if att.o_proj.bias is None else att.o_proj.bias.detach(),
                ln2=layer.post_attention_layernorm.weight.detach(),
                wgu=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                wdown=mlp.down_proj.weight.detach(),
            ))
        self.embed = self.model.model.embed_tokens.weight.detach()
        self.norm = self.model.model.norm.weight.detach()
        self.lm_head = self.model.get_output_embeddings().weight.detach()

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int) -> torch.Tensor:
        """Run the prompts ([B, W], left-padded) into a cache of ``capacity`` slots; the last logits."""
        self._read_weights()
        batch, width = input_ids.shape
        if capacity < width:
            raise ValueError(f"capacity {capacity} < prompt width {width}")
        device, dtype = input_ids.device, self.embed.dtype
        real = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.valid[:, :width] = real
        self.position = positions[:, -1] + 1
        self.start = width - attention_mask.long().sum(-1)
        self.length = width
        self._allocate(batch, capacity, dtype, device)
        cos, sin = self._rope(positions, dtype)                        # [B, W, D]
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # a padding query attends to itself only (its output is never read), so no row is all -inf
        mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)[None]
        rep = self.n_heads // self.n_kv
        x = F.embedding(input_ids, self.embed)
        for i, w in enumerate(self.layers):
            h = _rms(x, w.ln1, self.eps)
            q, k, v = self._qkv(h, w, batch, width)                   # [B, heads, W, D]
            q, k = _rotate(q, cos[:, None], sin[:, None]), _rotate(k, cos[:, None], sin[:, None])
            self.keys[i][:, :, :width] = k
            self.values[i][:, :, :width] = v
            grouped = (batch, self.n_kv, rep, width, self.head_dim)
            k = k[:, :, None].expand(grouped).reshape(batch, self.n_heads, width, -1)
            v = v[:, :, None].expand(grouped).reshape(batch, self.n_heads, width, -1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
            x = x + F.linear(out.transpose(1, 2).reshape(batch, width, -1), w.wo, w.bo)
            x = x + self._mlp(_rms(x, w.ln2, self.eps), w)
        return F.linear(_rms(x[:, -1], self.norm, self.eps), self.lm_head)

    @torch.no_grad()
    def prefill_after(self, past: Sequence[torch.Tensor | None], input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, room: int) -> torch.Tensor:
        """Like ``prefill``, for rows that continue tokens already run: ``past[r]`` holds row r's
        earlier keys and values as ``export`` gives them ([layers, 2, kv heads, P_r, head_dim];
        None: no earlier tokens), ``input_ids`` [B, N] (left-padded) its new tokens, at least one a
        row. The new tokens attend to their row's earlier tokens and causally among themselves, at
        positions P_r, P_r + 1, ...; the cache keeps ``room`` free slots. Returns the last logits."""
        self._read_weights()
        batch, width_new = input_ids.shape
        if len(past) != batch:
            raise ValueError(f"{len(past)} past entries for {batch} rows")
        device, dtype = input_ids.device, self.embed.dtype
        real = attention_mask.bool()
        new = attention_mask.long().sum(-1)
        if int(new.min()) < 1:
            raise ValueError("every row needs at least one new token (its logits come from the last one)")
        before = torch.tensor([0 if p is None else p.shape[3] for p in past], dtype=torch.long, device=device)
        total = before + new
        width = int(total.max())
        capacity = width + room
        self.start = width - total
        slots = torch.arange(capacity, device=device)
        self.valid = (slots[None] >= self.start[:, None]) & (slots[None] < width)
        self.position = total
        self.length = width
        self._allocate(batch, capacity, dtype, device, zeroed=width)   # padding slots are read (masked out)
        for row, kv in enumerate(past):
            if kv is not None and kv.shape[3]:
                first = int(self.start[row])
                self.kv[:, :, row, :, first: first + kv.shape[3]] = kv
        # the new tokens sit in the slots [width - N, width); a row's earlier tokens end where its new ones start
        positions = (before[:, None] + attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self._rope(positions, dtype)                           # [B, N, D]
        query_slot = torch.arange(width - width_new, width, device=device)
        key_slot = slots[:width]
        causal = key_slot[None, :] <= query_slot[:, None]                 # [N, W]
        # a padding query also attends to its own slot, so that no row of the mask is all False
        mask = (self.valid[:, None, :width] & causal[None]) | (key_slot[None, :] == query_slot[:, None])[None]
        fresh = real[:, None, :, None]                                    # [B, 1, N, 1]: slots to write
        rep = self.n_heads // self.n_kv
        x = F.embedding(input_ids, self.embed)
        for i, w in enumerate(self.layers):
            h = _rms(x, w.ln1, self.eps)
            q, k, v = self._qkv(h, w, batch, width_new)
            q, k = _rotate(q, cos[:, None], sin[:, None]), _rotate(k, cos[:, None], sin[:, None])
            # padding columns may lie on a row's earlier slots: only real new tokens are written
            written = slice(width - width_new, width)
            new_keys, new_values = self.keys[i][:, :, written], self.values[i][:, :, written]
            new_keys.copy_(torch.where(fresh, k, new_keys))
            new_values.copy_(torch.where(fresh, v, new_values))
            grouped = (batch, self.n_kv, rep, width, self.head_dim)
            keys = self.keys[i][:, :, None, :width].expand(grouped).reshape(batch, self.n_heads, width, -1)
            values = self.values[i][:, :, None, :width].expand(grouped).reshape(batch, self.n_heads, width, -1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
            x = x + F.linear(out.transpose(1, 2).reshape(batch, width_new, -1), w.wo, w.bo)
            x = x + self._mlp(_rms(x, w.ln2, self.eps), w)
        return F.linear(_rms(x[:, -1], self.norm, self.eps), self.lm_head)

    def export(self, row: int) -> torch.Tensor:
        """A copy of ``row``'s keys and values, [layers, 2, kv heads, tokens, head_dim]: one per token
        whose keys are in the cache (every token fed so far; not the last sampled one, which has not
        been fed), in order."""
        return self.kv[:, :, row, :, int(self.start[row]): self.length].clone()

    def _allocate(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device, zeroed: int = 0) -> None:
        # slots at or past ``length`` are written before they are read: only the first ``zeroed`` need a value
        self.kv = torch.empty((len(self.layers), 2, batch, self.n_kv, capacity, self.head_dim), dtype=dtype,
                              device=device)
        self.kv[:, :, :, :, :zeroed].zero_()
        self._views()

    def _views(self) -> None:
        self.keys = [self.kv[i, 0] for i in range(len(self.layers))]
        self.values = [self.kv[i, 1] for i in range(len(self.layers))]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B]) and return the next logits [B, V]."""
        batch = tokens.shape[0]
        slot = self.length
        if slot >= self.valid.shape[1]:
            raise RuntimeError(f"the cache is full ({slot} slots): prefill with a larger capacity")
        self.valid[:, slot] = True
        cos, sin = self._rope(self.position[:, None], self.embed.dtype)   # [B, 1, D]
        cos, sin = cos[:, None], sin[:, None]
        keep = self.valid[:, None, None, : slot + 1]                      # [B, 1, 1, L]
        rep = self.n_heads // self.n_kv
        x = F.embedding(tokens[:, None], self.embed)                      # [B, 1, H]
        for i, w in enumerate(self.layers):
            h = _rms(x, w.ln1, self.eps)
            q, k, v = self._qkv(h, w, batch, 1)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.keys[i][:, :, slot: slot + 1] = k
            self.values[i][:, :, slot: slot + 1] = v
            keys, values = self.keys[i][:, :, : slot + 1], self.values[i][:, :, : slot + 1]
            # the rep query heads that share a kv head (head h reads kv head h // rep) take the place
            # of query positions: one fused attention call, no repeated keys
            q = q.reshape(batch, self.n_kv, rep, self.head_dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep)   # [B, kv, rep, D]
            x = x + F.linear(out.reshape(batch, 1, -1), w.wo, w.bo)
            x = x + self._mlp(_rms(x, w.ln2, self.eps), w)
        self.length = slot + 1
        self.position = self.position + 1
        return F.linear(_rms(x[:, -1], self.norm, self.eps), self.lm_head)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current batch), in that order."""
        keep = rows.tolist()
        if keep == sorted(set(keep)):
            # rows leaving: move the others down in place, their filled slots only (each layer's keys
            # and values stay one contiguous block, so the arithmetic is the same as on a fresh copy)
            for to, row in enumerate(keep):
                if to != row:
                    self.kv[:, :, to, :, : self.length] = self.kv[:, :, row, :, : self.length]
            self.kv = self.kv[:, :, : len(keep)]
        else:
            self.kv = self.kv.index_select(2, rows)
        self._views()
        self.valid = self.valid.index_select(0, rows)
        self.position = self.position.index_select(0, rows)
        self.start = self.start.index_select(0, rows)

    def _qkv(self, h: torch.Tensor, w: _Layer, batch: int, width: int) -> tuple[torch.Tensor, ...]:
        qkv = F.linear(h, w.wqkv, w.bqkv)
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q, k, v = qkv.split((nq, nk, nk), dim=-1)
        return (q.view(batch, width, self.n_heads, self.head_dim).transpose(1, 2),
                k.view(batch, width, self.n_kv, self.head_dim).transpose(1, 2),
                v.view(batch, width, self.n_kv, self.head_dim).transpose(1, 2))

    @staticmethod
    def _mlp(h: torch.Tensor, w: _Layer) -> torch.Tensor:
        gate, up = F.linear(h, w.wgu).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w.wdown)
