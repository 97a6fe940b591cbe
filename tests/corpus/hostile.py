"""Hostile submissions: code that hangs, exits, prints, raises or returns nonsense.

Apart from the hostile part each function computes the right loss, so any point it
loses is lost for the hostile behaviour alone.
"""
from __future__ import annotations

import os
import sys
import time
import warnings

import torch
import torch.nn as nn

import lossgrader.references

from . import good

PRINTED_STDOUT = "调试输出：正在计算 MSE"
PRINTED_STDERR = "调试输出写到了 stderr"
PRINTED_FD = "直接写入文件描述符 2"
WARNED = "学生代码发出的警告"
RAISED = "预测和目标的形状不匹配"


def mse_infinite_loop(pred, target):
    while True:
        pass


def mse_sleeps(pred, target):
    time.sleep(1000)
    return good.mse_loss(pred, target)


def mse_noisy(pred, target):
    print(PRINTED_STDOUT, pred.shape)
    print(PRINTED_STDERR, file=sys.stderr)
    os.write(2, (PRINTED_FD + "\n").encode())
    warnings.warn(WARNED)
    return good.mse_loss(pred, target)


def mse_floods_output(pred, target):
    for i in range(2000):
        print(f"第 {i} 步：loss 还没算完")
    return good.mse_loss(pred, target)


def mse_raises(pred, target):
    if pred.dim() >= 1:
        raise ValueError(RAISED)
    return good.mse_loss(pred, target)


def mse_torch_error(pred, target):
    product = pred @ target.T.unsqueeze(0)  # a shape error raised inside torch
    return product.mean()


def mse_sys_exit(pred, target):
    sys.exit(1)


def mse_os_exit(pred, target):
    os._exit(0)


def mse_exit(pred, target):
    exit()


def mse_quit(pred, target):
    quit()


def mse_returns_float(pred, target):
    return float(((pred - target) ** 2).mean())


def mse_returns_none(pred, target):
    ((pred - target) ** 2).mean()


def mse_not_implemented(pred, target):
    raise NotImplementedError()


def mse_ellipsis(pred, target):
    ...


def bce_mutates_target(probs, target):
    loss = good.binary_cross_entropy(probs, target)
    target -= 0.5           # target does not require grad: the in-place change goes through
    return loss


def mse_mutates_pred(pred, target):
    pred -= target          # pred requires grad: autograd refuses
    return (pred ** 2).mean()


def mse_calls_reference(pred, target):
    return lossgrader.references.mse_loss(pred, target)


def dice_calls_reference(logits, target, smooth=1.0):
    return lossgrader.references.dice_loss(logits, target, smooth)


def contrastive_calls_reference(x1, x2, label, margin=1.0):
    return lossgrader.references.contrastive_loss(x1, x2, label, margin)


class FocalLossHangsInInit(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        while True:
            pass

    def forward(self, inputs, targets):
        return torch.zeros((), dtype=inputs.dtype, device=inputs.device)
