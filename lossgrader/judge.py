"""The trusted judge: turns what the runtime reported about a student's code into verdicts.

Everything here reads plain data (the runtime's responses: statuses, descriptions of the
returned objects, tensors on the CPU) and never calls student code, so it gives the same
verdict whether the student's code ran in this process (``check`` in a notebook) or in a
sandbox (autograding). The exercises (``lossgrader.exercises``) use these checks in the
order that gives the most useful message first.

Hints are typed (``Hint``): each states its premise, a condition the judge measured on the
case (``PREMISES``), and where the book explains it; a hint whose premise was not measured is
not shown, and the neutral message (expected, got, where) stands alone.
"""
from __future__ import annotations

import dataclasses
import html
import math
import re
from dataclasses import dataclass
from typing import Optional

import torch

from .runtime import MAX_CUTS, device_name

from .guards import GAPS, GAP_CHILD, GAP_FORK, GAP_THREAD, single_thread


# ----------------------------------------------------------------------------- hints
# The book online (from Colab and any notebook: ``check``) and the local build seen from a
# feedback page (feedback/<student>/<assignment>/<notebook>.html; the course root is the
# book root, built into _build/html). tests/test_book_links.py checks the online address is
# the GitHub Pages site of _config.yml's repository and every anchor exists in the built book.
BOOK_ONLINE = "https://lossfn-course.github.io/loss-functions-zh/"
BOOK_LOCAL = "../../../_build/html/"

# Every section a hint links to, with its heading (without its number): the link's text, and
# what tests/test_book_links.py finds at that anchor of the built book.
BOOK_SECTIONS = {
    # Only anchors Sphinx derives from a heading's ASCII words or MyST labels: the numbered
    # ones (id5, id12, ...) move whenever a section is added before them.
    "book/01_overview.html#autograd-graph": "计算图：梯度在哪里会断",
    "book/01_overview.html#autograd-inplace": "原地修改",
    "book/01_overview.html#h": "h 不是越小越好",
    "book/02_regression.html#mse": "均方误差（MSE）",
    "book/02_regression.html#mae": "平均绝对误差（MAE）",
    "book/02_regression.html#huber": "Huber 损失",
    "book/02_regression.html#l1-smooth-l1": "平滑 L1 损失（Smooth L1）",
    "book/02_regression.html#smooth-l1-huber": "Smooth L1 与 Huber 的关系",
    "book/03_classification.html#bce": "二元交叉熵（BCE）",
    "book/03_classification.html#logits-bce": "带 logits 的 BCE：数值稳定的写法",
    "book/03_classification.html#sigma-z-y": "梯度：σ(z) − y",
    "book/03_classification.html#log-softmax": "Log-Softmax 与稳定形式",
    "book/03_classification.html#softmax-one-hot-n": "梯度：softmax − one-hot，再除以 N",
    "book/03_classification.html#focal-loss": "Focal Loss（焦点损失）",
    "book/03_classification.html#p-t-gamma": "调制因子 (1 − p_t)^γ",
    "book/03_classification.html#sigmoid-focal-loss-retinanet-torchvision": "Sigmoid Focal Loss（RetinaNet / torchvision 形式）",
    "book/03_classification.html#label-smoothing": "标签平滑（Label Smoothing）",
    "book/03_classification.html#weighted-ce": "加权交叉熵（Weighted CE）",
    "book/04_other.html#contrastive-loss": "对比损失（Contrastive Loss）",
    "book/04_other.html#triplet-loss": "Triplet Loss",
    "book/04_other.html#dice-loss": "Dice Loss",
    "book/04_other.html#reshape-view": "实现：接收类别索引，用 reshape 而不是 view",
    "book/04_other.html#iou-loss": "IoU Loss",
    "book/04_other.html#giou": "不相交时没有梯度，以及 GIoU",
    "book/04_other.html#alpha-cdot-text-ce-1-alpha-cdot-text-dice": "组合损失：α·CE + (1 − α)·Dice",
    "book/05_selection.html#ce-ce-focal-loss": "实验：不平衡数据上的 CE、加权 CE 与 Focal Loss",
    "book/06_code.html#mse-mae": "MSE 与 MAE",
    "book/06_code.html#focal-loss": "Focal Loss",
    "book/06_code.html#dice-loss": "Dice Loss",
    "book/06_code.html#buffer-weightedcrossentropy": "带 buffer 的 WeightedCrossEntropy",
    "book/06_code.html#gpu": "在 GPU 上运行",
    "book/appendix_errata.html#mae-mse": "MAE 示例计算的是 MSE",
    "book/appendix_errata.html#mse-1-n": "MSE 的梯度漏掉了 1/n",
    "book/appendix_errata.html#combinedloss": "CombinedLoss 的目标格式：原教程没有说明",
    "book/appendix_errata.html#diceloss-view-1": "DiceLoss 的 .view(-1) 要求目标张量连续",
}

# What the judge measures before it shows a hint (docs/grader.md, "Hints").
PREMISES = {
    "mistake": "the student's values match the typical mistake (or library variant) on every case where it differs "
               "from the reference, and on at least one",
    "factor": "the gradient is c times the reference's on every element that matters, with the same meaning of c "
              "(−1, n, N, 1/n, 1/N, 2, 1/2 or one constant) on at least two failing cases and on every failing case "
              "whose gradient was compared, and c is not 1",
    "kink": "every failing element lies where the case's subgradient range applies (a kink of the reference)",
    "epsilon": "the largest error is between 1 and NEAR_FACTOR times the tolerance (an offset of the size of a "
               "stabilising constant) in an exercise whose formula has a place for one",
    "kind:loss": "a loss exercise whose value was compared and matched before its gradient was",
    "graph:grad-disabled": "the runtime saw torch run with autograd off (torch.no_grad, set_grad_enabled(False), "
                           "inference_mode) while the student's function computed a result without a graph",
    "graph:cut": "the runtime saw calls that cut the graph (detach, .data, item, numpy, torch.tensor, requires_grad_, "
                 "round, argmax, ...) while the student's function computed a result without a graph",
    "result": "what the function returned (a Python number, a NumPy value, a shape, a dtype, a device, None)",
    "mutated": "an input tensor differs after the call",
    "nonfinite": "the result holds NaN or Inf (the case's tags say where: probabilities 0/1, large logits, a kink)",
    "exception": "the exception's type and message match the pattern of this kind of error",
    "call": "what the runtime reported about the call (time out, exit, NotImplementedError, a forbidden call)",
    "module": "what the nn.Module held (its parameters)",
    "outcome": "what the student's training achieved on the grader's data",
}


