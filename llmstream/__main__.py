import sys

from llmstream.cli import main

sys.exit(main())
