import sys

from medssm.cli import main

sys.exit(main())