@dataclass(frozen=True)
class Hint:
    """A hint and its premise: ``premise`` names the condition the judge measured (PREMISES),
    ``book`` the section of the book that explains it (a key of BOOK_SECTIONS) or None."""
    key: str
    text: str
    premise: str
    book: Optional[str] = None

    def __post_init__(self):
        if self.premise not in PREMISES:
            raise ValueError(f"hint {self.key}: unknown premise {self.premise!r}")
        if self.book is not None and self.book not in BOOK_SECTIONS:
            raise ValueError(f"hint {self.key}: unknown book section {self.book!r}")

    def __str__(self) -> str:
        return self.text


class CaseFailure(Exception):
    def __init__(self, status: str, message: str, hint: Optional[Hint] = None, evidence: Optional[dict] = None):
        super().__init__(message)
        self.status = status      # "fail", "error", "notimpl", "timeout", "forbidden"
        self.message = message
        self.hint = hint          # a Hint whose premise this case measured, or None
        self.evidence = evidence or {}   # for the diagnosis across cases (factor, near, gradient)


@dataclass
class CaseResult:
    name: str
    inputs: str
    status: str                   # "pass" or a CaseFailure status, or "skipped"
    message: str = ""
    hint: Optional[str] = None    # the hint's text (plain text: classreport counts them)
    group: Optional[str] = None   # scoring group (lossgrader.engine.score): None, a group of its own
    hint_key: Optional[str] = None
    book: Optional[str] = None    # the hint's book section (a key of BOOK_SECTIONS)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def set_hint(self, hint: Optional[Hint]) -> None:
        self.hint = hint.text if hint is not None else None
        self.hint_key = hint.key if hint is not None else None
        self.book = hint.book if hint is not None else None


def scoring_groups(results) -> tuple:
    """(groups whose cases all passed, groups): the score is points × the first / the second.
    Every group has the same weight; a result without a group is a group of its own."""
    groups = {}
    for k, r in enumerate(results):
        key = r.group if getattr(r, "group", None) is not None else ("case", k)
        groups[key] = groups.get(key, True) and r.passed
    return sum(groups.values()), len(groups)


@dataclass(frozen=True)
class Tolerance:
    """An element passes when |got − expected| <= rtol·|expected| + atol·scale, where scale is
    max(1, |expected|) for a scalar and max|expected| (1 when all are 0) for a tensor, so
    that atol is relative to the largest element of a gradient, not an absolute 1."""
    rtol: float
    atol: float
    reason: str = ""

    def loosened(self, factor: float) -> "Tolerance":
        return Tolerance(self.rtol * factor, self.atol * factor, self.reason)


# The one tolerance policy (docs/grader.md, "Tolerance policy"). It is set by what correct
# code legitimately does, not by machine precision: a stabilising constant up to ~1e-6
# (union + 1e-6, one_hot + 1e-6, p.clamp(1e-7, 1 - 1e-7) away from 0 and 1, pairwise
# distance's eps), accumulating in float64, softplus / logsigmoid / logsumexp forms,
# torch.where vs clamp. Such code changes a value or a gradient by up to a few 1e-6
# relative; the typical mistakes change it by 1e-2 or more (tests/test_tolerances.py
# checks both sides, and that loosening this table 10× lets a near miss through).
TOLERANCES = {
    torch.float16: Tolerance(1e-2, 1e-3, "half precision"),
    torch.bfloat16: Tolerance(2e-2, 1e-2, "bfloat16 keeps 8 bits of mantissa"),
    torch.float32: Tolerance(1e-4, 1e-5, "float32 rounding of sums and large logits, plus eps up to 1e-6"),
    torch.float64: Tolerance(1e-5, 1e-5, "eps up to 1e-6 in a denominator, a one-hot, a clamp or a distance (F.pairwise_distance)"),
}

# The table is a floor, not the only bar: every case's reference is also evaluated in float64
# (``Exercise.expect``'s ``precise``), and a result also passes where it is at least as close to
# that as the reference is, times REFERENCE_ERROR_FACTOR, element by element. Where the
# reference's own float32 rounding error exceeds the table (numerical_grad's float32 case: f
# evaluated in float32, then divided by 2ε) an implementation more precise than the reference
# (float64 inside) would otherwise fail, and only bit-identical arithmetic would pass. The
# factor leaves room for a correct float32 implementation whose rounding differs from the
# reference's; tests/test_tolerances.py checks float64-inside implementations pass every float32
# case and that this factor loosened 10x lets an implementation 3x too far from float64 through.
REFERENCE_ERROR_FACTOR = 4.0

# A failure whose largest error is at most NEAR_FACTOR times the allowed one is reported as
# "very close": the two numbers are printed with enough digits to differ, and the hint asks
# whether an epsilon was added.
NEAR_FACTOR = 20.0

def tolerance_for(dtype, override=None) -> Tolerance:
    """The tolerance for ``dtype``: the exercise's override (a Tolerance, a per-dtype dict
    of them, or an (rtol, atol) pair) or else the table."""
    if isinstance(override, dict):
        override = override.get(dtype)
    if isinstance(override, Tolerance):
        return override
    if isinstance(override, tuple):
        return Tolerance(*override)
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])



# The hints every exercise may show (exercise-specific ones live with the exercises).
EPSILON_HINT = Hint(
    "epsilon", "你的结果与参考值只差一点点（误差是容差的 1 到 20 倍，像是多了一个小常数）：是否在分母、log 或 one-hot 中"
    "加了一个较大的小常数 ε（例如 1e-3、1e-4），或者用 clamp 截断了概率？本课程接受 1e-6 量级的 ε；"
    "请把它减小到 1e-6 或去掉，并按课程公式计算。", "epsilon")
