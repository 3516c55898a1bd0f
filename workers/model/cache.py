"""The per-step batch description and the hybrid cache of the NemotronH LLM.

Letters: T packed new tokens, B sequences, S cache slots, L max sequence length.

A sequence being generated owns one cache *slot* from `alloc_slot()` until `free_slot()`.
Its state lives in two places:
  - Mamba layers: a fixed-size conv window and SSM state per slot (`conv_state`,
    `ssm_state`), overwritten in place by every step, whatever the sequence length;
  - attention layers: one K/V pool row per cached token. `req_to_token[slot, pos]` names the
    pool row of position `pos`; rows come from one free list shared by all slots and are
    handed out token by token through `reserve()`, before the step that writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.model.config import LLMConfig


def kv_row_bytes(config: LLMConfig, kv_itemsize: int) -> int:
    """Bytes of one cached token: K and V of every attention layer, in the pools' dtype (1 byte
    for FP8 KV)."""
    n_attn = len(config.attention_layers)
    return n_attn * 2 * config.num_key_value_heads * config.head_dim * kv_itemsize


class CacheFullError(RuntimeError):
    """No free slot or not enough free KV rows: the scheduler must wait or preempt."""


@dataclass(frozen=True)
class ForwardBatch:
    """What one model step computes: B sequences, their new tokens packed back to back."""

    cu_seqlens: torch.Tensor  # [B+1] int32: offsets of each sequence's new tokens in the pack
    slots: torch.Tensor  # [B] int64: cache slot of each sequence
    context_lens: torch.Tensor  # [B] int32: tokens of the sequence cached before this step
    is_decode: bool  # every sequence has exactly one new token

    @classmethod
    def build(
        cls,
        new_lens: Sequence[int],
        slots: Sequence[int],
        context_lens: Sequence[int],
        device: torch.device | str,
    ) -> ForwardBatch:
        """A batch from host lists; a decode batch when every sequence brings one token."""
        if not (len(new_lens) == len(slots) == len(context_lens)) or not new_lens:
            raise ValueError("new_lens, slots and context_lens must be equally long, non-empty")
        if min(new_lens) < 1:
            raise ValueError(f"every sequence needs at least one new token, got {list(new_lens)}")
        cu = torch.zeros(len(new_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(new_lens, dtype=torch.int32), 0)
        return cls(
            cu_seqlens=cu.to(device),
            slots=torch.tensor(slots, dtype=torch.int64, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            is_decode=max(new_lens) == 1,
        )

    @property
    def num_seqs(self) -> int:
        return self.slots.shape[0]


class HybridCache:
    """Conv + SSM state slots for the Mamba layers, a token-granular KV pool for attention.

    A freshly allocated slot has zero conv and SSM state: a new sequence's prefill reads
    its initial state from the slot like any continuation does.

    One extra slot, `scratch_slot`, is never handed out, and one extra pool row (the last)
    is never in the free list: padded rows of a CUDA-graph decode batch use that slot, whose
    positions all map to that row, so their writes land where nobody reads.
    """

    def __init__(
        self,
        config: LLMConfig,
        num_slots: int,
        kv_capacity_tokens: int,
        max_seq_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
        kv_dtype: torch.dtype | None = None,
    ):
        """dtype: conv state; kv_dtype: the KV pools (default dtype). SSM state is fp32."""
        c = config
        self.num_slots = num_slots
        self.scratch_slot = num_slots
        rows = num_slots + 1  # + the scratch slot
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_seq_len = max_seq_len
        n_mamba, n_attn = len(c.mamba_layers), len(c.attention_layers)
        kw = {"device": device}
        self.conv_state = [
            torch.zeros(rows, c.conv_dim, c.conv_kernel - 1, dtype=dtype, **kw)
            for _ in range(n_mamba)
        ]
        ssm_shape = (rows, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size)
        self.ssm_state = [torch.zeros(ssm_shape, dtype=torch.float32, **kw) for _ in range(n_mamba)]
        kv_shape = (kv_capacity_tokens + 1, c.num_key_value_heads, c.head_dim)
        kv_dtype = kv_dtype or dtype
        self.k_pool = [torch.zeros(kv_shape, dtype=kv_dtype, **kw) for _ in range(n_attn)]
        self.v_pool = [torch.zeros(kv_shape, dtype=kv_dtype, **kw) for _ in range(n_attn)]
        self.req_to_token = torch.zeros(rows, max_seq_len, dtype=torch.int32, **kw)
        self.req_to_token[self.scratch_slot] = kv_capacity_tokens
        # Host-side bookkeeping: free slots, a stack of free pool rows, reserved length per slot.
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self._free_rows = torch.arange(kv_capacity_tokens - 1, -1, -1, dtype=torch.int32)
        self._num_free_rows = kv_capacity_tokens
        self._reserved = torch.zeros(rows, dtype=torch.int64)

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def num_free_rows(self) -> int:
        return self._num_free_rows

    def reserved_len(self, slot: int) -> int:
        """Positions of `slot` that have a KV pool row."""
        return int(self._reserved[slot])

    def alloc_slot(self) -> int:
        if not self._free_slots:
            raise CacheFullError(f"all {self.num_slots} cache slots are in use")
        slot = self._free_slots.pop()
        self.clear_state(slot)
        return slot

    def clear_state(self, slot: int) -> None:
        """Zero the slot's conv and SSM state: a sequence prefilled from its first token."""
        for conv, ssm in zip(self.conv_state, self.ssm_state, strict=True):
            conv[slot].zero_()
            ssm[slot].zero_()

    def free_slot(self, slot: int) -> None:
        """Return the slot and all its KV pool rows."""
        if not 0 <= slot < self.num_slots or slot in self._free_slots:
            raise ValueError(f"slot {slot} is not allocated")
        n = int(self._reserved[slot])
        if n:
            rows = self.req_to_token[slot, :n].cpu()
            self._free_rows[self._num_free_rows : self._num_free_rows + n] = rows
            self._num_free_rows += n
        self._reserved[slot] = 0
        self._free_slots.append(slot)

    def reserve(self, slots: Sequence[int], lens: Sequence[int]) -> None:
        """Make positions [0, lens[b]) of each slots[b] have pool rows (no-op where they do).

        One vectorised call for the whole batch, so a decode step costs no per-sequence loop.
        """
        slots_t = torch.as_tensor(slots, dtype=torch.int64)
        lens_t = torch.as_tensor(lens, dtype=torch.int64)
        if slots_t.unique().numel() != slots_t.numel():
            raise ValueError(f"duplicate slots in one reserve call: {slots_t.tolist()}")
        if int(lens_t.max()) > self.max_seq_len:
            raise CacheFullError(f"sequence length {int(lens_t.max())} > {self.max_seq_len}")
        cur = self._reserved[slots_t]
        need = (lens_t - cur).clamp(min=0)
        total = int(need.sum())
        if total == 0:
            return
        if total > self._num_free_rows:
            raise CacheFullError(f"need {total} KV rows, {self._num_free_rows} free")
        top = self._num_free_rows
        rows = self._free_rows[top - total : top]
        self._num_free_rows = top - total
        seq = torch.repeat_interleave(torch.arange(len(need)), need)
        first = torch.cumsum(need, 0) - need  # offset of each sequence's block in `rows`
        pos = cur[seq] + torch.arange(total) - first[seq]
        dev = self.req_to_token.device
        self.req_to_token[slots_t[seq].to(dev), pos.to(dev)] = rows.to(dev)
        self._reserved[slots_t] = torch.maximum(cur, lens_t)

    def kv_rows(self, batch: ForwardBatch, num_tokens: int) -> torch.Tensor:
        """Pool rows [T] int64 of the batch's new tokens (reserved beforehand)."""
        if batch.is_decode:
            rows = self.req_to_token[batch.slots, batch.context_lens.long()]
        else:
            lens = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
            seq = torch.repeat_interleave(
                torch.arange(batch.num_seqs, device=lens.device), lens, output_size=num_tokens
            )
            pos = torch.arange(num_tokens, device=lens.device) - batch.cu_seqlens[seq]
            pos = pos + batch.context_lens[seq]
            rows = self.req_to_token[batch.slots[seq], pos.long()]
        return rows.long()
