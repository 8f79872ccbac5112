"""`python -m tcore` = the `tcore` command."""
import sys

from .cli import main

sys.exit(main())