NO_GRAD_HINT = Hint(
    "graph-no-grad", "评分时看到你的代码在关闭了梯度的状态下计算（torch.no_grad()、torch.set_grad_enabled(False) 或 "
    "torch.inference_mode()）：这时 PyTorch 不记录计算图，损失无法反向传播。计算损失时不要关闭梯度；"
    "torch.no_grad() 只用于评估模型或手动更新参数。", "graph:grad-disabled", "book/01_overview.html#autograd-graph")
GRAPH_CUT_HINT = Hint(
    "graph-cut", "评分时看到你的代码调用了 {cuts}：这些调用会把结果从计算图上切断（.detach()、.data、.item()、.numpy()、"
    "torch.tensor(...) 重新包装、requires_grad_(False)）或者没有有用的梯度（round、argmax 等）。"
    "请全程用 torch 的可导运算计算损失。", "graph:cut", "book/01_overview.html#autograd-graph")
VALUE_EQUAL_HINT = Hint(
    "value-equal-gradient-differs", "损失值与参考值一致，但梯度不同：你的公式在这些输入上的值与课程公式相同，"
    "对输入的导数却不同。请逐项对照课程公式的导数，找出随输入变化方式不一样的那一项。", "kind:loss")
KINK_HINT = Hint(
    "kink", "只在不可导点（残差为 0、两点重合、两个框完全相同等）上不对：在这些点上任何介于左右导数之间的次梯度都可以"
    "（例如 |r| 在 0 处可取 [−1, 1] 中的任意值：torch.sign 取 0，torch.where 取 ±1），但不能超出这个范围。",
    "kink", "book/02_regression.html#mae")


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- exceptions
# The exceptions a student's code raises in these exercises, explained in Chinese: (kind,
# pattern of the message, exception types or None for any, explanation, hint, book section).
# The original message is kept below the explanation, with PyTorch's internal paths cut.
_EXCEPTIONS = [
    ("super-init", r"_parameters|before Module\.__init__\(\) call|Module\.__init__\(\) has not been called", None,
     "在 nn.Module 的子类里给属性赋值之前没有初始化父类",
     "nn.Module 的子类必须在 __init__ 的第一行调用 super().__init__()。", "book/06_code.html#focal-loss"),
    ("view", r"view size is not compatible with input tensor's size and stride", None,
     "对内存不连续的张量（例如转置、permute、movedim 之后）调用了 .view()",
     "输入张量不连续时 .view() 会失败：请改用 .reshape()。", "book/04_other.html#reshape-view"),
    ("inplace-leaf", r"leaf Variable that requires grad is being used in an in-place operation", None,
     "原地修改了需要梯度的输入（或它的一个视图）：PyTorch 不允许这样做，因为反向传播需要原来的值",
     "不要原地修改需要梯度的输入（如 pred -= target、x[i] = …、x.clamp_(…)）：先 .clone() 再修改，或用非原地运算。",
     "book/01_overview.html#autograd-inplace"),
    ("inplace-version", r"modified by an inplace operation", None,
     "反向传播需要的某个中间结果被原地运算改掉了（例如 y = x.exp(); y += 1 之后再对 exp 求导）",
     "不要原地修改计算图中还要用到的张量：把 a += b、a.clamp_()、a[i] = … 改成 a = a + b、a = a.clamp(…) 这样的非原地写法。",
     "book/01_overview.html#autograd-inplace"),
    ("numpy-grad", r"Can't call numpy\(\) on Tensor that requires grad", None,
     "对需要梯度的张量调用了 .numpy()：NumPy 数组不在计算图中",
     "损失要全程用 torch 运算计算；转到 NumPy 会切断计算图，梯度无法回传（只在画图、打印时才用 .detach().cpu().numpy()）。",
     "book/01_overview.html#autograd-graph"),
    ("device", r"Expected all tensors to be on the same device|should be either on cpu or on the same device|"
               r"Expected object of device type|on different devices|is not on the expected device", None,
     "参与同一次运算的张量不在同一个设备上（例如一个在 cuda:0，一个在 cpu）",
     "所有张量必须在同一设备上：新建的张量请用 device=x.device（或 torch.zeros_like 等 *_like 函数），"
     "已有的张量调用 .to(x.device)；nn.Module 里的固定张量请注册为 buffer。", "book/06_code.html#gpu"),
    ("index", r"one_hot is only applicable to index tensor|Expected dtype int(32/int)?64 for index|"
              r"tensors used as indices must be long|out of bounds for dimension|Index tensor must have the same number|"
              r"only integer tensors of a single element can be converted to an index|index \d+ is out of bounds", None,
     "类别下标用错了：下标必须是 int64（Long）的类别编号，而且要小于类别数",
     "目标 target 是形状 (N, *) 的 int64 类别下标：用 logits.gather(1, target.unsqueeze(1)) 取真实类别，"
     "或用 F.one_hot(target, C) 变成 one-hot（再 .to(logits.dtype)）；不要把 one-hot 或浮点数当作下标。",
     "book/04_other.html#reshape-view"),
    ("dtype", r"expected scalar type|Found dtype|must have the same dtype|can't be cast to the desired output type|"
              r"expected m1 and m2 to have the same dtype|Expected object of scalar type|but got (Double|Float|Long|Int)|"
              r"expected (Float|Double|Long)|(?i:expected.*dtype|dtype.*expected)", None,
     "张量的数据类型不一致（例如 float32 与 float64，或浮点数与 int64 的类别下标混在一起）",
     "新建张量时用 dtype=x.dtype（或 torch.zeros_like 等 *_like 函数），不要写死 float32/float64；"
     "类别下标保持 int64，参与乘法之前把 one-hot 转成 logits 的 dtype（.to(logits.dtype)）。",
     "book/06_code.html#buffer-weightedcrossentropy"),
    ("shape", r"The size of tensor a|must match the size of tensor|shape '\[.*\]' is invalid for input of size|"
              r"mat1 and mat2 shapes cannot be multiplied|Sizes of tensors must match|size mismatch|"
              r"Target size .* must be the same as input size|doesn't match the broadcast shape|cannot be broadcast", None,
     "两个张量的形状对不上，无法逐元素运算（广播失败）：例如 (N, C) 的概率与 (N,) 的类别下标相乘",
     "逐元素运算的两个张量形状要一致（或能够广播）：类别下标先转成与 logits 同形状的 one-hot；"
     "打印 x.shape 检查每一步的形状，必要时用 unsqueeze / squeeze / reshape 对齐。", "book/04_other.html#reshape-view"),
    ("dim", r"Dimension out of range", None,
     "指定的维度超出了张量的维数（例如对一维张量用 dim=1）",
     "检查 sum / mean / softmax / gather 的 dim 参数：类别维是 dim=1，一维输入只有 dim=0（或 -1）。", None),
    ("bool", r"Boolean value of Tensor with more than one value is ambiguous", None,
     "用 Python 的 if / and / or 判断了一个含多个元素的张量",
     "不要用 if 判断整个张量：逐元素选择请用 torch.where(条件, a, b)，截断请用 torch.clamp。", "book/02_regression.html#huber"),
    ("argcount", r"positional argument|unexpected keyword argument|takes no arguments|required keyword-only argument",
     ("TypeError",),
     "函数的参数与题目给出的签名不一致（参数个数或名字不对）",
     "保持题目给出的函数签名不变（参数的个数、名字和默认值，例如 delta=1.0、smoothing=0.1）：评分器会按这些名字传参。", None),
]

