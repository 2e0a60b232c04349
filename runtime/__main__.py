import sys

from cvahash.cli import main

sys.exit(main())
