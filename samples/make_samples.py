#!/usr/bin/env python
"""Regenerate the sample class in samples/submitted/ from the student notebooks in exercises/.

Three sample students hand in every assignment found in exercises/:

* ``demo_full``       fills every answer cell with the model answer of solutions/ (full marks);
* ``demo_bugs``       makes the typical mistakes (several copied from the seed tutorial: an MAE
                      that computes MSE, the MSE gradient without 1/n, a weighted cross-entropy
                      divided by N, class indices fed to a Dice loss, ...); answers without a
                      typical mistake listed below are the model answer;
* ``demo_unfinished`` answers the first half of each assignment and leaves the rest as handed out.

Only answer cells are edited (read-only cells and tests stay as released), and the notebooks
are written without outputs, as a student's "save" in Jupyter would leave them after
"Restart & Clear Output".  Re-run after regenerating exercises/:

    python samples/make_samples.py            # rewrite samples/submitted/
    python samples/make_samples.py --check    # exit 1 when samples/submitted/ is stale
"""
import argparse
import os
import re
import sys
import tempfile

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "samples", "submitted")
STUDENTS = ("demo_full", "demo_bugs", "demo_unfinished")

# Typical mistakes, keyed by the student function or class name of the exercise registry.
BUGGY = {
    "numerical_gradient": '''def numerical_gradient(f, x, eps=1e-6):
    # 用了前向差分 (f(x+eps) - f(x)) / eps，而不是中心差分
    grad = torch.zeros_like(x)
    x_work = x.detach().clone()
    flat, grad_flat = x_work.view(-1), grad.view(-1)
    f0 = float(f(x_work))
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        grad_flat[i] = (float(f(x_work)) - f0) / eps
        flat[i] = old
    return grad
''',
    "mse_grad": '''def mse_grad(pred, target):
    # 原教程的公式 -2(y - y_hat)：这是求和形式的梯度，少了平均值的 1/n
    return -2 * (target - pred)
''',
    "mae_loss": '''def mae_loss(pred, target):
    # 原教程的 MAE 片段：创建了 L1 损失，却调用了 mse_loss
    mae = nn.L1Loss()
    loss = mse_loss(pred, target)
    return loss
''',
    "mae_grad": '''def mae_grad(pred, target):
    # 残差的符号，但少了平均值的 1/n
    return torch.sign(pred - target)
''',
    "huber_loss": '''def huber_loss(pred, target, delta=1.0):
    # 线性分支漏了让两段相接的 -0.5 * delta**2
    r = (pred - target).abs()
    return torch.where(r <= delta, 0.5 * r ** 2, delta * r).mean()
''',
    "smooth_l1_loss": '''def smooth_l1_loss(pred, target, beta=1.0):
    # beta == 0 时也除以 beta：smooth L1 在 beta = 0 时梯度为 nan
    r = (pred - target).abs()
    return torch.where(r < beta, 0.5 * r ** 2 / beta, r - 0.5 * beta).mean()
''',
    "binary_cross_entropy": '''def binary_cross_entropy(probs, target):
    # 没有截断对数：概率恰为 0 或 1 时 -inf * 0 = nan
    return -(target * torch.log(probs) + (1 - target) * torch.log(1 - probs)).mean()
''',
    "bce_with_logits": '''def bce_with_logits(logits, target):
    # 先 sigmoid 再取 log：|logits| 很大时上溢/下溢
    p = torch.sigmoid(logits)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
''',
    "bce_with_logits_grad": '''def bce_with_logits_grad(logits, target):
    # 少了平均值的 1/n
    return torch.sigmoid(logits) - target
''',
    "cross_entropy": '''def cross_entropy(logits, target):
    # softmax 没有先减去最大值：logits 很大时 exp 上溢
    p = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(p[torch.arange(logits.shape[0], device=logits.device), target]).mean()
''',
    "cross_entropy_grad": '''def cross_entropy_grad(logits, target):
    # softmax 减 one-hot，但没有除以批大小 N
    p = torch.softmax(logits, dim=1)
    onehot = torch.zeros_like(p)
    onehot[torch.arange(logits.shape[0], device=logits.device), target] = 1
    return p - onehot
''',
    "weighted_cross_entropy": '''def weighted_cross_entropy(logits, target, weight):
    # 加权和除以 N，而不是除以目标类别权重之和
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    return (weight[target] * nll).sum() / target.shape[0]
''',
    "label_smoothing_cross_entropy": '''def label_smoothing_cross_entropy(logits, target, smoothing=0.1):
    # 把平滑的概率只分给 K-1 个错误类别
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    k = logits.shape[1]
    true = torch.zeros_like(log_p).scatter_(1, target.unsqueeze(1), 1.0)
    dist = true * (1 - smoothing) + (1 - true) * smoothing / (k - 1)
    return -(dist * log_p).sum(dim=1).mean()
''',
    "focal_loss": '''def focal_loss(logits, target, alpha=1.0, gamma=2.0):
    # 用了预测类别的概率，而不是真实类别的 p_t
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    ce = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    p_max = log_p.exp().max(dim=1).values
    return (alpha * (1 - p_max) ** gamma * ce).mean()
''',
    "contrastive_loss": '''def contrastive_loss(x1, x2, label, margin=1.0):
    # 用了另一种标签约定（y = 1 表示相似），本课程是 y = 0 表示相似
    d = (x1 - x2).norm(dim=1)
    return (label * d ** 2 + (1 - label) * torch.clamp(margin - d, min=0) ** 2).mean()
''',
    "triplet_loss": '''def triplet_loss(anchor, positive, negative, margin=1.0):
    # 用了平方距离，而不是欧氏距离
    d_ap = ((anchor - positive) ** 2).sum(dim=1)
    d_an = ((anchor - negative) ** 2).sum(dim=1)
    return torch.clamp(d_ap - d_an + margin, min=0).mean()
''',
    "box_iou_loss": '''def box_iou_loss(pred_boxes, target_boxes):
    # 没有截断重叠部分：不相交的框得到负的交集
    x1 = torch.maximum(pred_boxes[:, 0], target_boxes[:, 0])
    y1 = torch.maximum(pred_boxes[:, 1], target_boxes[:, 1])
    x2 = torch.minimum(pred_boxes[:, 2], target_boxes[:, 2])
    y2 = torch.minimum(pred_boxes[:, 3], target_boxes[:, 3])
    inter = (x2 - x1) * (y2 - y1)
    area_p = (pred_boxes[:, 2] - pred_boxes[:, 0]) * (pred_boxes[:, 3] - pred_boxes[:, 1])
    area_t = (target_boxes[:, 2] - target_boxes[:, 0]) * (target_boxes[:, 3] - target_boxes[:, 1])
    return (1 - inter / (area_p + area_t - inter)).mean()
''',
    "combined_loss": '''def combined_loss(logits, target, alpha=0.5):
    # 原教程的 CombinedLoss：把类别下标交给需要 one-hot 目标的 Dice 损失
    p = torch.softmax(logits, dim=1)
    t = target.float()
    dice = 1 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    ce = (torch.logsumexp(logits, dim=1) - logits.gather(1, target.unsqueeze(1)).squeeze(1)).mean()
    return alpha * ce + (1 - alpha) * dice
''',
    "fit_line_robust": '''def fit_line_robust(x, y):
    # 数据有离群点却用 MSE 拟合：斜率被拉偏
    w = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        loss = ((w * x + b - y) ** 2).mean()
        loss.backward()
        opt.step()
    return w.item(), b.item()
''',
    "train_imbalanced": '''def train_imbalanced(x, y):
    # 在 95/5 的数据上用普通（不加权）交叉熵：少数类被忽略
    model = nn.Linear(x.shape[1], 2).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return model
''',
    "mae_with_l1loss": '''def mae_with_l1loss(pred, target):
    # 原样照抄原教程的片段
    mae_loss = nn.L1Loss()
    loss = F.mse_loss(pred, target)
    return loss
''',
    "DiceLoss": '''class DiceLoss(nn.Module):
    # 原教程的 DiceLoss：对非连续张量 .view(-1) 会失败，目标原样使用
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        inputs = F.softmax(inputs, dim=1).view(-1)
        targets = targets.view(-1).float()
        intersection = (inputs * targets).sum()
        dice = (2. * intersection + self.smooth) / (inputs.sum() + targets.sum() + self.smooth)
        return 1 - dice
''',
    "WeightedCrossEntropy": '''class WeightedCrossEntropy(nn.Module):
    # 把权重存成可训练的 Parameter，也没有移动到 logits 所在的设备
    def __init__(self, class_weights):
        super().__init__()
        self.class_weights = nn.Parameter(torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, weight=self.class_weights.detach())
''',
}

