"""The charrnn package as a whole: importing every one of its modules changes nothing global:
not the environment, not NumPy's namespace, not Numba's configuration (charrnn/__init__.py)."""
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
