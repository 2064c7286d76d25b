import sys

from bidder.cli import main

sys.exit(main())
