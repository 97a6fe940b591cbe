"""Back doors in a hand-in's code, found by reading it (trusted side, before it runs).

The runtime's spies see every forbidden built-in an honest program calls, but they run
in the student's process, where code can switch them off. Switching them off, reaching a
built-in around them, walking frames or patching the grader or torch all need
introspection, private interfaces or attribute writes on library objects that a loss
function never needs. Such a construct (an *attack* finding) in any answer cell makes
every test of the notebook fail with the reason, whatever the process reported.

Some constructs are not clearly an attack: ``globals()``/``locals()``/``vars()``, the
``inspect`` module (but for its frame functions), renaming a function
(``wrapper.__name__ = ...``), attribute writes through ``type(x)``/``__class__``,
TorchScript and ``torch.compile`` (whose calls no spy sees), autograd nodes called
directly. A debug wrapper over one's own functions looks like that. Such a *review*
finding does not zero anything: the test cells whose function can reach it (or every test
cell of the notebook, when the construct sits at the top level of a cell and its effect
cannot be told) are flagged for a person, with their automatic score shown
(``Scan.touching``; lossgrader.worker).

The list is about what honest answers never write; ``model.eval()``, ``gc.collect()`` or
``getattr(self, "weight")`` stay allowed.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Category:
    zh: str           # shown to the student
    en: str           # shown to the instructor
    review: bool = False    # not clearly an attack: flag for a person instead of zeroing


PRIVATE_TORCH = Category("PyTorch 的内部接口", "a private PyTorch interface")
INTROSPECTION = Category("解释器的内省接口（栈帧、对象表、内置命名空间）",
                         "interpreter introspection (frames, the object table, builtins)")
GRADER = Category("评分器本身", "the grader itself")
DYNAMIC = Category("动态执行代码", "dynamically executed code")
SYSTEM = Category("进程与文件系统接口", "process and file-system interfaces")
THREADS = Category("在其他线程或进程中运行代码（评分器看不到那里的调用）",
                   "code run on other threads or processes, where the grader's spies do not see")
PATCHING = Category("改写 PyTorch 或 Python 内置对象的属性（猴子补丁）",
                    "an attribute of torch or of the builtins written (monkeypatching)")
CHANNEL = Category("文件描述符级别的读写（评分器与内核之间的通道）",
                   "raw file-descriptor I/O (the channel between the grader and the kernel)")
# not clearly an attack: a person decides
NAMESPACE = Category("命名空间内省（globals()、locals()、vars()）",
                     "namespace introspection (globals(), locals(), vars())", True)
INSPECT = Category("inspect 模块", "the inspect module", True)
RENAMING = Category("改写函数或类的名称属性", "a function's or class's __name__/__qualname__/__module__ rewritten", True)
CLASS_WRITE = Category("通过 type(...) 或 __class__ 改写类的属性",
                       "a class attribute written through type(...) or __class__", True)
TORCHSCRIPT = Category("TorchScript / torch.compile（评分器看不到其中的调用）",
                       "TorchScript or torch.compile, whose calls the grader's spies do not see", True)
GRAPH_NODES = Category("直接调用自动求导图的节点", "autograd graph nodes called directly (grad_fn)", True)
LIBRARY_WRITE = Category("改写其他库的属性", "an attribute of another library written", True)
OPEN_COMPUTED = Category("open() 打开的不是写明的文件名（可能是文件描述符）",
                         "open() of a computed name (a descriptor number is one)", True)

ATTRIBUTES = {
    "_C": PRIVATE_TORCH, "ops": PRIVATE_TORCH, "_python_dispatch": PRIVATE_TORCH,
    "DisableTorchFunction": PRIVATE_TORCH, "DisableTorchFunctionSubclass": PRIVATE_TORCH,
    "_disable_current_modes": PRIVATE_TORCH, "_DisableTorchDispatch": PRIVATE_TORCH,
    "TorchFunctionMode": PRIVATE_TORCH, "TorchDispatchMode": PRIVATE_TORCH, "overrides": PRIVATE_TORCH,
    "library": PRIVATE_TORCH, "_decomp": PRIVATE_TORCH, "_refs": PRIVATE_TORCH, "_prims": PRIVATE_TORCH,
    "_dynamo": PRIVATE_TORCH, "_inductor": PRIVATE_TORCH, "_functorch": PRIVATE_TORCH,
    "_higher_order_ops": PRIVATE_TORCH, "_subclasses": PRIVATE_TORCH, "_execution_engine": PRIVATE_TORCH,
    "_engine_run_backward": PRIVATE_TORCH, "profiler": PRIVATE_TORCH, "_profiler": PRIVATE_TORCH,
    "_getframe": INTROSPECTION, "f_back": INTROSPECTION, "f_locals": INTROSPECTION, "f_globals": INTROSPECTION,
    "tb_frame": INTROSPECTION, "gi_frame": INTROSPECTION, "cr_frame": INTROSPECTION,
    "get_objects": INTROSPECTION, "get_referrers": INTROSPECTION, "get_referents": INTROSPECTION,
    "__globals__": INTROSPECTION, "__closure__": INTROSPECTION, "__code__": INTROSPECTION,
    "__wrapped__": INTROSPECTION, "__wrapped_reference__": INTROSPECTION, "__subclasses__": INTROSPECTION,
    "__builtins__": INTROSPECTION, "__dict__": INTROSPECTION, "__mro__": INTROSPECTION, "__bases__": INTROSPECTION,
    "__import__": DYNAMIC,
    "modules": INTROSPECTION, "meta_path": INTROSPECTION, "path_hooks": INTROSPECTION,
    "displayhook": INTROSPECTION, "excepthook": INTROSPECTION, "display_formatter": INTROSPECTION,
    "ast_node_interactivity": INTROSPECTION, "settrace": INTROSPECTION, "setprofile": INTROSPECTION,
    "system": SYSTEM, "popen": SYSTEM, "fork": SYSTEM, "forkpty": SYSTEM, "kill": SYSTEM, "setsid": SYSTEM,
    "execv": SYSTEM, "execve": SYSTEM, "execl": SYSTEM, "execle": SYSTEM, "execlp": SYSTEM, "execlpe": SYSTEM,
    "execvp": SYSTEM, "execvpe": SYSTEM, "spawnv": SYSTEM, "spawnve": SYSTEM, "spawnvp": SYSTEM,
    "spawnvpe": SYSTEM, "spawnl": SYSTEM, "spawnle": SYSTEM, "spawnlp": SYSTEM, "spawnlpe": SYSTEM,
    "posix_spawn": SYSTEM, "posix_spawnp": SYSTEM, "register_at_fork": SYSTEM,
    "multiprocessing": THREADS, "start_new_thread": THREADS,
}
GRAPH_ATTRIBUTES = ("grad_fn", "next_functions")
NAMES = {
    "__import__": DYNAMIC, "exec": DYNAMIC, "eval": DYNAMIC, "compile": DYNAMIC,
    "globals": NAMESPACE, "vars": NAMESPACE, "locals": NAMESPACE,
    "__builtins__": INTROSPECTION, "get_ipython": INTROSPECTION,
}
# components of a dotted path written as a string that only a back door spells out
STRING_PARTS = {name: why for name, why in ATTRIBUTES.items()
                if not why.review and (name.startswith("_") or name in (
                    "DisableTorchFunction", "DisableTorchFunctionSubclass", "get_objects", "get_referrers",
                    "get_referents", "f_back", "f_locals", "f_globals", "tb_frame"))}
STRING_PARTS["aten"] = PRIVATE_TORCH
STRING_PARTS["LOSSGRADER_CHANNEL_FD"] = CHANNEL
CHANNEL_PATHS = ("/proc/self/fd", "/proc/thread-self/fd", "/dev/fd")
# `from lossgrader import check` (as the setup cell does) is fine; anything else of the grader is not
GRADER_PUBLIC = {"check"}
# dotted paths (modules, and names in them); the longest listed prefix decides (None: allowed)
MODULES = {
    "inspect": INSPECT, "ctypes": INTROSPECTION, "importlib": INTROSPECTION,
    "inspect.currentframe": INTROSPECTION, "inspect.stack": INTROSPECTION, "inspect.trace": INTROSPECTION,
    "inspect.getouterframes": INTROSPECTION, "inspect.getinnerframes": INTROSPECTION,
    "inspect.getframeinfo": INTROSPECTION, "inspect.getargvalues": INTROSPECTION,
    "inspect.getclosurevars": INTROSPECTION, "inspect.getmembers": INTROSPECTION,
    "inspect.getmembers_static": INTROSPECTION, "inspect.getattr_static": INTROSPECTION,
    "inspect.unwrap": INTROSPECTION,
    "builtins": INTROSPECTION, "gc": None, "sys": None, "os": None,
    "IPython": INTROSPECTION, "IPython.display": None,   # display() is a student's ordinary tool
    "subprocess": SYSTEM, "socket": SYSTEM, "signal": SYSTEM, "shutil": SYSTEM, "sqlite3": SYSTEM, "pty": SYSTEM,
    "urllib": SYSTEM, "http": SYSTEM, "requests": SYSTEM, "pickle": SYSTEM, "marshal": SYSTEM,
    "multiprocessing": THREADS, "threading": THREADS, "_thread": THREADS, "concurrent": THREADS,
    "torch.multiprocessing": THREADS,
    "dis": INTROSPECTION, "code": DYNAMIC, "codeop": DYNAMIC, "runpy": DYNAMIC,
    "torch._C": PRIVATE_TORCH, "torch.ops": PRIVATE_TORCH, "torch.library": PRIVATE_TORCH,
    "torch.overrides": PRIVATE_TORCH, "torch.utils._python_dispatch": PRIVATE_TORCH,
    "torch.profiler": PRIVATE_TORCH, "torch.autograd.profiler": PRIVATE_TORCH,
    "torch.autograd.graph": PRIVATE_TORCH,
    "torch.utils.cpp_extension": SYSTEM, "cffi": SYSTEM,
    "torch.jit": TORCHSCRIPT, "torch.compile": TORCHSCRIPT, "torch.fx": TORCHSCRIPT, "torch.export": TORCHSCRIPT,
    # the runtime's requests and responses travel over a descriptor the kernel inherited
    **{f"os.{name}": CHANNEL for name in ("write", "writev", "pwrite", "pwritev", "sendfile", "read", "readv",
                                          "pread", "preadv", "fdopen", "dup", "dup2", "open", "pipe", "pipe2",
                                          "set_inheritable", "set_blocking", "splice", "copy_file_range")},
    "io.FileIO": CHANNEL, "io.open": CHANNEL, "_io": CHANNEL,
}
# names a cell may use without importing them (the setup cell binds them)
DEFAULT_BINDINGS = {"torch": "torch", "F": "torch.nn.functional", "nn": "torch.nn", "lossgrader": "lossgrader",
                    "check": "lossgrader.check"}
# attribute writes under these library paths are settings, not patches (with a constant value)
SETTINGS = ("torch.backends.",)
# attribute writes under these are patches of what the verdict rests on; under other libraries, a person looks
PATCHED = ("torch", "builtins", "IPython")
RENAMED = {"__name__", "__qualname__", "__module__"}


@dataclass(frozen=True)
class Finding:
    cell: int          # index of the code cell among the notebook's cells
    line: int
    what: str          # the construct, as written
    why: str           # Chinese category
    review: bool = False            # not clearly an attack: flags the test cells it touches
    scope: Optional[frozenset] = None   # review: the top-level names it sits in or rebinds (None: cannot tell)
    why_en: str = ""

    def message(self) -> str:
        return f"第 {self.cell + 1} 个单元第 {self.line} 行的 <code>{self.what}</code>（{self.why}）"

    def reason(self) -> str:
        """English, for the instructor."""
        return f"cell {self.cell + 1} line {self.line}: {self.what} ({self.why_en})"


def _module_reason(name: str):
    if name == "lossgrader" or name == "lossgrader.check":
        return None
    if name.startswith("lossgrader."):
        return GRADER
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in MODULES:      # the longest listed prefix decides (None: allowed)
            return MODULES[prefix]
    return None


def import_bindings(sources) -> dict:
    """{name: dotted path} of every name an import statement binds in ``sources`` (cell
    sources), on top of the setup cell's usual names."""
    bound = dict(DEFAULT_BINDINGS)
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        bound[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if alias.name != "*":
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _chain(node):
    """(root node, [attribute names]) of ``a.b.c``; the root is whatever ``a`` is."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def _library_path(node, bound):
    """The dotted library path ``node`` stands for when it is rooted at an imported name
    (``F.mse_loss`` -> "torch.nn.functional.mse_loss"), else None."""
    root, attrs = _chain(node)
    if isinstance(root, ast.Name) and root.id in bound:
        return ".".join([bound[root.id], *attrs])
    return None


def _through_class(node) -> bool:
    """Whether ``node`` reaches an object through ``type(...)`` or ``.__class__``."""
    root, attrs = _chain(node)
    return "__class__" in attrs or (isinstance(root, ast.Call) and isinstance(root.func, ast.Name)
                                    and root.func.id == "type")


class _Scanner:
    def __init__(self, cell: int, bound: dict):
        self.cell, self.bound = cell, bound
        self.findings = []
        self.seen = set()
        self.scope = None

    def add(self, node, what, why):
        line = getattr(node, "lineno", 0)
        scope = self.scope if why.review else None
        what = what if len(what) <= 120 else what[:117] + "…"
        finding = Finding(self.cell, line, what, why.zh, why.review, scope, why.en)
        if finding not in self.seen:
            self.seen.add(finding)
            self.findings.append(finding)

    # ------------------------------------------------------------------ writes
    def attribute_write(self, node, target, attr, value=None):
        """``target.attr = value`` (or del, or setattr): patching, renaming, or one's own object."""
        path = _library_path(target, self.bound)
        shown = f"{ast.unparse(target)}.{attr}"
        if path is not None:
            full = f"{path}.{attr}"
            constant = value is not None and isinstance(value, ast.Constant)
            if constant and full.startswith(SETTINGS):
                return
            if full.split(".")[0] == "lossgrader":
                self.add(node, f"{shown} = …", GRADER)
            elif full.split(".")[0] in PATCHED:
                self.add(node, f"{shown} = …", PATCHING)
            else:
                self.add(node, f"{shown} = …", LIBRARY_WRITE)
            return
        if _through_class(target):
            self.add(node, f"{shown} = …", CLASS_WRITE)
        elif attr in RENAMED:
            self.add(node, f"{shown} = …", RENAMING)

    def target(self, node, target, value=None):
        if isinstance(target, ast.Attribute):
            self.attribute_write(node, target.value, target.attr, value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.target(node, element)
        elif isinstance(target, ast.Subscript):
            # vars(torch)["save"] = ..., torch.__dict__[...] (the latter is refused anyway)
            base = target.value
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "vars" \
                    and base.args and _library_path(base.args[0], self.bound) is not None:
                self.add(node, f"{ast.unparse(target)} = …", PATCHING)

    # ------------------------------------------------------------------ one node
    def visit(self, node, parent):
        if isinstance(node, ast.Attribute):
            if node.attr in ATTRIBUTES:
                self.add(node, "." + node.attr, ATTRIBUTES[node.attr])
            if not isinstance(parent, ast.Attribute):      # the whole chain once
                path = _library_path(node, self.bound)
                if path is not None:
                    why = _module_reason(path)
                    if why is not None:
                        self.add(node, ast.unparse(node), why)
        elif isinstance(node, ast.Name):
            if node.id in NAMES:
                self.add(node, node.id, NAMES[node.id])
            elif node.id in self.bound and not isinstance(parent, ast.Attribute) and isinstance(node.ctx, ast.Load):
                path = self.bound[node.id]
                if path == "lossgrader":
                    self.add(node, node.id, GRADER)        # the grader's module handed around
                else:       # also a name the (unscanned) setup cell imported: m = importlib
                    why = _module_reason(path)
                    if why is not None:
                        self.add(node, node.id, why)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                reason = _module_reason(alias.name)
                if reason and not reason.review:
                    self.add(node, f"import {alias.name}", reason)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [a.name for a in node.names]
            reason = _module_reason(module)
            if reason is None or reason.review:
                for name in names:
                    found = _module_reason(f"{module}.{name}") or ATTRIBUTES.get(name)
                    if found is not None and not found.review:
                        reason = found
                        break
            if reason and not reason.review:
                self.add(node, f"from {module} import {', '.join(names)}", reason)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            value = getattr(node, "value", None)
            for target in targets:
                self.target(node, target, value)
        elif isinstance(node, ast.Call):
            self.call(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
            # a dotted path spelled as a string (operator.attrgetter("_C._nn.mse_loss"), getattr chains)
            parts = node.value.split(".")
            hit = next((p for p in parts if p in STRING_PARTS), None)
            if hit is not None:
                self.add(node, repr(node.value), STRING_PARTS[hit])
            elif any(path in node.value for path in CHANNEL_PATHS):
                self.add(node, repr(node.value), CHANNEL)

    def call(self, node):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if any(isinstance(n, ast.Attribute) and n.attr in GRAPH_ATTRIBUTES for n in ast.walk(func)):
            self.add(node, ast.unparse(func), GRAPH_NODES)        # loss.grad_fn(g): a gradient without the engine
        if isinstance(func, ast.Name) and name in ("getattr", "setattr", "delattr"):
            # getattr(obj, "literal") is ordinary; a computed name can reach anything
            if len(node.args) < 2 or not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                self.add(node, f"{name}(…, 非字面量名称)", DYNAMIC)
                return
            attr = node.args[1].value
            if attr in ATTRIBUTES:
                self.add(node, f"{name}(…, {attr!r})", ATTRIBUTES[attr])
            path = _library_path(node.args[0], self.bound)
            if name in ("setattr", "delattr"):
                self.attribute_write(node, node.args[0], attr, node.args[2] if len(node.args) > 2 else None)
            elif path is not None:
                why = _module_reason(f"{path}.{attr}")
                if path == "lossgrader" and attr not in GRADER_PUBLIC:
                    why = GRADER
                if why is not None:
                    self.add(node, f"{name}({ast.unparse(node.args[0])}, {attr!r})", why)
        elif name in ("__setattr__", "__delattr__") and isinstance(func, ast.Attribute):
            # object.__setattr__(target, "name", value)
            if node.args and _library_path(node.args[0], self.bound) is not None:
                self.add(node, f"{ast.unparse(func)}(…)", PATCHING)
            else:
                self.add(node, f"{ast.unparse(func)}(…)", CLASS_WRITE)
        elif isinstance(func, ast.Name) and name == "open" and node.args \
                and not isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            self.add(node, f"open({ast.unparse(node.args[0])}, …)", OPEN_COMPUTED)
        elif isinstance(func, ast.Name) and name == "open" and node.args and isinstance(node.args[0], ast.Constant) \
                and not isinstance(node.args[0].value, str):
            self.add(node, f"open({node.args[0].value!r}, …)", CHANNEL)      # open(3, "wb"): a descriptor
        elif isinstance(func, ast.Name) and name == "vars" and node.args \
                and _library_path(node.args[0], self.bound) is not None:
            self.add(node, f"vars({ast.unparse(node.args[0])})", INTROSPECTION)

    # ------------------------------------------------------------------ a cell
    def scan(self, tree):
        for statement in tree.body:
            self.scope = _statement_scope(statement)
            stack = [(statement, None)]
            while stack:
                node, parent = stack.pop()
                self.visit(node, parent)
                stack.extend((child, node) for child in ast.iter_child_nodes(node))
        return sorted(self.findings, key=lambda f: (f.cell, f.line))


def _statement_scope(statement):
    """The top-level names a statement defines or rebinds (what a review finding in it can
    affect), or None when that cannot be told (a loop, a call, ``globals()[name] = ...``)."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return frozenset({statement.name})
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return frozenset(a.asname or a.name.split(".")[0] for a in statement.names if a.name != "*") or None
    targets = []
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
        targets = [statement.target]
    names = set()
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str) and isinstance(node.value, ast.Call) \
                    and isinstance(node.value.func, ast.Name) and node.value.func.id in ("globals", "vars"):
                names.add(node.slice.value)       # globals()["mse_loss"] = ...
            elif isinstance(node, ast.Subscript):
                return None
        if isinstance(target, ast.Attribute):      # obj.attr = ...: what reaches obj
            root, _ = _chain(target)
            if not isinstance(root, ast.Name):
                return None
            names.add(root.id)
    return frozenset(names) or None


def scan_source(source: str, cell: int, bound: Optional[dict] = None) -> list:
    """Findings in one cell's source; code that does not parse has none (it fails when it runs).
    ``bound``: the notebook's import bindings (``import_bindings``); this cell's own by default."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    if bound is None:
        bound = import_bindings([source])
    return _Scanner(cell, bound).scan(tree)


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def scan_notebook(nb, student_cell) -> list:
    """Findings in every code cell for which ``student_cell(cell)`` is true."""
    code = [(i, cell) for i, cell in enumerate(nb.cells) if cell.get("cell_type") == "code"]
    bound = import_bindings(_source(cell) for _, cell in code)
    findings = []
    for i, cell in code:
        if student_cell(cell):
            findings += scan_source(_source(cell), i, bound)
    return findings


def _references(tree, bound) -> tuple:
    """({top-level name: names its definition refers to}, {top-level name: the library paths
    it names, e.g. "torch.nn.functional.mse_loss"}) for one cell."""
    graph, paths = {}, {}
    for statement in tree.body:
        names = _statement_scope(statement)
        if not names:
            continue
        used = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        used |= {n.attr for n in ast.walk(statement) if isinstance(n, ast.Attribute)}   # self.helper(...)
        libs = {_library_path(n, bound) for n in ast.walk(statement) if isinstance(n, (ast.Name, ast.Attribute))}
        libs.discard(None)
        for name in names:
            graph.setdefault(name, set()).update(used)
            paths.setdefault(name, set()).update(libs)
    return graph, paths


class Scan:
    """What the back-door scan found in one hand-in's notebook: ``attacks`` (each zeroes
    the notebook) and ``reviews`` (each flags the test cells it touches for a person)."""

    def __init__(self, findings: list, graph: dict, paths: Optional[dict] = None):
        self.attacks = [f for f in findings if not f.review]
        self.reviews = [f for f in findings if f.review]
        self.graph = graph
        self.paths = paths or {}

    def library_paths(self, func_name: str) -> set:
        """The library paths the code ``func_name`` can reach names (its definition and
        every top-level name it uses): what the answer's source says it calls."""
        return set().union(*(self.paths.get(name, ()) for name in self.reachable(func_name)))

    def reachable(self, name: str) -> set:
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(self.graph.get(current, ()))
        return seen

    def touching(self, func_name: Optional[str]) -> list:
        """The review findings a test cell checking ``func_name`` depends on: those inside or
        rebinding a name its function can reach, and those whose effect cannot be told."""
        if not self.reviews:
            return []
        reach = self.reachable(func_name) if func_name else set()
        return [f for f in self.reviews if f.scope is None or not func_name or f.scope & reach]


def scan_handin(nb, released_cells=(), is_test_cell=None) -> Scan:
    """Scan a normalised hand-in: every code cell but its test cells, read-only cells included
    unless their source is exactly the released one (restored by lossgrader.normalize; what
    the instructor wrote there is not the student's). ``released_cells``: the release's cells
    (lossgrader.gradebook.released); ``is_test_cell(nbgrader metadata)`` tells test cells."""
    released = {c["name"]: c.get("source") for c in released_cells if isinstance(c, dict) and "name" in c}
    code = [(i, cell) for i, cell in enumerate(nb.cells) if cell.get("cell_type") == "code"]
    bound = import_bindings(_source(cell) for _, cell in code)
    findings, graph, paths = [], {}, {}
    for i, cell in code:
        meta = cell.get("metadata", {}).get("nbgrader")
        meta = meta if isinstance(meta, dict) else {}
        if is_test_cell is not None and is_test_cell(meta):
            continue
        source = _source(cell)
        if meta.get("locked") and released.get(meta.get("grade_id")) == source:
            continue
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        findings += _Scanner(i, bound).scan(tree)
        cell_graph, cell_paths = _references(tree, bound)
        for name, used in cell_graph.items():
            graph.setdefault(name, set()).update(used)
        for name, used in cell_paths.items():
            paths.setdefault(name, set()).update(used)
    return Scan(findings, graph, paths)
