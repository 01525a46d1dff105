"""What the Python test scripts share: a tally of checks, the `schnell`
processes they start (each prints its URL first), stopped however a script
ends, and a scratch folder removed when it ends."""

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path


def work_dir(prefix: str) -> Path:
    """A fresh folder, removed with everything in it when the script exits:
    each CI run would otherwise leave its models and caches behind."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class Checks:
    """Prints each check as it is made; `summary` gives the exit status."""

    def __init__(self, name: str):
        self.name = name
        self.passed = self.failed = 0

    def __call__(self, label: str, ok, detail: str = "") -> None:
        print(("ok   " if ok else "FAIL ") + label + (f": {detail}" if detail and not ok else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def summary(self, extra: str = "") -> int:
        print(f"{self.name}: {self.passed} passed, {self.failed} failed{extra}")
        return 1 if self.failed else 0


class Schnell:
    """Runs `schnell` subcommands; leaving the `with` block stops every one."""

    def __init__(self, binary: str):
        self.binary = binary
        self.procs = []

    def run(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, *args], capture_output=True, text=True, **kwargs)

    def start(self, *args, env=None) -> subprocess.Popen:
        proc = subprocess.Popen([self.binary, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        self.procs.append(proc)
        return proc

    def serve_url(self, *args, env=None) -> tuple:
        """Starts a listening subcommand (`mirror`, `serve`); its process and URL."""
        proc = self.start(*args, env=env)
        line = proc.stdout.readline()
        return proc, next(w for w in line.split() if w.startswith("http://"))

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
