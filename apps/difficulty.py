"""`python apps/difficulty.py RUN_DIR [--port N]`: the same app as `pfkit inspect difficulty` (pfkit/inspect/difficulty.py)."""
import argparse
import sys

from pfkit.inspect import difficulty as app

parser = argparse.ArgumentParser(description=app.__doc__.splitlines()[0])
app.add_arguments(parser)
sys.exit(app.main(parser.parse_args()))
