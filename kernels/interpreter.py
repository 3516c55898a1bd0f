"""Whether Triton runs in its CPU interpreter (the CPU tests): launchers then pick small
tiles and upcast bf16 operands, which the interpreter computes wrongly."""

import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
