import pytest
import torch

from cmae.masking import decoder_tokens, make_mask, num_masked, random_mask, scored_tokens, tube_mask


@pytest.mark.parametrize("ratio, n, expect", [(0.75, 196, 147), (0.9, 196, 176), (0.7, 10, 7), (0.5, 7, 3)])
def test_num_masked_floors(ratio, n, expect):
    assert num_masked(n, ratio) == expect


def test_random_mask_has_exact_ratio_and_consistent_views():
    torch.manual_seed(0)
    mask = random_mask(5, 196, 0.75)
    assert mask.visible.shape == (5, 49)
    assert (mask.masked.sum(dim=1) == 147).all()
    # visible indices are sorted, unique and exactly the unmasked places
    assert (mask.visible.diff(dim=1) > 0).all()
    assert not mask.masked.gather(1, mask.visible).any()
    # samples get different masks
    assert not torch.equal(mask.masked[0], mask.masked[1])


def test_tube_mask_is_identical_over_time():
    torch.manual_seed(0)
    t, h, w = 8, 14, 14
    mask = tube_mask(3, (t, h, w), 0.9)
    per_time = mask.masked.reshape(3, t, h * w)
    assert torch.equal(per_time, per_time[:, :1].expand_as(per_time))
    assert (per_time.sum(dim=2) == 176).all()
    assert mask.visible.shape == (3, t * 20)
    assert not mask.masked.gather(1, mask.visible).any()
    assert (mask.visible.diff(dim=1) > 0).all()


def test_masks_follow_generator_and_device():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = make_mask("random", 2, (2, 4, 4), 0.5, generator=g1)
    b = make_mask("random", 2, (2, 4, 4), 0.5, generator=g2)
    assert torch.equal(a.visible, b.visible)
    assert a.visible.device.type == "cpu"


def test_bad_ratio_and_kind():
    with pytest.raises(ValueError, match="mask ratio"):
        random_mask(1, 10, 1.0)
    with pytest.raises(ValueError, match="unknown masking"):
        make_mask("frame", 1, (1, 2, 2), 0.5)


def test_decoder_tokens_keep_every_visible_token_and_a_share_of_the_masked():
    mask = tube_mask(3, (2, 4, 4), 0.75)  # 4 of 16 places visible per step: 8 visible, 24 masked tokens
    decoded = decoder_tokens(mask, 0.5)
    assert decoded.shape == (3, 8 + 12)
    for row, visible, masked in zip(decoded, mask.visible, mask.masked, strict=True):
        assert torch.equal(row, row.sort().values) and len(set(row.tolist())) == 20
        assert set(visible.tolist()) <= set(row.tolist())
        assert int(masked[row].sum()) == 12
    assert not torch.equal(decoded[0], decoded[1])  # drawn per sample


def test_scored_tokens_are_the_masked_ones_in_order():
    mask = random_mask(2, 10, 0.6)
    positions, tokens = scored_tokens(mask)
    assert torch.equal(positions, tokens)
    assert torch.equal(tokens, torch.stack([row.nonzero().squeeze(1) for row in mask.masked]))
    decoded = decoder_tokens(mask, 0.5)  # 4 visible + 3 of the 6 masked
    positions, tokens = scored_tokens(mask, decoded)
    assert positions.shape == tokens.shape == (2, 3)
    assert mask.masked.gather(1, tokens).all() and set(tokens[0].tolist()) <= set(decoded[0].tolist())
    assert tokens[0].tolist() == [n for n in decoded[0].tolist() if mask.masked[0, n]]  # every decoded masked one