# Internal paths PyTorch may put in a message: "(Triggered internally at /pytorch/aten/...)",
# C++ stack traces ("Exception raised from ... frame #0: ..."), site-packages paths.
_INTERNAL = [
    (re.compile(r"\s*Exception raised from .*", re.S), ""),
    (re.compile(r"\s*\(Triggered internally at [^)]*\)"), ""),
    (re.compile(r"\s*frame #\d+:.*", re.S), ""),
    (re.compile(r"(?:[A-Za-z]:)?[\\/][^\s'\"]*?(?:pytorch|site-packages|dist-packages|actions-runner|conda-bld)"
                r"[^\s'\"]*"), "…"),
]


def clean_message(message: str) -> str:
    """An exception's message without PyTorch's internal build paths and C++ stack."""
    text = str(message)
    for pattern, repl in _INTERNAL:
        text = pattern.sub(repl, text)
    return text.strip()


def exception_kind(error: dict, exercise=None):
    """(kind, explanation, Hint) for an exception the student's code raised, or (None, None, None)."""
    message, typename = str(error.get("message", "")), str(error.get("type", ""))
    for needle, explanation, hint in getattr(exercise, "error_hints", ()):
        if needle in message:
            return "exercise", explanation, hint
    for kind, pattern, types, explanation, hint_text, book in _EXCEPTIONS:
        if types is not None and typename not in types:
            continue
        if re.search(pattern, message):
            if book is None:
                book = getattr(exercise, "book", None)
            return kind, explanation, Hint(f"exception-{kind}", hint_text, "exception", book)
    return None, None, None


def describe_error(error: dict, exercise=None) -> tuple:
    """(the Chinese message, the Hint) for an exception raised by student code: an explanation
    of the common ones, then the original message (escaped: it quotes the student's own message
    and source line), internal paths cut."""
    kind, explanation, hint = exception_kind(error, exercise)
    original = clean_message(error.get("message", ""))
    text = f"{error.get('type', '')}: {original}".strip()
    if len(text) > 400:
        text = text[:400] + " …"
    text = html.escape(text, quote=False)
    line, source = error.get("line"), html.escape(str(error.get("source") or ""), quote=False)
    where = f"（第 {line} 行：<code>{source}</code>）" if line and source else (f"（第 {line} 行）" if line else "")
    if explanation:
        return f"你的代码抛出了异常{where}：{explanation}。<br>原始错误信息：<code>{text}</code>", hint
    return f"你的代码抛出了异常{where}：<code>{text}</code>", hint


def check_call(record: dict, exercise) -> None:
    """Raise the CaseFailure a call of student code deserves (see runtime.call)."""
    status = record.get("status")
    if status == "ok":
        return
    if status == "budget":
        raise CaseFailure("timeout", "时间已用尽，此用例未运行。")
    if status == "timeout":
        raise CaseFailure("timeout", f"运行超时：本练习的时间限制为 {exercise.time_limit:g} 秒，"
                          "你的代码可能陷入了死循环或过慢。",
                          Hint("timeout", "检查循环的终止条件；尽量使用向量化的张量运算而不是 Python 循环。", "call"))
    error = record.get("error") or {}
    if status == "exit":
        raise CaseFailure("error", f"你的代码调用了 {html.escape(str(error.get('message', 'exit')))}() 试图结束程序。",
                          Hint("exit", "函数应当返回结果，而不是退出解释器。", "call"))
    if status == "notimpl":
        raise CaseFailure("notimpl", "尚未实现：函数抛出了 NotImplementedError。",
                          Hint("notimpl", "删除 raise NotImplementedError() 并写出你的实现。", "call"))
    if status == "reference":
        raise CaseFailure("forbidden", f"不允许调用 lossgrader 的参考实现（{html.escape(str(error.get('message', '')))}）：请自己实现。")
    if status == "raised":
        message, hint = describe_error(error, exercise)
        raise CaseFailure("error", message, hint)
    raise CaseFailure("error", "评分器无法读取你的代码的运行结果。")


FORBIDDEN_HINT = Hint("forbidden", "只用基本的张量运算（加减乘除、exp、log、sum、mean 等）实现公式。", "call")


def check_forbidden(calls, rules) -> None:
    """Raise the "forbidden" failure for the first reported call a rule matches (by name and,
    for a conditional rule, by its argument bound by name or position)."""
    for entry in calls or ():
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            continue
        name, arguments = entry
        for rule in rules:
            if rule.matches(name, arguments):
                seen = html.escape(str(name))
                if rule.arg is not None and isinstance(arguments, dict):
                    seen += f"，{html.escape(rule.arg)}={html.escape(repr(arguments.get(rule.arg)))}"
                observed = f"（评分时观察到：<code>{seen}</code>）"
                if rule.message:
                    raise CaseFailure("forbidden", rule.message + observed)
                raise CaseFailure("forbidden", f"本练习要求你自己实现，不允许调用 <code>{rule.name}</code>{observed}。",
                                  FORBIDDEN_HINT)


