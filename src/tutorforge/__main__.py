import sys

from tutorforge.cli import main

sys.exit(main())
