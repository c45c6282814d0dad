"""``python -m lora_lab <command>``; see :mod:`lora_lab.cli`."""

import sys

from lora_lab.cli import main

sys.exit(main())