# ----------------------------------------------------------------------------- observation gaps
# What the runtime could not watch (lossgrader.guards.GAPS): the verdict cannot rest on its
# spies alone, so the test cell goes to a person (English: the instructor reads it).
GAP_REASONS = {
    GAP_THREAD: "a thread that the grader's spies do not follow (not started through `threading` while "
                "grading, or a C-level thread running Python) was alive while the function was checked",
    GAP_FORK: "the function started a process while it was checked (what ran there was not observed)",
    GAP_CHILD: "a process started by the hand-in was alive while the function was checked",
}
GAP_ZH = {GAP_THREAD: "评分时有评分器无法跟踪的线程在运行", GAP_FORK: "评分时你的代码启动了子进程",
          GAP_CHILD: "评分时有你的代码启动的子进程在运行"}


def observation_gaps(responses, limit: int = 10_000) -> list:
    """The GAP_* signals anywhere in the runtime's responses (every case, every module run),
    in a fixed order; a bounded walk over plain data."""
    found, stack, steps = set(), [responses], 0
    while stack and steps < limit:
        steps += 1
        node = stack.pop()
        if isinstance(node, dict):
            calls = node.get("calls")
            if isinstance(calls, list):
                found.update(c[0] for c in calls if isinstance(c, (list, tuple)) and c and c[0] in GAPS)
            stack.extend(v for k, v in node.items() if k in ("runs",) and isinstance(v, list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return [g for g in GAPS if g in found]


def review_note(reasons_zh, auto_score: float, points: float) -> str:
    """The Chinese note a flagged test cell's feedback starts with (HTML): why a person
    grades it, and the automatic score that person confirms or changes."""
    items = "".join(f"<li>{r}</li>" for r in reasons_zh)
    return ("<div class=\"lossgrader-review\"><p><b>本单元等待老师人工复核。</b>"
            "评分器无法仅凭自动检查确定你的代码没有绕过本练习的规则，原因如下：</p>"
            f"<ul>{items}</ul>"
            f"<p>自动评分为 <b>{auto_score:g} / {points:g}</b> 分（见下方的详细结果）。"
            "老师确认之前，本单元暂记 0 分；确认后以老师给出的分数为准。</p></div>")


# ----------------------------------------------------------------------------- values
class Mismatch(str):
    """compare()'s description of a difference: a Chinese sentence (a str, so it can be
    put in a message as is) that also carries what the diagnosis needs."""
    ratio: float = float("inf")     # largest error / allowed error over the failing elements
    bad = None                      # bool mask of the failing elements
    got = None                      # float64 CPU copies
    expected = None

    @property
    def near(self) -> bool:
        return self.ratio <= NEAR_FACTOR


def _unravel(flat: int, shape) -> tuple:
    """torch.unravel_index without its first-use import of sympy (about a second)."""
    idx = []
    for size in reversed(tuple(shape)):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def _digits(a: float, b: float) -> int:
    """Significant digits that show a and b as different numbers (6 at least, 17 at most)."""
    for n in range(6, 18):
        if f"{a:.{n}g}" != f"{b:.{n}g}":
            return n
    return 17


def compare(got: torch.Tensor, expected: torch.Tensor, dtype, tol=None, subgrad=None, precise=None):
    """None when close enough, otherwise a Mismatch: the Chinese description of the
    difference. NaN and Inf never count as close.

    ``precise``: the same reference evaluated in higher precision (a tensor, or a callable
    returning one or None, asked only when the table's bar is not met): an element also passes
    when |got − precise| <= REFERENCE_ERROR_FACTOR·|expected − precise| (the reference's own
    error, times the factor), whichever bar is looser."""
    t = tolerance_for(dtype, tol)
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if g.shape != e.shape:
        return Mismatch(f"形状不对：应为 {tuple(e.shape)}，你的结果是 {tuple(g.shape)}")
    e_abs = e.abs()
    top = float(e_abs.max()) if e.numel() else 0.0
    scale = max(1.0, top) if e.dim() == 0 else (top if top > 0 else 1.0)
    diff = (g - e).abs()
    allowed = t.atol * scale + t.rtol * e_abs
    ok = diff <= allowed          # False wherever g is NaN or Inf
    if subgrad is not None:
        slack = t.atol * scale
        in_range = (g >= subgrad.lo - slack - t.rtol * subgrad.lo.abs()) & (g <= subgrad.hi + slack + t.rtol * subgrad.hi.abs())
        ok = torch.where(subgrad.mask, in_range, ok)
    if bool(ok.all()):
        return None
    p = precise() if callable(precise) else precise
    if isinstance(p, torch.Tensor) and p.shape == e.shape:
        p = p.detach().to("cpu", torch.float64)
        own = REFERENCE_ERROR_FACTOR * (e - p).abs()      # the reference's own error, times the factor
        ok = ok | ((g - p).abs() <= own)
        if bool(ok.all()):
            return None
        allowed = torch.maximum(allowed, own)
    bad = ~ok
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    ratio_all = torch.where(bad, diff / allowed.clamp(min=1e-300), torch.full_like(diff, -1.0))
    if subgrad is not None:   # outside the subgradient range: measured against the range, as "far"
        ratio_all = torch.where(subgrad.mask & bad, torch.full_like(diff, float("inf")), ratio_all)
    flat = int(torch.argmax(torch.where(bad, diff, torch.full_like(diff, -1.0))))
    idx = _unravel(flat, g.shape) if g.dim() else ()
    gv, ev = float(g.reshape(-1)[flat]), float(e.reshape(-1)[flat])
    rel = abs(gv - ev) / max(abs(ev), 1e-12)
    ratio = float(ratio_all.max())
    where = f"，位置 {idx}" if idx else ""
    count = f"（{int(bad.sum())}/{bad.numel()} 个元素不符）" if g.numel() > 1 else ""
    if ratio <= NEAR_FACTOR:
        n = _digits(ev, gv)
        text = (f"非常接近但超出了容差：期望 {ev:.{n}g}，得到 {gv:.{n}g}{where}；相对误差 {rel:.2g}，"
                f"是允许误差的 {ratio:.3g} 倍（{dtype_name(dtype)} 的容差：相对 {t.rtol:g}）{count}")
    else:
        n = _digits(ev, gv)
        text = (f"期望 {ev:.{n}g}，得到 {gv:.{n}g}{where}；最大绝对误差 {float(diff.max()):.3g}，"
                f"相对误差 {rel:.3g}{count}")
    m = Mismatch(text)
    m.ratio, m.bad, m.got, m.expected = ratio, bad, g, e
    return m


# ----------------------------------------------------------------------------- gradients
# A constant factor is diagnosed only across cases: on one case with a few elements every error
# can look like a factor (two classes: the gradient row is (a, −a)). Each case measures its
# factor (``measure_factor``); the hint is shown only when every failing case whose gradient was
# compared measured one, with the same meaning, on at least two cases, and it is not 1.
FACTOR_HINTS = {
    "sign": ("梯度的符号反了（正好是参考梯度的 −1 倍）", "检查公式中减法的顺序（ŷ − y 还是 y − ŷ）和前面的负号。", None),
    "numel": ("梯度正好是参考梯度的 {n} 倍（= 元素个数 n）", "你可能用了求和（sum）而不是平均（mean），或者梯度里缺少 1/n。",
              "book/appendix_errata.html#mse-1-n"),
    "rows": ("梯度正好是参考梯度的 {n} 倍（= 样本数 N）", "你可能用了求和（sum）而不是平均（mean），或者梯度里缺少 1/N。",
             "book/appendix_errata.html#mse-1-n"),
    "inv-numel": ("梯度正好是参考梯度的 1/{n}（元素个数 n）", "你多除了一次元素个数 n：平均只需要除一次。",
                  "book/appendix_errata.html#mse-1-n"),
    "inv-rows": ("梯度正好是参考梯度的 1/{n}（样本数 N）", "你多除了一次样本数 N：平均只需要除一次。",
                 "book/appendix_errata.html#mse-1-n"),
    "two": ("梯度正好是参考梯度的 2 倍", "检查系数 2 与 1/2：例如 (ŷ − y)² 的导数是 2(ŷ − y)，0.5·r² 的导数是 r。", None),
    "half": ("梯度正好是参考梯度的 1/2", "检查系数 2 与 1/2：是否多乘了 0.5 或少乘了 2？", None),
    "const": ("梯度在每个用例上都是参考梯度的 {c:.4g} 倍（相差同一个常数因子）",
              "检查公式中的常数系数：每个用例都差同一个倍数，说明公式的结构对了，只是某个常数乘错了。", None),
}
FACTOR_HINTS_NO_GRAPH = {   # numerical_grad: a difference quotient, not a formula's gradient
    "sign": ("结果的符号反了（正好是参考值的 −1 倍）", "检查差分的顺序：f(x + ε) − f(x − ε)，而不是反过来。", None),
}


def _near(c, x):
    return abs(c - x) <= 1e-3 * max(abs(x), 1.0)


UNMEASURED = ("unmeasured", float("nan"))     # fewer than two elements that matter: no evidence either way


def measure_factor(mismatch, shape, dtype=torch.float64) -> Optional[tuple]:
    """(label, c) when the wrong tensor is c × the expected one on every element that matters
    (at least two of them) and c is not 1; label names c's meaning: "sign", "numel", "rows",
    "inv-numel", "inv-rows", "two", "half" or "const". UNMEASURED for a case with fewer than
    two elements that matter (one element: every error is a factor), None otherwise."""
    if not isinstance(mismatch, Mismatch) or mismatch.got is None:
        return None
    g, e = mismatch.got, mismatch.expected
    if not bool(torch.isfinite(g).all()):
        return None
    top = float(e.abs().max()) if e.numel() else 0.0
    if top == 0:
        return None
    big = e.abs() > 1e-3 * top
    if int(big.sum()) < 2:
        return UNMEASURED
    r = g[big] / e[big]
    c = float(r.median())
    spread = 1e-3 if dtype == torch.float64 else 1e-2      # float32 rounding of the student's result
    if c == 0 or _near(c, 1.0) or not bool(((r - c).abs() <= spread * abs(c)).all()):
        return None
    if not bool((g[~big].abs() <= 1e-3 * top * max(abs(c), 1)).all()):
        return None
    numel = math.prod(int(s) for s in shape)
    rows = int(shape[0]) if len(shape) else 1
    if _near(c, -1.0):
        return "sign", c
    for count, label in ((numel, "numel"), (rows, "rows")):
        if count > 2 and _near(c, float(count)):
            return label, c
        if count > 2 and _near(c, 1.0 / count):
            return "inv-" + label, c
    if _near(c, 2.0):
        return "two", c
    if _near(c, 0.5):
        return "half", c
    return "const", c


def factor_hint(label: str, c: float, shape, exercise=None) -> tuple:
    """(cause sentence, Hint) of a factor diagnosed across cases."""
    table = FACTOR_HINTS_NO_GRAPH if getattr(exercise, "graph", True) is False else {}
    sentence, text, book = table.get(label) or FACTOR_HINTS[label]
    n = int(shape[0]) if label in ("rows", "inv-rows") else math.prod(int(s) for s in shape)
    book = book or getattr(exercise, "book", None)
    return sentence.format(n=n, c=c), Hint(f"factor-{label}", text, "factor", book)


def graph_hint(response: dict) -> Optional[Hint]:
    """The hint the runtime's observation of a result without a graph supports: autograd was
    off (torch.no_grad), or cutting calls ran; None when it saw neither."""
    seen = response.get("graph") if isinstance(response, dict) else None
    if not isinstance(seen, dict):
        return None
    if seen.get("grad_disabled") is True:
        return NO_GRAD_HINT
    cuts = [str(c) for c in seen.get("cuts") or () if isinstance(c, str)][:MAX_CUTS]
    if cuts:
        names = "、".join(f".{c}()" if c not in ("data", "tensor", "from_numpy") else
                         {"data": ".data", "tensor": "torch.tensor(...)", "from_numpy": "torch.from_numpy(...)"}[c]
                         for c in cuts)
        return dataclasses.replace(GRAPH_CUT_HINT, text=GRAPH_CUT_HINT.text.format(cuts=names))
    return None


def check_tensor_result(out: dict, like_shape, dtype, device, what="返回值", exercise=None) -> torch.Tensor:
    """The returned tensor's value (CPU) when ``out`` describes a tensor of the expected
    shape, dtype and device; raises the failure otherwise."""
    kind = out.get("type")
    if kind == "unreadable":
        raise CaseFailure("fail", f"{what}（{html.escape(str(out.get('typename', '?')))}）无法读取："
                          f"{html.escape(str(out.get('message', '')), quote=False)}",
                          Hint("result-unreadable", "返回输入所在设备上的普通 torch.Tensor：不要返回 meta 张量、稀疏张量或"
                               "自定义的张量子类。", "result"))
    if kind == "none":
        raise CaseFailure("notimpl", f"尚未实现：{what}是 None（函数没有 return，或函数体只有 ... / pass）。",
                          Hint("result-none", "记得用 return 返回结果。", "result"))
    if kind != "tensor":
        hint = None
        graph = getattr(exercise, "graph", True) and getattr(exercise, "kind", "loss") in ("loss", "module")
        if kind == "number":
            hint = Hint("result-number", "不要用 .item() 或 float() 把结果变成 Python 数：那样会切断计算图，梯度无法回传。"
                        if graph else "返回 torch.Tensor，而不是 Python 数：用 torch.zeros_like(x) 等创建结果张量。",
                        "result", "book/01_overview.html#autograd-graph" if graph else None)
        elif kind == "numpy":
            hint = Hint("result-numpy", "不要在 NumPy 中计算：转换到 NumPy 再转回来会切断计算图。请全程使用 torch 运算。"
                        if graph else "返回 torch.Tensor，而不是 NumPy 数组：请全程使用 torch 运算。",
                        "result", "book/01_overview.html#autograd-graph" if graph else None)
        typename = html.escape(str(out.get("typename", "?")))
        raise CaseFailure("fail", f"{what}的类型是 {typename}，应为 torch.Tensor。", hint)
    value = out.get("value")
    if not isinstance(value, torch.Tensor):
        raise CaseFailure("error", "评分器无法读取你的代码的运行结果。")
    shape = tuple(out.get("shape", ()))
    if shape != tuple(like_shape) or tuple(value.shape) != shape:
        expect = "标量（0 维张量，形状 ()）" if len(like_shape) == 0 else f"形状 {tuple(like_shape)}"
        hint = None
        if len(like_shape) == 0:
            hint = Hint("result-scalar", "对逐元素损失取平均（.mean()）得到 0 维张量；不要 keepdim=True，也不要 .view(1) / "
                        ".reshape(1)。", "result", getattr(exercise, "book", None))
        raise CaseFailure("fail", f"{what}的形状是 {shape}，应为{expect}。", hint)
    if out.get("dtype") != dtype_name(dtype) or value.dtype != dtype:
        raise CaseFailure("fail", f"{what}的数据类型是 {html.escape(str(out.get('dtype')))}，应与输入相同：{dtype_name(dtype)}。",
                          Hint("result-dtype", "新建张量时使用 dtype=输入.dtype（或 torch.zeros_like 等），不要写死 "
                               "float32/float64。", "result", "book/06_code.html#buffer-weightedcrossentropy"))
    if out.get("device") != device_name(device):
        raise CaseFailure("fail", f"{what}在设备 {html.escape(str(out.get('device')))} 上，应与输入相同：{device}。",
                          Hint("result-device", "不要调用 .cpu() / .cuda()；新建张量时使用 device=输入.device。", "result",
                               "book/06_code.html#gpu"))
    return value


MUTATED_HINT = Hint("mutated", "损失函数不应改变它的输入：使用非原地运算（a = a - b，而不是 a -= b），或先 .clone()。",
                    "mutated", "book/01_overview.html#autograd-inplace")


def check_unchanged(mutated) -> None:
    for i in mutated or ():
        raise CaseFailure("fail", f"你的代码原地修改了第 {int(i) + 1} 个输入张量。", MUTATED_HINT)


def nonfinite_failure(case, what="返回值", calls=(), exercise=None) -> CaseFailure:
    classes = any(isinstance(a, torch.Tensor) and a.dtype == torch.int64 for a in case.args)
    if "prob01" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：概率恰为 0 或 1 时 log(0) = −∞，而 0·(−∞) = NaN。",
                           Hint("nonfinite-prob01", "像 PyTorch 一样把每个 log 截断在 −100：torch.clamp(torch.log(p), "
                                "min=-100)，对 log(1 − p) 也一样。", "nonfinite", "book/03_classification.html#bce"))
    subtracted_max = any(("max" in str(c[0]).rsplit(".", 1)[-1] and "softmax" not in str(c[0])) for c in calls or ()
                         if isinstance(c, (list, tuple)) and c)
    stable = "book/03_classification.html#log-softmax" if classes else "book/03_classification.html#logits-bce"
    if "large" in case.tags and subtracted_max:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：数值不稳定（本用例的 logits 很大）。",
                           Hint("nonfinite-log-of-softmax", "你已经减去了最大值，但之后先算 softmax 再取 log：其他类别的概率"
                                "下溢为 0，log(0) = −∞。请直接在对数空间计算 log_softmax(x) = (x − max) − log Σ exp(x − max)，"
                                "不要写 log(softmax(x))。", "nonfinite", stable))
    if "large" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：数值不稳定（本用例的输入数值很大或概率接近 0/1）。",
                           Hint("nonfinite-large", "对大 logits 直接求 exp 会溢出：使用 log-sum-exp 技巧（先减去最大值），"
                                "或 log1p(exp(-|x|)) 这样的稳定形式；也不要先算 softmax / sigmoid 再取 log（概率会下溢为 0），"
                                "直接在对数空间计算。", "nonfinite", stable))
    if "edge" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf（本用例处于不可导点，例如两点重合、残差为 0）。",
                           Hint("nonfinite-kink", "在不可导点应返回一个有效的次梯度，而不是 NaN：例如距离用 "
                                "torch.linalg.vector_norm / .norm()，不要手写 sqrt(平方和)（sqrt 在 0 处导数无穷大）；"
                                "|r| 用 .abs()，不要写 r / |r|。", "nonfinite", getattr(exercise, "book", None)))
    return CaseFailure("fail", f"{what}含有 NaN 或 Inf。",
                       Hint("nonfinite", "检查除以 0、log(0)、sqrt 在 0 处等情况。", "nonfinite"))


