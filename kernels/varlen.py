"""Block tables for packed variable-length sequences, built on the device without a host sync.

Letters: B sequences. Each sequence is cut into blocks of `block` tokens that restart at its
start, so no block straddles two sequences. The table has a fixed number of slots known from
shapes alone, T // block + B (each sequence adds at most one partial block), so no kernel
needs the true count: unused slots carry sequence index B and length 0.
"""

import torch
import triton
import triton.language as tl


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["n_seqs", "n_slots"])
def _block_table_kernel(
    cu_ptr, n_seqs, seq_ptr, start_ptr, len_ptr, seq_blocks_ptr, n_slots,
    BLOCK: tl.constexpr, MIN_ONE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    b = tl.arange(0, BLOCK_B)
    bmask = b < n_seqs
    s = tl.load(cu_ptr + b, mask=bmask, other=0)
    e = tl.load(cu_ptr + b + 1, mask=bmask, other=0)
    n = (e - s + BLOCK - 1) // BLOCK
    if MIN_ONE:
        n = tl.maximum(n, 1)
    n = tl.where(bmask, n, 0)
    incl = tl.cumsum(n, axis=0)  # blocks of sequences 0..b
    if tl.program_id(0) == 0:
        tl.store(seq_blocks_ptr + b + 1, incl, mask=bmask)
        tl.store(seq_blocks_ptr + b, 0, mask=b == 0)

    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    # owner of slot i: the number of sequences whose blocks all come before it
    seq = tl.sum(((incl[None, :] <= i[:, None]) & bmask[None, :]).to(tl.int32), axis=1)
    pick = b[None, :] == seq[:, None]  # one-hot gather of per-sequence values
    s_i = tl.sum(tl.where(pick, s[None, :], 0), axis=1)
    e_i = tl.sum(tl.where(pick, e[None, :], 0), axis=1)
    first = tl.sum(tl.where(pick, incl[None, :] - n[None, :], 0), axis=1)
    start = s_i + (i - first) * BLOCK
    length = tl.where(seq < n_seqs, tl.minimum(e_i - start, BLOCK), 0)
    imask = i < n_slots
    tl.store(seq_ptr + i, seq, mask=imask)
    tl.store(start_ptr + i, start, mask=imask)
    tl.store(len_ptr + i, length, mask=imask)


def block_table(cu_seqlens, n_tokens, block, min_one=False):
    """cu_seqlens[B+1] int32 -> (seq[S], start[S], length[S], seq_blocks[B+1]) int32 with
    S = n_tokens // block + B slots; sequence b owns slots seq_blocks[b] .. seq_blocks[b+1]-1.
    min_one: an empty sequence still gets one (empty) block. `start` is unspecified in unused
    slots."""
    n_seqs = cu_seqlens.shape[0] - 1
    n_slots = n_tokens // block + n_seqs
    # One buffer, each column at a 16-byte boundary: the kernels that take these columns as
    # pointers are compiled once per pointer alignment, so an unaligned column recompiles them.
    pitch = triton.cdiv(n_slots, 4) * 4
    out = torch.empty(3 * pitch + n_seqs + 1, device=cu_seqlens.device, dtype=torch.int32)
    seq, start, length = (out[i * pitch : i * pitch + n_slots] for i in range(3))
    seq_blocks = out[3 * pitch :]
    BLOCK_I = 64
    _block_table_kernel[(max(1, triton.cdiv(n_slots, BLOCK_I)),)](
        cu_seqlens, n_seqs, seq, start, length, seq_blocks, n_slots, BLOCK=block,
        MIN_ONE=min_one, BLOCK_B=max(16, triton.next_power_of_2(n_seqs + 1)), BLOCK_I=BLOCK_I,
    )  # fmt: skip
    return seq, start, length, seq_blocks


def block_table_ref(cu_seqlens, n_tokens, block, min_one=False):
    bounds = cu_seqlens.tolist()
    n_seqs = len(bounds) - 1
    n_slots = n_tokens // block + n_seqs
    seq, start, length, seq_blocks = [], [], [], [0]
    for b, (s, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        firsts = range(s, max(e, s + 1) if min_one else e, block)
        seq += [b] * len(firsts)
        start += firsts
        length += [min(block, e - f) for f in firsts]
        seq_blocks.append(len(seq))
    pad = n_slots - len(seq)
    cols = [seq + [n_seqs] * pad, start + [0] * pad, length + [0] * pad, seq_blocks]
    return tuple(torch.tensor(c, dtype=torch.int32) for c in cols)
