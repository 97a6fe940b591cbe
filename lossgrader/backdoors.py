"""Back doors in a hand-in's code, found by reading it (trusted side, before it runs).

The runtime's spies see every forbidden built-in an honest program calls, but they run
in the student's process, where code can switch them off. Switching them off, reaching a
built-in around them, walking frames or patching the grader all need introspection or
private interfaces that a loss function never needs. Finding one in any answer cell
makes every test of the notebook fail with the reason, whatever the process reported.

The list is about what honest answers never write; ``model.eval()``, ``gc.collect()`` or
``getattr(self, "weight")`` stay allowed.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

# attribute or name -> why it is refused (Chinese, shown to the student)
PRIVATE_TORCH = "PyTorch 的内部接口"
INTROSPECTION = "解释器的内省接口（栈帧、对象表、内置命名空间）"
GRADER = "评分器本身"
DYNAMIC = "动态执行代码"
SYSTEM = "进程与文件系统接口"

ATTRIBUTES = {
    "_C": PRIVATE_TORCH, "ops": PRIVATE_TORCH, "_python_dispatch": PRIVATE_TORCH,
    "DisableTorchFunction": PRIVATE_TORCH, "DisableTorchFunctionSubclass": PRIVATE_TORCH,
    "_disable_current_modes": PRIVATE_TORCH, "_DisableTorchDispatch": PRIVATE_TORCH,
    "TorchFunctionMode": PRIVATE_TORCH, "TorchDispatchMode": PRIVATE_TORCH, "overrides": PRIVATE_TORCH,
    "library": PRIVATE_TORCH, "_decomp": PRIVATE_TORCH, "_refs": PRIVATE_TORCH, "_prims": PRIVATE_TORCH,
    "_getframe": INTROSPECTION, "f_back": INTROSPECTION, "f_locals": INTROSPECTION, "f_globals": INTROSPECTION,
    "tb_frame": INTROSPECTION, "gi_frame": INTROSPECTION, "cr_frame": INTROSPECTION,
    "get_objects": INTROSPECTION, "get_referrers": INTROSPECTION, "get_referents": INTROSPECTION,
    "__globals__": INTROSPECTION, "__closure__": INTROSPECTION, "__code__": INTROSPECTION,
    "__wrapped__": INTROSPECTION, "__wrapped_reference__": INTROSPECTION, "__subclasses__": INTROSPECTION,
    "__builtins__": INTROSPECTION, "__dict__": INTROSPECTION, "__mro__": INTROSPECTION, "__bases__": INTROSPECTION,
    "modules": INTROSPECTION, "meta_path": INTROSPECTION, "path_hooks": INTROSPECTION,
    "displayhook": INTROSPECTION, "excepthook": INTROSPECTION, "display_formatter": INTROSPECTION,
    "ast_node_interactivity": INTROSPECTION, "settrace": INTROSPECTION, "setprofile": INTROSPECTION,
    "system": SYSTEM, "popen": SYSTEM, "fork": SYSTEM, "forkpty": SYSTEM, "kill": SYSTEM, "setsid": SYSTEM,
    "execv": SYSTEM, "execve": SYSTEM, "spawnv": SYSTEM,
}
NAMES = {
    "__import__": DYNAMIC, "exec": DYNAMIC, "eval": DYNAMIC, "compile": DYNAMIC,
    "globals": INTROSPECTION, "vars": INTROSPECTION, "locals": INTROSPECTION,
    "__builtins__": INTROSPECTION, "get_ipython": INTROSPECTION,
}
# components of a dotted path written as a string that only a back door spells out
STRING_PARTS = {name: why for name, why in ATTRIBUTES.items()
                if name.startswith("_") or name in ("DisableTorchFunction", "DisableTorchFunctionSubclass",
                                                     "get_objects", "get_referrers", "get_referents",
                                                     "f_back", "f_locals", "f_globals", "tb_frame")}
STRING_PARTS["aten"] = PRIVATE_TORCH
# `from lossgrader import check` (as the setup cell does) is fine; anything else of the grader is not
GRADER_PUBLIC = {"check"}
MODULES = {
    "inspect": INTROSPECTION, "ctypes": INTROSPECTION, "importlib": INTROSPECTION,
    "builtins": INTROSPECTION, "gc": None, "sys": None, "os": None,
    "IPython": INTROSPECTION, "IPython.display": None,   # display() is a student's ordinary tool
    "subprocess": SYSTEM, "socket": SYSTEM, "multiprocessing": SYSTEM, "threading": SYSTEM,
    "signal": SYSTEM, "shutil": SYSTEM, "sqlite3": SYSTEM, "pty": SYSTEM, "urllib": SYSTEM, "http": SYSTEM,
    "requests": SYSTEM, "pickle": SYSTEM, "marshal": SYSTEM,
    "dis": INTROSPECTION, "code": DYNAMIC, "codeop": DYNAMIC, "runpy": DYNAMIC,
    "torch._C": PRIVATE_TORCH, "torch.ops": PRIVATE_TORCH, "torch.library": PRIVATE_TORCH,
    "torch.overrides": PRIVATE_TORCH, "torch.utils._python_dispatch": PRIVATE_TORCH,
}


@dataclass(frozen=True)
class Finding:
    cell: int          # index of the code cell among the notebook's cells
    line: int
    what: str          # the construct, as written
    why: str           # Chinese category

    def message(self) -> str:
        return f"第 {self.cell + 1} 个单元第 {self.line} 行的 <code>{self.what}</code>（{self.why}）"


def _module_reason(name: str):
    if name == "lossgrader.check":
        return None
    if name.startswith("lossgrader."):
        return GRADER
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in MODULES:      # the longest listed prefix decides (None: allowed)
            return MODULES[prefix]
    return None


def scan_source(source: str, cell: int) -> list:
    """Findings in one cell's source; code that does not parse has none (it fails when it runs)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    findings = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr in ATTRIBUTES:
            findings.append(Finding(cell, line, "." + node.attr, ATTRIBUTES[node.attr]))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "lossgrader" and node.attr not in GRADER_PUBLIC:
            findings.append(Finding(cell, line, f"lossgrader.{node.attr}", GRADER))
        elif isinstance(node, ast.Name) and node.id in NAMES:
            findings.append(Finding(cell, line, node.id, NAMES[node.id]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                reason = _module_reason(alias.name)
                if reason:
                    findings.append(Finding(cell, line, f"import {alias.name}", reason))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            reason = _module_reason(module)
            names = [a.name for a in node.names]
            if not reason:
                for name in names:
                    reason = _module_reason(f"{module}.{name}") or ATTRIBUTES.get(name)
                    if reason:
                        break
            if reason:
                findings.append(Finding(cell, line, f"from {module} import {', '.join(names)}", reason))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "delattr"):
            # getattr(obj, "literal") is ordinary; a computed name can reach anything
            if len(node.args) < 2 or not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                findings.append(Finding(cell, line, f"{node.func.id}(…, 非字面量名称)", DYNAMIC))
            elif node.args[1].value in ATTRIBUTES:
                findings.append(Finding(cell, line, f"{node.func.id}(…, {node.args[1].value!r})", ATTRIBUTES[node.args[1].value]))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
            # a dotted path spelled as a string (operator.attrgetter("_C._nn.mse_loss"), getattr chains)
            parts = node.value.split(".")
            hit = next((p for p in parts if p in STRING_PARTS), None)
            if hit is not None:
                findings.append(Finding(cell, line, repr(node.value), STRING_PARTS[hit]))
    return findings


def scan_notebook(nb, student_cell) -> list:
    """Findings in every code cell for which ``student_cell(cell)`` is true."""
    findings = []
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code" and student_cell(cell):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            findings += scan_source(source, i)
    return findings