_DEF = re.compile(r"^(?:def|class)\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
_SOLUTION_BLOCK = re.compile(r"^[ \t]*### (?:BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)


def assignment_ids():
    ex = os.path.join(ROOT, "exercises")
    return sorted(d for d in os.listdir(ex) if os.path.isfile(os.path.join(ex, d, d + ".ipynb")))


def _grade_id(cell):
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta.get("grade_id") if isinstance(meta, dict) else None


def _is_answer(cell):
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.cell_type == "code" and isinstance(meta, dict) and meta.get("solution") and not meta.get("grade")


def model_answers(aid):
    """grade_id -> source of the answer cell in solutions/ with the solution markers removed."""
    nb = nbformat.read(os.path.join(ROOT, "solutions", aid, aid + ".ipynb"), as_version=4)
    return {_grade_id(c): _SOLUTION_BLOCK.sub("", c.source).rstrip("\n") for c in nb.cells if _is_answer(c)}


def make(aid, student):
    """The notebook `student` hands in for assignment `aid`."""
    nb = nbformat.read(os.path.join(ROOT, "exercises", aid, aid + ".ipynb"), as_version=4)
    answers = model_answers(aid)
    cells = [c for c in nb.cells if _is_answer(c)]
    for i, cell in enumerate(cells):
        model = answers.get(_grade_id(cell))
        if model is None:
            continue
        if student == "demo_full":
            cell.source = model
        elif student == "demo_unfinished":
            if i < (len(cells) + 1) // 2:
                cell.source = model
        elif student == "demo_bugs":
            names = _DEF.findall(model)
            bug = next((BUGGY[n] for n in names if n in BUGGY), None)
            if bug is None:
                cell.source = model
            else:
                header = model.split("\n", 1)[0] if model.startswith("#") else "# 答案"
                cell.source = header + "\n" + bug.rstrip("\n")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def write_all(out=OUT):
    written = []
    for aid in assignment_ids():
        for student in STUDENTS:
            path = os.path.join(out, student, aid, aid + ".ipynb")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                nbformat.write(make(aid, student), fh)
            written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when samples/submitted/ is stale")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_all(tmp)
            stale = []
            for path in fresh:
                rel = os.path.relpath(path, tmp)
                kept = os.path.join(OUT, rel)
                with open(path, encoding="utf-8") as a:
                    new = a.read()
                try:
                    with open(kept, encoding="utf-8") as b:
                        old = b.read()
                except OSError:
                    old = None
                if new != old:
                    stale.append(rel)
        for rel in stale:
            print("stale:", rel)
        return 1 if stale else 0
    for path in write_all():
        print(os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
