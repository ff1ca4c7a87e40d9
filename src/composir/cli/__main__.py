import sys

from composir.cli import main

sys.exit(main())
