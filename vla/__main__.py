"""`python -m vla ...` (used by `accelerate launch -m vla train ...`)."""

from vla.cli.main import main

raise SystemExit(main())
