"""The package's layout rules, checked from the source: wings import only downwards, no import cycles,
at most 12 top-level modules. A static read of every import statement (top level or inside functions)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lm_eval_streaming"

# rank of each wing: a module may import its own wing and wings of lower rank only
RANK = {
    "errors": 0, "_hook": 0, "": 0,  # "" = the package's __init__
    "options": 1, "default_model": 1,
    "core": 2,
    "records": 3,
    "harness": 4, "benchmark": 4, "analysis": 4,
    "leaderboard": 5, "experiment": 5, "doctor": 5,
    "cli": 6, "model": 6,
}
# each command's ``main()`` goes through the one CLI error path (cli.py dispatches by name, importing no wing)
CLI_FROM_MAIN = "cli"


def _modules(pkg: Path = PKG) -> dict[str, Path]:
    mods = {}
    for f in pkg.rglob("*.py"):
        parts = list(f.relative_to(pkg).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]):
    """(importer, imported, inside_main) for every import of a package module."""
    for mod, path in mods.items():
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        if mod == "":
            base = []
        tree = ast.parse(path.read_text(encoding="utf-8"))
        funcs = {id(n): f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    b = [p for p in base if p][: max(len([p for p in base if p]) - node.level + 1, 0)]
                    prefix = ".".join(b + ([node.module] if node.module else []))
                else:
                    if not (node.module or "").startswith("lm_eval_streaming"):
                        continue
                    prefix = (node.module or "")[len("lm_eval_streaming"):].lstrip(".")
                names = [prefix] + [f"{prefix}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name[len("lm_eval_streaming"):].lstrip(".") for a in node.names
                         if a.name.startswith("lm_eval_streaming")]
            else:
                continue
            found = set()
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name in mods and name != mod:
                    found.add(name)
            for name in found:
                # a submodule importing its own package's __init__ is name resolution, not a dependency
                if mod.startswith(name + ".") or (name == "" and mod):
                    continue
                yield mod, name, funcs.get(id(node)) == "main"


def _wing(mod: str) -> str:
    return mod.split(".")[0]


def _upward(mods) -> list:
    assert set(RANK) >= {_wing(m) for m in mods}, {_wing(m) for m in mods} - set(RANK)
    return [(a, b) for a, b, in_main in _imports(mods)
            if _wing(a) != _wing(b) and RANK[_wing(b)] >= RANK[_wing(a)]
            and not (in_main and _wing(b) == CLI_FROM_MAIN)]


def test_imports_run_one_way():
    upward = _upward(_modules())
    assert not upward, upward


def _cycles(mods) -> list:
    graph = {m: set() for m in mods}
    for a, b, _ in _imports(mods):
        graph[a].add(b)
    # Tarjan's strongly connected components, iteratively
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def strong(v):
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        w = stack.pop(); on.discard(w); comp.add(w)
                        if w == node:
                            break
                    sccs.append(comp)
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]; counter[0] += 1; stack.append(nxt); on.add(nxt)
                work.append((nxt, iter(sorted(graph[nxt]))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])

    for v in graph:
        if v not in index:
            strong(v)
    return [sorted(c) for c in sccs if len(c) > 1]


def test_no_import_cycles():
    cycles = _cycles(_modules())
    assert not cycles, cycles


def test_at_most_twelve_top_level_modules():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 12, top


def test_the_rules_see_a_violation(tmp_path):
    """The checker itself: an upward import and a cycle planted in a copy of the package are found."""
    import shutil

    pkg = tmp_path / "lm_eval_streaming"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "core" / "planted.py").write_text("from lm_eval_streaming.analysis import verdict\n")
    (pkg / "analysis" / "planted_b.py").write_text("from lm_eval_streaming.analysis import planted_c\n")
    (pkg / "analysis" / "planted_c.py").write_text("def f():\n    from . import planted_b\n")
    mods = _modules(pkg)
    assert ("core.planted", "analysis.verdict") in _upward(mods)
    assert ["analysis.planted_b", "analysis.planted_c"] in _cycles(mods)
