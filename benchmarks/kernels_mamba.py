"""GPU benchmarks of the Mamba-2 and norm kernels at the real model shapes (docs/model.md §1.2).

Each bench_* function checks the Triton op against its torch reference on the GPU, times both
with triton.testing.do_bench (median), and reports achieved TFLOP/s or TB/s from the formula
next to it against the H200 ceilings of docs/performance.md. Where mamba_ssm's source tree is
at .cache/mamba_ssm_src, its Triton SSD and state-update kernels are timed in the same run.
max_rel_err = max|op - ref| / max|ref| over all outputs.

    python -m benchmarks.kernels_mamba
"""

import importlib
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import format_table, median_ms, rel_err, row
from kernels.causal_conv1d import (
    causal_conv1d_update,
    causal_conv1d_update_ref,
    causal_conv1d_varlen,
    causal_conv1d_varlen_ref,
)
from kernels.rmsnorm import gated_group_rmsnorm, gated_group_rmsnorm_ref, rmsnorm, rmsnorm_ref
from kernels.ssd_scan import ssd_scan, ssd_scan_ref
from kernels.ssm_state_update import ssm_state_update, ssm_state_update_ref

MAMBA_SRC = Path(__file__).resolve().parent.parent / ".cache" / "mamba_ssm_src"

H, P, G, N, K, CHUNK = 64, 64, 8, 128, 4, 128
CONV_DIM = H * P + 2 * G * N
HIDDEN = 2688
EPS = 1e-5


def load_mamba_triton(root=MAMBA_SRC):
    """mamba_ssm's ops/triton modules imported by file path, or None (with a note) if absent.
    Empty stand-in packages keep mamba_ssm/__init__.py, which needs its CUDA build, from running."""
    if not (root / "mamba_ssm" / "ops" / "triton" / "ssd_combined.py").exists():
        print(f"note: {root} not found; mamba_ssm baselines skipped")
        return None
    for name, sub in [
        ("mamba_ssm", ""),
        ("mamba_ssm.ops", "ops"),
        ("mamba_ssm.ops.triton", "ops/triton"),
        ("mamba_ssm.utils", "utils"),
    ]:
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / "mamba_ssm" / sub)]
            sys.modules[name] = pkg
    try:
        return types.SimpleNamespace(
            ssd=importlib.import_module("mamba_ssm.ops.triton.ssd_combined"),
            ssu=importlib.import_module("mamba_ssm.ops.triton.selective_state_update"),
        )
    except ImportError as e:
        print(f"note: mamba_ssm Triton modules failed to import ({e}); baselines skipped")
        return None


def _ssd_inputs(T, dev, dtype=torch.bfloat16):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(T, H, P, device=dev, generator=g).to(dtype)
    dt = (0.5 * torch.randn(T, H, device=dev, generator=g)).to(dtype)
    # dt_bias and A as the Mamba-2 initialisation draws them: dt' around 1e-3..1e-1, A in -1..-16
    dt0 = torch.exp(torch.rand(H, device=dev, generator=g) * math.log(100) + math.log(1e-3))
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))
    A = -torch.empty(H, device=dev).uniform_(1, 16, generator=g)
    B = torch.randn(T, G, N, device=dev, generator=g).to(dtype)
    C = torch.randn(T, G, N, device=dev, generator=g).to(dtype)
    D = torch.randn(H, device=dev, generator=g)
    return x, dt, A, B, C, D, dt_bias


def ssd_flops(T):
    """Chunk states 2PN + state read-out 2NP + causal C·B^T (L/2)·2N + its product with x
    (L/2)·2P, per token and head."""
    return T * H * (4 * P * N + CHUNK * N + CHUNK * P)


def _bench_ssd_one(T, mamba):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(T, "cuda")
    cu = torch.tensor([0, T], device="cuda", dtype=torch.int32)
    args = (x, dt, A, B, C, D, dt_bias, cu, None, CHUNK)
    err = rel_err(ssd_scan(*args), ssd_scan_ref(*args))
    base = None
    if mamba is not None:
        combined = mamba.ssd.mamba_chunk_scan_combined
        base = median_ms(
            lambda: combined(
                x[None], dt[None], A, B[None], C[None], CHUNK, D=D, dt_bias=dt_bias,
                dt_softplus=True, return_final_states=True,
            )
        )  # fmt: skip
    shape = f"T={T} H={H} P={P} G={G} N={N}"
    flops = ssd_flops(T)
    rows = [row("ssd_scan", shape, median_ms(lambda: ssd_scan(*args)), flops, "TFLOP/s", err, base)]
    if T <= 16384:  # the torch reference needs several GB of intermediates beyond that
        ms = median_ms(lambda: ssd_scan_ref(*args))
        rows.append(row("ssd_scan_ref (torch)", shape, ms, flops, "TFLOP/s", None))
    return rows


def bench_ssd_scan(lengths=(4096, 16384, 65536), mamba=None):
    rows = []
    for T in lengths:
        rows += _bench_ssd_one(T, mamba)
        torch.cuda.empty_cache()
    return rows


