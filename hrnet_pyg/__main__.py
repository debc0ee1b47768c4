"""``python -m hrnet_pyg``: the same verbs as the ``hrnet-pyg`` console script."""
import sys

from hrnet_pyg.cli import main

sys.exit(main())
