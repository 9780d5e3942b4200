import sys

from vla0.cli import main

sys.exit(main())
