"""Correct solutions written with basic tensor operations, as a good student writes them.
The hostile tests wrap them so that a check can only lose points for the hostile part."""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------- 01 overview ----------
def numerical_gradient(f, x, eps=1e-6):
    grad = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
    x_work = x.detach().clone().contiguous()   # a contiguous working copy: x itself stays unchanged
    flat = x_work.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        f_plus = float(f(x_work))
        flat[i] = old - eps
        f_minus = float(f(x_work))
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad.reshape(x.shape)


# ---------- 02 regression ----------
def mse_loss(pred, target):
    return ((pred - target) ** 2).mean()


def mse_grad(pred, target):
    return 2 * (pred - target) / pred.numel()


def mae_loss(pred, target):
    return (pred - target).abs().mean()


def mae_grad(pred, target):
    return torch.sign(pred - target) / pred.numel()


def huber_loss(pred, target, delta=1.0):
    r = (pred - target).abs()
    quadratic = 0.5 * r ** 2
    linear = delta * r - 0.5 * delta ** 2
    return torch.where(r <= delta, quadratic, linear).mean()


def smooth_l1_loss(pred, target, beta=1.0):
    r = (pred - target).abs()
    return torch.where(r < beta, 0.5 * r ** 2 / beta, r - 0.5 * beta).mean()


# ---------- 03 classification ----------
def binary_cross_entropy(probs, target):
    log_p = torch.log(probs).clamp(min=-100)
    log_1mp = torch.log(1 - probs).clamp(min=-100)
    return -(target * log_p + (1 - target) * log_1mp).mean()


def bce_with_logits(logits, target):
    # log(1 + exp(-|x|)) + max(x, 0) - x * y : stable for any |x|
    return (logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()


def bce_with_logits_grad(logits, target):
    return (torch.sigmoid(logits) - target) / logits.numel()


def cross_entropy(logits, target):
    m = logits.max(dim=1, keepdim=True).values
    log_z = m.squeeze(1) + torch.log(torch.exp(logits - m).sum(dim=1))
    true_logit = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return (log_z - true_logit).mean()


def cross_entropy_grad(logits, target):
    p = torch.softmax(logits, dim=1)
    onehot = torch.zeros_like(p)
    onehot[torch.arange(logits.shape[0], device=logits.device), target] = 1
    return (p - onehot) / logits.shape[0]


def _log_softmax(logits):
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


def weighted_cross_entropy(logits, target, weight):
    nll = -_log_softmax(logits).gather(1, target.unsqueeze(1)).squeeze(1)
    w = weight[target]
    return (w * nll).sum() / w.sum()


def label_smoothing_cross_entropy(logits, target, smoothing=0.1):
    log_p = _log_softmax(logits)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    smooth = -log_p.mean(dim=1)
    return ((1 - smoothing) * nll + smoothing * smooth).mean()


def focal_loss(logits, target, alpha=1.0, gamma=2.0):
    ce = -_log_softmax(logits).gather(1, target.unsqueeze(1)).squeeze(1)
    pt = torch.exp(-ce)
    return (alpha * (1 - pt) ** gamma * ce).mean()


def sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * target + (1 - alpha) * (1 - target)
        loss = alpha_t * loss
    return loss.mean()


# ---------- 04 other ----------
def contrastive_loss(x1, x2, label, margin=1.0):
    d = (x1 - x2).norm(dim=1)
    loss = (1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2
    return loss.mean()


def triplet_loss(anchor, positive, negative, margin=1.0):
    d_ap = (anchor - positive).norm(dim=1)
    d_an = (anchor - negative).norm(dim=1)
    return torch.clamp(d_ap - d_an + margin, min=0).mean()


def _onehot_like(probs, target):
    # target (N, *) of class indices -> one-hot (N, C, *) shaped like probs
    return torch.zeros_like(probs).scatter_(1, target.unsqueeze(1), 1.0)


def dice_loss(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    t = _onehot_like(p, target)
    inter = (p * t).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + t.sum() + smooth)


def iou_loss(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    t = _onehot_like(p, target)
    inter = (p * t).sum()
    return 1 - (inter + smooth) / (p.sum() + t.sum() - inter + smooth)


def box_iou_loss(pred_boxes, target_boxes):
    x1 = torch.maximum(pred_boxes[:, 0], target_boxes[:, 0])
    y1 = torch.maximum(pred_boxes[:, 1], target_boxes[:, 1])
    x2 = torch.minimum(pred_boxes[:, 2], target_boxes[:, 2])
    y2 = torch.minimum(pred_boxes[:, 3], target_boxes[:, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_p = (pred_boxes[:, 2] - pred_boxes[:, 0]) * (pred_boxes[:, 3] - pred_boxes[:, 1])
    area_t = (target_boxes[:, 2] - target_boxes[:, 0]) * (target_boxes[:, 3] - target_boxes[:, 1])
    iou = inter / (area_p + area_t - inter)
    return (1 - iou).mean()


def combined_loss(logits, target, alpha=0.5):
    return alpha * cross_entropy(logits, target) + (1 - alpha) * dice_loss(logits, target, smooth=1.0)


# ---------- 06 code (nn.Module versions of the seed's code, corrected) ----------
def mae_with_l1loss(pred, target):
    mae_loss = nn.L1Loss()
    loss = mae_loss(pred, target)
    return loss


class FocalLoss(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, inputs, targets):
        ce_loss = F.cross_entropy(inputs, targets, reduction='none')
        pt = torch.exp(-ce_loss)
        return (self.alpha * (1 - pt) ** self.gamma * ce_loss).mean()


class DiceLoss(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        probs = F.softmax(inputs, dim=1)
        onehot = F.one_hot(targets, num_classes=inputs.shape[1]).movedim(-1, 1).to(probs.dtype)
        inter = (probs * onehot).sum()
        return 1 - (2 * inter + self.smooth) / (probs.sum() + onehot.sum() + self.smooth)


class CombinedLoss(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = alpha
        self.ce_loss = nn.CrossEntropyLoss()
        self.dice_loss = DiceLoss()

    def forward(self, inputs, targets):
        return self.alpha * self.ce_loss(inputs, targets) + (1 - self.alpha) * self.dice_loss(inputs, targets)


class LabelSmoothingCrossEntropy(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        log_prob = F.log_softmax(pred, dim=-1)
        nll_loss = -log_prob.gather(dim=-1, index=target.unsqueeze(dim=-1)).squeeze(dim=-1)
        smooth_loss = -log_prob.mean(dim=-1)
        return ((1.0 - self.smoothing) * nll_loss + self.smoothing * smooth_loss).mean()


class WeightedCrossEntropy(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        weight = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        return F.cross_entropy(logits, target, weight=weight)


# ---------- 05 selection (graded by outcome) ----------
def fit_line_robust(x, y):
    """Fit y ~ w x + b with the Huber loss by gradient descent; return (w, b) as floats."""
    w = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        loss = huber_loss(w * x + b, y, delta=1.0)
        loss.backward()
        opt.step()
    return w.item(), b.item()


def train_imbalanced(x, y):
    """Train a linear classifier on imbalanced 2-class data; return the trained model."""
    model = nn.Linear(x.shape[1], 2).to(x.device)
    counts = torch.bincount(y, minlength=2).float()
    weight = (counts.sum() / (2 * counts)).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = weighted_cross_entropy(model(x), y, weight)
        loss.backward()
        opt.step()
    return model
