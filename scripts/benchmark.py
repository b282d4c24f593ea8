#!/usr/bin/env python
"""The seed's benchmark command, verbatim: same as `lm-eval-streaming benchmark`."""

import sys

from lm_eval_streaming.benchmark.command import main

if __name__ == "__main__":
    sys.exit(main())
