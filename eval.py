"""Entry point: re-evaluate a finished run's exported model without training (``consparse.evaluate_run``).

    python eval.py run=<run dir> [output=<file>] [key=value ...]
"""

import sys

from consparse.quiet import silence_known_noise

silence_known_noise()

from consparse.evaluate_run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
