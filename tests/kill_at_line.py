"""Run a Python file and SIGKILL it at the K-th line it executes in cachekeeper or in the file.

Usage: python kill_at_line.py K TRACE_FILE PRELOAD SCRIPT [ARGS...]. With K = 0 nothing is
killed and every counted line (``path:function:line``) is written to TRACE_FILE, so a test can
choose where to kill. PRELOAD names modules (comma-separated, or -) to import before tracing
starts: importing SQLAlchemy under a trace function takes seconds. No hook in cachekeeper is
needed: ``sys.settrace`` sees every line.
"""

import importlib
import os
import runpy
import signal
import sys

import cachekeeper

kill_at, trace_file, preload, script = int(sys.argv[1]), sys.argv[2], sys.argv[3], os.path.abspath(sys.argv[4])
for module in filter(None, preload.replace("-", "").split(",")):
    importlib.import_module(module)
counted = (os.path.dirname(cachekeeper.__file__) + os.sep, script)
executed: list[str] = []


def on_call(frame, event, arg):
    return on_line if frame.f_code.co_filename.startswith(counted) else None


def on_line(frame, event, arg):
    if event == "line":
        executed.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}:{frame.f_lineno}")
        if len(executed) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return on_line


sys.argv = [script, *sys.argv[5:]]
sys.settrace(on_call)
try:
    runpy.run_path(script, run_name="__main__")
finally:
    sys.settrace(None)
    if kill_at == 0:
        with open(trace_file, "w") as out:
            out.write("\n".join(executed))
