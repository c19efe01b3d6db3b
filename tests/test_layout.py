"""The repository's layout: no two modules import each other, directly or round a circle
(imports inside functions count too: a lazy import hides a circle, it does not remove it)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules():
    """{module name: path} of the top-level files and the support package."""
    out = {f[:-3]: os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")}
    sup = os.path.join(ROOT, "support")
    out.update({f"support.{f[:-3]}": os.path.join(sup, f) for f in os.listdir(sup)
                if f.endswith(".py") and f != "__init__.py"})
    return out


def imports(path, known):
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in known:
                found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in known}
    return found


def test_no_import_circle():
    mods = modules()
    graph = {m: imports(p, mods) - {m} for m, p in mods.items()}
    assert "pool" not in graph["support.rundir"] and "support.rundir" in graph["pool"]
    circles = []

    def visit(m, path):
        for n in sorted(graph[m]):
            if n in path:
                circles.append(path[path.index(n):] + [n])
            elif len(path) < len(graph):
                visit(n, path + [n])
    for m in sorted(graph):
        visit(m, [m])
    assert not circles, f"import circles: {circles[:3]}"
