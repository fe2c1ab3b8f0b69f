import torch
from torch import nn

from tailorrt.training.flops import count_flops, count_params


def test_conv_linear_bn_flops_are_exact():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                      nn.Linear(8 * 4 * 4, 5))
    flops = count_flops(m, torch.zeros(1, 3, 4, 4))
    assert flops == 8 * 16 * 3 * 9 + 2 * 8 * 16 + 5 * 128
    assert count_params(m) == 8 * 27 + 16 + 128 * 5 + 5
