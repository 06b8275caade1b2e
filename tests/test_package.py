"""The charrnn package as a whole: importing every one of its modules changes nothing global:
not the environment, not NumPy's namespace, not Numba's configuration (charrnn/__init__.py); and
no module imports, at module level, one that imports it back."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_IMPORT_ALL = """
import importlib, json, os, pkgutil, sys
import numpy, numba, numba.cuda
from numba.core import config

def numba_config():
    return {k: repr(v) for k, v in vars(config).items() if k.isupper()}

env, np_names, nb = dict(os.environ), {k: id(v) for k, v in vars(numpy).items()}, numba_config()
import charrnn
# every module but __main__, whose import is `python -m charrnn` running the command line
names = sorted(m.name for m in pkgutil.walk_packages(charrnn.__path__, "charrnn.") if m.name != "charrnn.__main__")
for name in names:
    importlib.import_module(name)
changed = {"environ": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
           "numpy": sorted(k for k in set(np_names) | set(vars(numpy)) if np_names.get(k) != id(vars(numpy).get(k))),
           "numba": sorted(k for k, v in numba_config().items() if nb.get(k) != v)}
print(json.dumps({"modules": names, "changed": changed}))
"""


def test_importing_every_module_changes_no_environment_numpy_or_numba_setting():
    import json
    env = dict(os.environ, CHARRNN_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_ENABLE_CUDASIM"):
        env.pop(var, None)
    r = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"charrnn.cli", "charrnn.train", "charrnn.backends.cuda", "charrnn.backends.cuda_cells",
            "charrnn.threads"} <= set(out["modules"])
    assert out["changed"] == {"environ": [], "numpy": [], "numba": []}


def _module_imports() -> dict[str, set[str]]:
    """Each charrnn module's intra-package imports at module level (those an import runs at once;
    a function's deferred import and a TYPE_CHECKING block do not count)."""
    import ast
    pkg = ROOT / "charrnn"
    names = {}
    for p in pkg.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, p in names.items():
        here = name if p.name == "__init__.py" else name.rpartition(".")[0]
        found = {name.rpartition(".")[0]} if "." in name else set()     # a submodule imports its package
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
                if isinstance(n, ast.Import):
                    found |= {a.name for a in n.names if a.name in names}
                elif isinstance(n, ast.ImportFrom):
                    base = n.module or ""
                    if n.level:
                        up = here.split(".")[:len(here.split(".")) - n.level + 1]
                        base = ".".join(up + ([base] if base else []))
                    found |= {m for m in [base] + [f"{base}.{a.name}" for a in n.names] if m in names}
        graph[name] = found - {name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph, state, circles = _module_imports(), {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                circles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "charrnn.assemble" in graph and graph["charrnn.lrfind"] >= {"charrnn.assemble"}   # the walk sees them
    assert circles == []
    assert "charrnn.train" not in graph["charrnn.lrfind"] | graph["charrnn.assemble"]     # lr-find never loads the loop