def _bench_ssu_one(batch, mamba):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(batch, "cuda")
    state = torch.randn(batch, H, P, N, device="cuda")
    slots = torch.randperm(batch, device="cuda")
    s1, s2 = state.clone(), state.clone()
    y1 = ssm_state_update(s1, x, dt, A, B, C, D, dt_bias, slots)
    y2 = ssm_state_update_ref(s2, x, dt, A, B, C, D, dt_bias, slots)
    err = rel_err([y1, s1], [y2, s2])
    base = None
    if mamba is not None:
        # mamba_ssm's per-(head, dim) parameters, tied over dim and state by stride-0 views
        A3 = A[:, None, None].expand(H, P, N)
        dt3, D2 = dt[:, :, None].expand(batch, H, P), D[:, None].expand(H, P)
        bias2 = dt_bias[:, None].expand(H, P)
        ssu = mamba.ssu.selective_state_update
        base = median_ms(
            lambda: ssu(
                s1, x, dt3, A3, B, C, D=D2, dt_bias=bias2, dt_softplus=True,
                state_batch_indices=slots,
            )
        )  # fmt: skip
    ms = median_ms(lambda: ssm_state_update(s1, x, dt, A, B, C, D, dt_bias, slots))
    nbytes = 2 * state.numel() * 4 + 2 * x.numel() * 2 + 2 * B.numel() * 2
    shape = f"B={batch} H={H} P={P} N={N}"
    return [row("ssm_state_update", shape, ms, nbytes, "TB/s", err, base)]


def bench_ssm_state_update(batches=(64, 256), mamba=None):
    return [row for batch in batches for row in _bench_ssu_one(batch, mamba)]


def bench_causal_conv1d(T=16384, n_seqs=8, batch=256):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(T, CONV_DIM, device=dev, generator=g, dtype=torch.bfloat16)
    w = torch.randn(CONV_DIM, K, device=dev, generator=g, dtype=torch.bfloat16)
    bias = torch.randn(CONV_DIM, device=dev, generator=g, dtype=torch.bfloat16)
    cut = torch.sort(torch.randperm(T - 1, device=dev, generator=g)[: n_seqs - 1] + 1).values
    cu = F.pad(F.pad(cut, (1, 0)), (0, 1), value=T).to(torch.int32)
    state = torch.randn(max(n_seqs, batch), CONV_DIM, K - 1, device=dev, dtype=torch.bfloat16)
    slots = torch.arange(n_seqs, device=dev)
    has_init = torch.arange(n_seqs, device=dev) % 2 == 0
    s1, s2 = state.clone(), state.clone()
    y1 = causal_conv1d_varlen(x, w, bias, cu, s1, slots, has_init)
    y2 = causal_conv1d_varlen_ref(x, w, bias, cu, s2, slots, has_init)
    err = rel_err([y1, s1], [y2, s2])
    ms = median_ms(lambda: causal_conv1d_varlen(x, w, bias, cu, s1, slots, has_init))
    rows = [row("causal_conv1d_varlen", f"T={T} C={CONV_DIM} seqs={n_seqs}", ms,
                 2 * x.numel() * 2, "TB/s", err)]  # fmt: skip

    xb = x[:batch].contiguous()
    slots = torch.randperm(state.shape[0], device=dev)[:batch]
    s1, s2 = state.clone(), state.clone()
    err = rel_err([causal_conv1d_update(xb, s1, w, bias, slots), s1],
                   [causal_conv1d_update_ref(xb, s2, w, bias, slots), s2])  # fmt: skip
    ms = median_ms(lambda: causal_conv1d_update(xb, s1, w, bias, slots))
    nbytes = 2 * xb.numel() * 2 + 2 * batch * CONV_DIM * (K - 1) * 2
    rows.append(row("causal_conv1d_update", f"B={batch} C={CONV_DIM}", ms, nbytes, "TB/s", err))
    return rows


def bench_norms(T=16384):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(T, HIDDEN, device=dev, generator=g, dtype=torch.bfloat16)
    res = torch.randn(T, HIDDEN, device=dev, generator=g, dtype=torch.bfloat16)
    w = torch.randn(HIDDEN, device=dev, generator=g, dtype=torch.bfloat16)
    err = rel_err(rmsnorm(x, w, EPS, res), rmsnorm_ref(x, w, EPS, res))
    ms = median_ms(lambda: rmsnorm(x, w, EPS, res))
    rows = [row("rmsnorm+residual", f"T={T} D={HIDDEN}", ms, 4 * x.numel() * 2, "TB/s", err)]

    y = torch.randn(T, H * P, device=dev, generator=g, dtype=torch.bfloat16)
    z = torch.randn(T, H * P, device=dev, generator=g, dtype=torch.bfloat16)
    wg = torch.randn(H * P, device=dev, generator=g, dtype=torch.bfloat16)
    gs = H * P // G
    err = rel_err([gated_group_rmsnorm(y, z, wg, gs, EPS)],
                   [gated_group_rmsnorm_ref(y, z, wg, gs, EPS)])  # fmt: skip
    ms = median_ms(lambda: gated_group_rmsnorm(y, z, wg, gs, EPS))
    rows.append(row("gated_group_rmsnorm", f"T={T} C={H * P} group={gs}", ms,
                     3 * y.numel() * 2, "TB/s", err))  # fmt: skip
    return rows


def all_rows():
    mamba = load_mamba_triton()
    return (
        bench_ssd_scan(mamba=mamba)
        + bench_ssm_state_update(mamba=mamba)
        + bench_causal_conv1d()
        + bench_norms()
    )


def main():
    print(format_table(all_rows()))


if __name__ == "__main__":
    main()