def gradient_failure(mismatch, case, shape, prefix, what, exercise, response=None, kind="loss",
                     subgrad=None) -> CaseFailure:
    """The failure for a wrong gradient: the neutral message (expected, got, where), a cause
    this case measures by itself (NaN at a point, all zeros, only at the case's kinks), and the
    evidence (a factor, a near miss) the diagnosis across cases decides on."""
    head = f"{prefix}损失值正确，但{what}不对：" if kind == "loss" else f"{prefix}{what}不对："
    g = mismatch.got if isinstance(mismatch, Mismatch) else None
    if g is not None and not bool(torch.isfinite(g).all()):
        finite = torch.isfinite(g)
        flat = int(torch.nonzero(~finite.reshape(-1))[0])
        idx = _unravel(flat, g.shape) if g.dim() else ()
        where = f"在位置 {idx}" if idx else ""
        failure = nonfinite_failure(case, what, exercise=exercise)
        return CaseFailure("fail", f"{prefix}{what}含有 NaN 或 Inf：{what}{where}为 {float(g.reshape(-1)[flat])}"
                           f"（共 {int((~finite).sum())} 个元素不是有限数）。", failure.hint)
    if g is not None and bool((g == 0).all()) and bool((mismatch.expected != 0).any()):
        if kind == "loss":
            return CaseFailure("fail", f"{head}{what}全为 0：梯度没有流过你的计算。{mismatch}", graph_hint(response))
        return CaseFailure("fail", f"{head}你返回的{what}全为 0。{mismatch}")
    if (isinstance(mismatch, Mismatch) and subgrad is not None and mismatch.bad is not None
            and subgrad.mask.shape == mismatch.bad.shape and not bool((mismatch.bad & ~subgrad.mask).any())):
        n_bad, n = int(mismatch.bad.sum()), mismatch.bad.numel()
        return CaseFailure("fail", f"{head}只在不可导点上不对（{n_bad}/{n} 个元素）。{mismatch}", KINK_HINT)
    evidence = {"gradient": True, "near": bool(getattr(mismatch, "near", False)),
                "factor": measure_factor(mismatch, shape, case.float_dtype()), "shape": tuple(shape), "head": head,
                "tail": str(mismatch)}
    hint = VALUE_EQUAL_HINT if kind == "loss" and not evidence["near"] else None
    return CaseFailure("fail", f"{head}{mismatch}", hint, evidence)


