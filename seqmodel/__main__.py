import sys

from seqmodel.cli import main

sys.exit(main())
