import torch

from kernels.evs import evs_keep_mask_ref
from workers.media.evs import apply_evs


def test_apply_evs_keeps_order_and_counts():
    n, r, c, d = 4, 2, 3, 5
    emb = torch.randn(n * r * c, d, generator=torch.Generator().manual_seed(0))
    kept, per_tubelet = apply_evs(emb, (r, c), 0.5)
    mask = evs_keep_mask_ref(emb.view(n, r, c, d), 0.5).view(-1)
    assert torch.equal(kept, emb[mask])  # boolean indexing keeps raster/temporal order
    assert per_tubelet[0] == r * c and sum(per_tubelet) == kept.shape[0] == max(
        r * c, int(n * r * c * 0.5)
    )


def test_apply_evs_q0_is_identity():
    emb = torch.randn(2 * 4, 3)
    kept, per_tubelet = apply_evs(emb, (2, 2), 0.0)
    assert kept is emb and per_tubelet == [4, 4]
