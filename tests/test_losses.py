import torch

from cmae.losses import reconstruction_loss


def test_reconstruction_loss_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])  # [1, 3, 2]
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 2.0]]])
    masked = torch.tensor([[True, False, True]])
    # token 0: (1 + 4) / 2 = 2.5; token 2: (4 + 1) / 2 = 2.5; token 1 is visible and ignored
    assert torch.isclose(reconstruction_loss(pred, target, masked), torch.tensor(2.5))


def test_no_gradient_from_visible_predictions():
    pred = torch.randn(2, 6, 4, requires_grad=True)
    target = torch.randn(2, 6, 4)
    masked = torch.tensor([[True, False, True, False, True, False], [False] * 5 + [True]])
    reconstruction_loss(pred, target, masked).backward()
    assert (pred.grad[~masked] == 0).all()
    assert (pred.grad[masked].abs().sum(dim=-1) > 0).all()
