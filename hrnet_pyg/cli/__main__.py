"""``python -m hrnet_pyg.cli``: the same as ``hrnet-pyg``."""
import sys

from hrnet_pyg.cli import main

sys.exit(main())
