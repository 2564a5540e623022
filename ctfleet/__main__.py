import sys

from ctfleet.cli import main

sys.exit(main())
