"""``python -m ppma.cli``: the ``ppma`` command (also under ``torchrun ... -m ppma.cli``)."""

import sys

from . import main

sys.exit(main())
