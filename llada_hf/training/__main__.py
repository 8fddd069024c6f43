"""`python -m llada_hf.training ...` (what `torchrun -m llada_hf.training` runs): `llada-hf train`."""

import os
import sys

from .cli import train_main

if __name__ == "__main__":
    code = train_main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # torch 2.13 CPU DDP runs sometimes abort in interpreter shutdown (SIGABRT)
    raise SystemExit(code)
