"""A server container's entrypoint when the server takes an API key: refuses to start without one, then execs vLLM.

    python3 /opt/vllm-compose/server_start.py --key VLLM_API_KEY -- python3 -m vllm.entrypoints.openai.api_server ARGS

vLLM takes its key from VLLM_API_KEY (the stack's env_file, a Kubernetes Secret) and drops an empty one: the
server then answers anyone. An env file whose key line is present but empty (or blank, or a value compose fills
from an unset shell variable) therefore switches authentication off without a word. This script stands between
the container and vLLM: a missing, empty or blank key ends the container with exit code 2 and a message that
names the variable and the fix; otherwise it replaces itself with the command after `--` (os.execvp: same
process id, signals and exit code as vLLM's own). Stdlib only, mounted read-only like liveness.py, so the upstream
GPU image runs it unchanged.
"""

from __future__ import annotations

import os
import sys

EXIT_NO_KEY = 2


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("server_start.py: usage: server_start.py --key NAME ... -- COMMAND ARGS...", file=sys.stderr)
        return EXIT_NO_KEY
    own, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    names = [own[i + 1] for i, a in enumerate(own[:-1]) if a == "--key"]
    if not command or not names or len(names) * 2 != len(own):
        print("server_start.py: usage: server_start.py --key NAME ... -- COMMAND ARGS...", file=sys.stderr)
        return EXIT_NO_KEY
    for name in names:
        if not os.environ.get(name, "").strip():
            state = "not set" if name not in os.environ else "empty or blank"
            print(f"server: {name} is {state}, and vLLM would then serve anyone without a key; not starting. Fix: "
                  f"give it a key in the stack's env file (secrets.env beside compose.yaml: a line `{name}=sk-...`; "
                  "delete an empty line and render again to have one generated), or in the Kubernetes Secret "
                  f"vllm-compose-keys; then recreate this container.", file=sys.stderr, flush=True)
            return EXIT_NO_KEY
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