# ----------------------------------------------------------------------------- cases
def judge_cases(exercise, cases, expectations, responses, device) -> list:
    # the judge's tensors are tiny: one thread (on a busy machine a parallel region costs
    # tens of milliseconds per operation, and the diagnosis runs hundreds of them)
    with single_thread():
        return _judge_cases(exercise, cases, expectations, responses, device)


def _judge_cases(exercise, cases, expectations, responses, device) -> list:
    """CaseResults for the runtime's responses, in case order. After a case that was not
    implemented, timed out or used a forbidden built-in, the rest are reported skipped.
    Then the diagnosis across cases (``diagnose``): a typical mistake the student's values
    match, a constant factor, an ε-sized offset; a hint whose premise nothing measured is
    not shown."""
    results = []
    evidence = {}
    stop = None
    group_of = getattr(exercise, "group_of", lambda case: None)
    for k, (case, expected) in enumerate(zip(cases, expectations)):
        group = group_of(case)
        if stop is not None:
            results.append(CaseResult(case.name, case.describe_inputs(), "skipped", stop, group=group))
            continue
        response = responses[k] if k < len(responses) and isinstance(responses[k], dict) else None
        try:
            if response is None:
                raise CaseFailure("error", "评分器没有收到这个用例的运行结果（你的代码可能让评分进程退出了）。")
            exercise.judge(case, expected, response, device)
            results.append(CaseResult(case.name, case.describe_inputs(), "pass", group=group))
        except CaseFailure as failure:
            result = CaseResult(case.name, case.describe_inputs(), failure.status, failure.message, group=group)
            result.set_hint(failure.hint)
            results.append(result)
            evidence[k] = failure.evidence
            if failure.status == "notimpl":
                stop = "尚未实现。"
            elif failure.status == "timeout":
                stop = "前一个用例超时，剩余用例未运行。"
            elif failure.status == "forbidden":
                stop = "使用了不允许的内置实现。"
        except Exception:  # a malformed response (forged or truncated): that case fails, nothing else
            results.append(CaseResult(case.name, case.describe_inputs(), "error",
                                      "评分器无法读取你的代码的运行结果。", group=group))
    try:
        diagnose(exercise, cases, expectations, responses, results, evidence)
    except Exception:   # a diagnosis never costs the student a verdict
        pass
    return results


