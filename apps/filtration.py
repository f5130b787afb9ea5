"""`python apps/filtration.py RUN_DIR [--port N]`: the same app as `pfkit inspect filtration` (pfkit/inspect/filtration.py)."""
import argparse
import sys

from pfkit.inspect import filtration as app

parser = argparse.ArgumentParser(description=app.__doc__.splitlines()[0])
app.add_arguments(parser)
sys.exit(app.main(parser.parse_args()))
