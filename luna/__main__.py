import sys

from luna.cli import main

sys.exit(main())
