"""``rfc-generate`` under ``torchrun`` on CPU, for trying the command where no accelerator is.

diffusers' context parallelism needs the CPU workarounds of ``_cp_harness.py`` (device count, the
log-sum-exp attention op for Ring); this script applies them for the whole process and runs the
command: ``torchrun --nproc_per_node 2 tests/runtime/_cp_cli.py --model DIR --context-parallel ulysses ...``.
"""

import sys

import torch

from tests.runtime import _cp_harness

if __name__ == "__main__":
    torch.accelerator.device_count = lambda: 1  # workaround 1, for the whole run
    from diffusers.models import attention_dispatch

    attention_dispatch._native_attention_forward_op = _cp_harness._native_attention_with_lse(
        attention_dispatch._native_attention_forward_op
    )  # workaround 2 (Ring)
    from rfcache.cli.main import main

    sys.exit(main(prog="rfc-generate", command="generate"))
