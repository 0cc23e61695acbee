"""python -m timemar_engine: the command line."""
from .cli import main

raise SystemExit(main())