def diagnose(exercise, cases, expectations, responses, results, evidence) -> None:
    """Hints across cases, in order: (1) the typical mistake the student's values match on
    every case where it differs from the reference; (2) a constant factor measured, with the
    same meaning, on every failing case whose gradient was compared (at least two), not 1;
    (3) an ε-sized offset, where the exercise has a place for a stabilising constant."""
    failing = [k for k, r in enumerate(results) if r.status == "fail"]
    unexplained = [k for k in failing if results[k].hint is None or results[k].hint_key == VALUE_EQUAL_HINT.key]
    if unexplained:
        for k, hint in exercise.diagnose_all(cases, expectations, responses, unexplained).items():
            results[k].set_hint(hint)
    compared = [k for k in failing if evidence.get(k, {}).get("gradient")
                and evidence[k].get("factor") != UNMEASURED]
    factors = [evidence[k].get("factor") for k in compared]
    if len(compared) >= 2 and all(factors):
        labels = {label for label, _ in factors}
        consts = [c for label, c in factors]
        same = len(labels) == 1 and (labels != {"const"} or max(consts) - min(consts) <= 1e-3 * max(abs(c) for c in consts))
        if same:
            for k, (label, c) in zip(compared, factors):
                sentence, hint = factor_hint(label, c, evidence[k]["shape"], exercise)
                results[k].message = f"{evidence[k]['head']}{sentence}。{evidence[k]['tail']}"
                if not (results[k].hint_key or "").startswith(("mistake", "variant")):
                    results[k].set_hint(hint)     # a typical mistake the values match says more
    near_hint = getattr(exercise, "epsilon_hint", None)
    for k in failing:
        if near_hint is not None and evidence.get(k, {}).get("near") and (
                results[k].hint is None or results[k].hint_key == VALUE_EQUAL_HINT.key):
            results[k].set_hint(near_hint)
