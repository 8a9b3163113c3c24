"""The `python` tool: run model-written code in a sandboxed subprocess and return its output.

An agent that runs code must not be able to read the host's files, reach the network, fork off processes or run
forever. Layers, each proved by a test:
- a fresh interpreter (`-I -S -B`: no environment, no site-packages, no bytecode writes) in an empty temporary
  working directory, the code sent on stdin;
- an audit hook (`sys.addaudithook`, installed before the code runs, not removable) that refuses opening files
  outside the working directory (the standard library stays readable, read-only, for imports), sockets,
  subprocesses, exec/fork/spawn/kill, ctypes, and imports of `_posixsubprocess`/`_ctypes`;
- `unshare -n` (an empty network namespace) when it works on this machine; the audit hook blocks sockets anyway;
- resource limits: address space, CPU seconds, open files, file size (which also caps the output file);
- a wall-clock timeout that kills the whole process group; output capped before it reaches the model.
The audit hook is defence against mistakes and casual misuse, not a security boundary against hostile code;
run untrusted workloads inside a container or VM as well.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

from xinzhou.chat.tools.registry import Tool, ToolResult

# Runs in the child before the code (limits are set here rather than in a preexec_fn, which is unsafe in
# threaded parents). `ROOT`, `READ_ROOTS`, `NO_READ` and `LIMITS` are prepended by `_preamble`.
_PREAMBLE = r'''
import sys, os, linecache, traceback, resource
for _which, _value in LIMITS:
    resource.setrlimit(_which, (_value, _value))
def _install():
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def under(path, roots):
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            p = realpath(fsdecode(path))
        except Exception:
            return False
        return any(p == r or p.startswith(r + sep) for r in roots)
    def readable(path):
        return under(path, (ROOT,)) or (under(path, READ_ROOTS) and not under(path, NO_READ))
    BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "os.kill", "os.killpg", "os.setuid", "ctypes.", "resource.setrlimit",
               "sys.remote_exec", "_posixsubprocess.", "sqlite3.enable_load_extension", "pty.")
    LIST = {"os.listdir", "os.scandir"}  # read-only: allowed wherever reading is (imports list the stdlib)
    PATH_ARGS = {"os.chdir": 1, "os.mkdir": 1, "os.remove": 1, "os.rmdir": 1,
                 "os.rename": 2, "os.link": 2, "os.symlink": 2, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                 "os.utime": 1, "os.chflags": 1, "os.setxattr": 1, "os.removexattr": 1, "os.listxattr": 1,
                 "os.getxattr": 1, "shutil.rmtree": 1, "sqlite3.connect": 1}
    NO_IMPORT = {"_posixsubprocess", "_ctypes"}
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            write = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE)
            if not (under(path, (ROOT,)) if write else readable(path)):
                raise PermissionError(f"sandbox: opening {path!r} is not allowed (only the working directory)")
        elif event == "import":
            if args[0] in NO_IMPORT:
                raise ImportError(f"sandbox: module {args[0]!r} is not available")
        elif event in LIST:
            if not readable(args[0] if args[0] is not None else "."):
                raise PermissionError(f"sandbox: listing {args[0]!r} is not allowed (only the working directory)")
        elif event in PATH_ARGS:
            for path in args[: PATH_ARGS[event]]:
                if path is not None and path != ":memory:" and not under(path, (ROOT,)):
                    raise PermissionError(f"sandbox: {event} on {path!r} is not allowed (only the working directory)")
        elif event.startswith(BLOCKED):
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(hook)
code = sys.stdin.read()
sys.stdin.close()
sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
sys.stderr.reconfigure(encoding="utf-8", errors="backslashreplace")
linecache.cache["<python-tool>"] = (len(code), None, code.splitlines(True), "<python-tool>")
_install()
del _install
try:
    exec(compile(code, "<python-tool>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit:
    raise
except BaseException as e:
    traceback.print_exception(type(e), e, e.__traceback__.tb_next)
    sys.exit(1)
'''


@dataclass
class ExecResult:
    output: str  # stdout and stderr interleaved, capped
    exit_code: int | None  # None when killed for the timeout
    timed_out: bool = False
    truncated: bool = False
    seconds: float = 0.0


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether `unshare -n` works here (root or user namespaces); checked once."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _preamble(root: str, limits: list[tuple[int, int]]) -> str:
    paths = sysconfig.get_paths()
    read_roots = tuple({os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")})
    no_read = tuple({os.path.realpath(paths[k]) for k in ("purelib", "platlib")})
    names = {"ROOT": os.path.realpath(root), "READ_ROOTS": read_roots, "NO_READ": no_read, "LIMITS": limits}
    return "".join(f"{k} = {v!r}\n" for k, v in names.items()) + _PREAMBLE


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    output_limit: int = 16_384,
    file_limit_mb: int = 16,
    max_open_files: int = 64,
    network_namespace: bool | None = None,
) -> ExecResult:
    """Run `code` in the sandbox described in the module docstring; never raises for anything the code does.

    `network_namespace=None` uses `unshare -n` when available; True requires it; False skips it (the audit hook
    still blocks sockets).
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a string, got {type(code).__name__}")
    if timeout <= 0 or memory_mb <= 0 or output_limit <= 0:
        raise ValueError("timeout, memory_mb and output_limit must be positive")
    use_ns = network_namespace_available() if network_namespace is None else network_namespace
    if use_ns and not network_namespace_available():
        raise ValueError("network_namespace=True but `unshare -n` does not work here; pass None or False")
    limits = [
        (resource.RLIMIT_AS, memory_mb * 2**20),
        (resource.RLIMIT_CPU, int(timeout) + 1),
        (resource.RLIMIT_NOFILE, max_open_files),
        (resource.RLIMIT_FSIZE, file_limit_mb * 2**20),
        (resource.RLIMIT_CORE, 0),
    ]

    work = tempfile.mkdtemp(prefix="xz-py-")
    private = tempfile.mkdtemp(prefix="xz-py-out-")  # the output file lives outside the sandbox's reach
    cmd = [sys.executable, "-I", "-S", "-B", "-c", _preamble(work, limits)]
    if use_ns:
        cmd = [shutil.which("unshare") or "unshare", "-n", "--", *cmd]
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    out_path = os.path.join(private, "output")
    start = time.monotonic()
    try:
        with open(out_path, "wb") as out, subprocess.Popen(
            cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        ) as proc:
            timed_out = False
            try:
                assert proc.stdin is not None
                proc.stdin.write(code.encode("utf-8", "surrogatepass"))
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the code's process group, whatever it left behind
                except ProcessLookupError:
                    pass
                proc.wait()
        with open(out_path, "rb") as f:
            data = f.read(output_limit + 1)
            total = os.fstat(f.fileno()).st_size
        truncated = total > output_limit
        text = data[:output_limit].decode("utf-8", "replace")
        code_ = None if timed_out else proc.returncode
        return ExecResult(text, code_, timed_out, truncated, time.monotonic() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


_SIGNALS = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "file size limit exceeded",
            signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault"}


def format_result(r: ExecResult, timeout: float) -> ToolResult:
    """The text the model reads: output, then a status line when something went wrong."""
    text = r.output if r.output else "(no output)"
    if r.truncated:
        text += f"\n[output truncated to {len(r.output.encode('utf-8', 'replace'))} bytes]"
    if r.timed_out:
        return ToolResult(text + f"\n[timed out after {timeout:g} s; the process was killed]", True)
    if r.exit_code is not None and r.exit_code < 0:
        why = _SIGNALS.get(-r.exit_code, f"signal {-r.exit_code}")  # type: ignore[call-overload]
        return ToolResult(text + f"\n[terminated: {why}]", True)
    if r.exit_code:
        return ToolResult(text + f"\n[exit code {r.exit_code}]", True)
    return ToolResult(text)


def make_python_tool(name: str = "python", *, timeout: float = 10.0, **limits: int) -> Tool:
    """A registry Tool that runs code with these limits (see `run_python` for the keyword arguments)."""

    def python(code: str) -> ToolResult:
        """Run Python 3 code in a sandbox and return what it prints (stdout and stderr).

        Args:
            code: A complete program. Use print() to show results. Only the standard library is available; the
                working directory is an empty temporary folder; there is no network; time and memory are limited.
        """
        return format_result(run_python(code, timeout=timeout, **limits), timeout)  # type: ignore[arg-type]

    return Tool.from_function(python, name=name)
