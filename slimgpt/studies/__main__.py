"""``python -m slimgpt.studies`` is ``slimgpt-figures``."""

from . import main

raise SystemExit(main())
