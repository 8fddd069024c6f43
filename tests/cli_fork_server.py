"""A fork server for `llada-hf` runs in tests: imports `llada_hf.cli` once, then runs each requested command line in
a forked child process with its own stdin (empty), stdout, stderr, working directory and exit code.

Importing torch + transformers + llada_hf costs seconds (tens under load); a test suite with dozens of bad-flag cases
would spend its time importing. A forked child is still a separate process: its exit code and stderr are the real
ones (`sys.exit(main(argv))`, an uncaught exception's traceback on stderr), and nothing it changes reaches the next.

Protocol: one JSON object a line on stdin, `{"argv": [...], "cwd": "..."}`; one JSON line back on stdout,
`{"returncode": int, "stdout": str, "stderr": str}`. The server's own import-time output goes to its stderr.
"""

import json
import os
import sys
import tempfile
import traceback


def _child(argv: list[str], cwd: str, out_fd: int, err_fd: int) -> None:
    """Runs in the fork: redirect, run `llada-hf ARGV` as its console script would, exit with its code."""
    os.chdir(cwd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the child's empty stdin)
    from llada_hf.cli import main

    try:
        code = main(argv)
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        if error.code is not None and not isinstance(error.code, int):
            print(error.code, file=sys.stderr)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def serve() -> None:
    import torch

    torch.set_num_threads(1)  # no intra-op thread pool to inherit across fork
    import llada_hf.cli  # noqa: F401  (the import every child shares)

    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by the server itself stays off the protocol channel
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = os.fork()
            if pid == 0:
                _child(request["argv"], request["cwd"], out.fileno(), err.fileno())
            _, status = os.waitpid(pid, 0)
            texts = []
            for handle in (out, err):
                handle.seek(0)
                texts.append(handle.read().decode("utf-8", "replace"))
        reply = {"returncode": os.waitstatus_to_exitcode(status), "stdout": texts[0], "stderr": texts[1]}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()


if __name__ == "__main__":
    serve()
