import sys

from ctvlp.config.loader import main

sys.exit(main())
