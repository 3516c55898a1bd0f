"""Device block table for packed sequences vs its host reference."""

import pytest
import torch
import torch.nn.functional as F

from kernels.varlen import block_table, block_table_ref


@pytest.mark.parametrize("min_one", [False, True])
@pytest.mark.parametrize(
    "lens", [[1], [16], [40, 1, 0, 17], [0, 0], [5] * 70], ids=lambda lens: f"{len(lens)}seqs"
)
def test_block_table_equals_ref(lens, min_one):
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
    got = block_table(cu, sum(lens), 16, min_one)
    seq, start, length, seq_blocks = block_table_ref(cu, sum(lens), 16, min_one)
    assert torch.equal(got[0], seq)
    assert torch.equal(got[2], length)
    assert torch.equal(got[3], seq_blocks)
    used = seq < len(lens)
    assert torch.equal(got[1][used], start[used])


@pytest.mark.parametrize("n_tokens", [61, 62, 63, 64])  # every residue of n_slots mod 4
def test_block_table_columns_start_at_16_byte_boundaries(n_tokens):
    # the SSD and conv kernels take these columns as pointers: Triton compiles a kernel anew
    # for each pointer alignment it meets
    cu = torch.tensor([0, n_tokens], dtype=torch.int32)
    for column in block_table(cu, n_tokens, 16):
        assert column.data_ptr() % 16 == 0
