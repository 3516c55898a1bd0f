"""Executable specification of the Mamba-2 SSD scan: the token recurrence that defines it, and the
chunked einsum form that the Triton kernels in ssd_scan.py follow step by step.

Letters: b batch, l tokens, c chunks, L (and s) positions inside a chunk, h heads, p head dim,
n state size. Inputs are fp32; dt is the step after softplus; B and C are already per head.
No D skip here: that is a per-token add on top.
"""

import torch
import torch.nn.functional as F


def ssd_recurrence(x, dt, A, B, C, initial_state=None):
    """The definition, one token at a time. x[b,l,h,p], dt[b,l,h], A[h], B[b,l,h,n], C[b,l,h,n],
    initial_state[b,h,p,n] | None -> (y[b,l,h,p], final_state[b,h,p,n])."""
    b, seqlen, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state.clone()
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return torch.stack(ys, dim=1) if ys else x.clone(), state


def segsum(a):
    """a[..., L] -> [..., L, L] with out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the
    diagonal. Summing masked copies (not differencing a cumsum) keeps it exact for long chunks."""
    L = a.shape[-1]
    rep = a[..., None].expand(*a.shape, L)  # rep[..., i, j] = a[i]
    rep = rep.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1), 0)
    out = torch.cumsum(rep, dim=-2)
    return out.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=a.device).tril(0), -torch.inf)


def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None):
    """Same contract as ssd_recurrence, computed chunk by chunk."""
    b, seqlen, h, p = x.shape
    n = B.shape[-1]
    # 0. Pad to whole chunks. Padded steps have dt = 0: no decay and no input, so the final state
    #    is unchanged by them.
    pad = (-seqlen) % chunk_size
    x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
    dt = F.pad(dt, (0, 0, 0, pad))
    c = (seqlen + pad) // chunk_size

    # 1. Split into chunks; a = dt*A is the log-decay of each step, cumulated inside each chunk.
    x, B, C = (t.reshape(b, c, chunk_size, h, -1) for t in (x, B, C))
    dt = dt.reshape(b, c, chunk_size, h)
    xdt = x * dt[..., None]
    a = (dt * A).permute(0, 3, 1, 2)  # [b, h, c, L]
    a_cs = torch.cumsum(a, dim=-1)

    # 2. Inside each chunk: the quadratic (attention-like) form, decay exp(a_cs[l] - a_cs[s]).
    decay = torch.exp(segsum(a))  # [b, h, c, L, s]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay, xdt)

    # 3. The state each chunk contributes on its own, decayed to the chunk's end.
    to_end = torch.exp(a_cs[..., -1:] - a_cs)  # [b, h, c, L]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, xdt)

    # 4. Pass states across chunks: the state entering chunk z sums all earlier contributions,
    #    each decayed by the chunks in between; the initial state enters as chunk -1.
    init = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    states = torch.cat([init[:, None], chunk_states], dim=1)  # [b, c+1, h, p, n]
    chunk_decay = torch.exp(segsum(F.pad(a_cs[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 5. Each token reads the state entering its chunk, decayed to its own position.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, torch.exp(a_cs))

    # 6. Both parts together, padding dropped.
    y = (y_diag + y_off).reshape(b, c * chunk_size, h, p)[:, :seqlen]
    return y, final_state
