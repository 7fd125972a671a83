"""``python -m pyro_qem.evals``: see :mod:`pyro_qem.evals.cli`."""

import sys

from .cli import main

sys.exit(main())
